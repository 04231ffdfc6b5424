"""Rule register_shard: thin entry point; the logic lives in diffrep.webshards."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webshards import register_shard
from diffrep.workflow import start_job

start_job(snakemake)
cfg, inp = snakemake.params.rows, snakemake.input
register_shard(
    inp.tar,
    inp.stats,
    inp.parquets,
    int(snakemake.params.shard),
    cfg["shard_size"],
    snakemake.output.stats,
    url_col=cfg["url_col"],
    caption_col=cfg["caption_col"],
    manifest=inp.get("manifest"),
)
