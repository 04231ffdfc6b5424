"""Rule pretraining_web: thin entry point; the logic lives in diffrep.miniweb."""

import logging
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.miniweb import write_pretraining_web
from diffrep.workflow import start_job

start_job(snakemake)
out = snakemake.output
n = write_pretraining_web(snakemake.input.dir, out.images, out.parquet, snakemake.params.url_base)
logging.getLogger("pretraining_web").info("wrote %d pretraining pictures and %s", n, out.parquet)
