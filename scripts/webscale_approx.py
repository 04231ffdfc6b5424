"""Rule approx_search: thin entry point; the logic lives in diffrep.webapprox."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webapprox import ShardFiles, approx_search_files
from diffrep.workflow import start_job

start_job(snakemake)
inp, par = snakemake.input, snakemake.params
cfg = {k: v for k, v in par.approx.items() if k != "shard_size"}
shards = [ShardFiles(int(s), n, m) for s, n, m in zip(par.shards, inp.npz, inp.meta)]
approx_search_files(
    inp.generations,
    shards,
    par.approx["shard_size"],
    cfg,
    par.top_k,
    par.seed,
    snakemake.output.matches,
    snakemake.output.recall,
    label=dict(par.label),
    allow_missing=par.allow_missing,
    stats_paths={s.shard: p for s, p in zip(shards, inp.stats)},
)
