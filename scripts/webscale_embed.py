"""Rule embed_shard: thin entry point; the logic lives in diffrep.websearch."""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.embeddings import make_embedder
from diffrep.websearch import embed_shard
from diffrep.workflow import start_job

start_job(snakemake)
inp, out = snakemake.input, snakemake.output
embed_shard(
    make_embedder(snakemake.params.embedder, inp.get("dir")),
    inp.tar,
    int(snakemake.params.shard),
    out.embeddings,
    out.meta,
    stats=json.loads(Path(inp.stats).read_text()),
    stats_path=inp.stats,
    bad_images=snakemake.params.bad_images,
    batch_size=snakemake.resources.batch_size,
    num_workers=snakemake.resources.workers,
)
