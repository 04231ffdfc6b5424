"""Rule study_threshold: thin entry point; the logic lives in diffrep.calibration."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.calibration import study_threshold
from diffrep.workflow import start_job

start_job(snakemake)
study_threshold(list(snakemake.input.summaries), list(snakemake.params.datasets), snakemake.output.threshold)
