"""Rule download_shard: thin entry point; the logic lives in diffrep.webshards."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webshards import ShardError, download_shard, record_failed_shard, shard_rows
from diffrep.workflow import start_job

start_job(snakemake)
cfg, shard, res = snakemake.params.rows, int(snakemake.params.shard), snakemake.resources
rows = shard_rows(
    snakemake.input.parquets, shard, cfg["shard_size"], cfg["url_col"], cfg["caption_col"], cfg["id_cols"]
)
out = snakemake.output
fetch = {
    "threads": res.fetch_threads,
    "timeout": res.fetch_timeout,
    "retries": res.fetch_retries,
    "engine": res.fetch_engine,
}
try:
    download_shard(rows, shard, out.tar, out.stats, **fetch, manifest=snakemake.input.get("manifest"))
except ShardError as err:
    if not res.allow_missing:
        raise
    record_failed_shard(rows, shard, out.tar, out.stats, str(err))
