"""Rule dataset_web: thin entry point; the logic lives in diffrep.miniweb."""

import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.miniweb import write_dataset_web
from diffrep.workflow import start_job

start_job(snakemake)
inp, out = snakemake.input, snakemake.output
n = write_dataset_web(inp.metadata, inp.images, out.parquet, snakemake.params.n_rows, snakemake.params.where)
logging.getLogger("dataset_web").info("wrote the metadata of %d pictures to %s", n, out.parquet)
