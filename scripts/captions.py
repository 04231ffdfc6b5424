"""Rule captions: thin entry point; the logic lives in diffrep.captions."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.captions import load_tokenizer, make_captions, read_blip, write_captions
from diffrep.datasets import read_metadata
from diffrep.workflow import setup_logging

setup_logging(snakemake)
p = snakemake.params.captions
inp = snakemake.input
tokenizer = load_tokenizer(p["tokenizer_dir"]) if "tokenizer" in inp.keys() else None
data = make_captions(
    read_metadata(inp.metadata),
    p["conditioning"],
    dataset=snakemake.params.dataset,
    n_captions=p["n_captions"],
    blip=read_blip(inp.blip) if "blip" in inp.keys() else None,
    tokenizer=tokenizer,
    random_per_image=p["random_per_image"],
    random_tokens=p["random_tokens"],
    vocab_limit=p["vocab_limit"],
    seed=p["seed"],
)
write_captions(data, snakemake.output.captions)
