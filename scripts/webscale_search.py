"""Rule search_shard: thin entry point; the logic lives in diffrep.websearch."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.websearch import search_shard_files
from diffrep.workflow import start_job

start_job(snakemake)
inp = snakemake.input
search_shard_files(
    inp.generations,
    inp.shard,
    inp.meta,
    int(snakemake.params.shard),
    snakemake.params.top_k,
    snakemake.output.matches,
)
