"""Rule weightdiff: thin entry point; the logic lives in diffrep.weightdiff."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.weightdiff import weightdiff_file
from diffrep.workflow import start_job

start_job(snakemake)
weightdiff_file(snakemake.input.base, snakemake.input.model, snakemake.output.table)
