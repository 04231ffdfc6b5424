"""Rule merge_search: thin entry point; the logic lives in diffrep.websearch."""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.embeddings import read_embeddings
from diffrep.websearch import merge_files, shard_report
from diffrep.workflow import start_job

start_job(snakemake)
inp, out, search = snakemake.input, snakemake.output, snakemake.params.search
gen = read_embeddings(inp.generations)
label = {**snakemake.params.label, "embedder_name": gen["embedder"], "preprocess": gen["preprocess"]}
# the rule lists every shard's files in shard order (params.shards names them)
shards = [int(s) for s in snakemake.params.shards]
prompt_rows = None
if inp.get("generation_dir"):  # prompts sampled from the collection: each generation's own row
    prompts = pd.read_parquet(Path(inp.generation_dir) / "prompts.parquet")
    prompt_rows = dict(zip(prompts["file"], prompts["source_id"].astype(int)))
summary = merge_files(
    dict(zip(shards, inp.results)),
    len(shards),
    search["top_k"],
    out.matches,
    out.summary,
    label=label,
    threshold=search["threshold"],
    allow_missing=search["allow_missing_shards"],
    n_boot=search["bootstrap"]["n"],
    level=search["bootstrap"]["level"],
    seed=snakemake.params.seed,
    prompt_rows=prompt_rows,
    stats_paths=dict(zip(shards, inp.stats)),
)
stats = {s: json.loads(Path(p).read_text()) for s, p in zip(shards, inp.stats)}
report = shard_report(stats, summary["missing_shards"])
report.insert(0, "search", search["name"])
report.to_csv(out.shards, index=False)
