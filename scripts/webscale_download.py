"""Rule download_shard: thin entry point; the logic lives in diffrep.webshards."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webshards import ShardError, download_shard, record_failed_shard, shard_rows
from diffrep.workflow import setup_logging

setup_logging(snakemake)
cfg, shard = snakemake.params.collection, int(snakemake.params.shard)
rows = shard_rows(
    snakemake.input.parquets, shard, cfg["shard_size"], cfg["url_col"], cfg["caption_col"], cfg["id_cols"]
)
out = snakemake.output
try:
    download_shard(
        rows, shard, out.tar, out.stats, **cfg["download"], manifest=snakemake.input.get("manifest")
    )
except ShardError as err:
    if not snakemake.params.allow_missing:
        raise
    record_failed_shard(rows, shard, out.tar, out.stats, str(err))
