"""Rule fetch_model / build_model: thin entry point; the logic lives in diffrep.fetch."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.fetch import fetch_model
from diffrep.workflow import start_job

start_job(snakemake)
fetch_model(
    name=snakemake.wildcards.model,
    spec=snakemake.params.model,
    out_dir=snakemake.output.dir,
    manifest=snakemake.output.manifest,
)
