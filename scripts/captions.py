"""Rule captions: thin entry point; the logic lives in diffrep.captions."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.captions import load_tokenizer, make_captions, read_blip, write_captions
from diffrep.datasets import read_metadata
from diffrep.llmcaptions import read_llm_captions
from diffrep.workflow import start_job

start_job(snakemake)
params = snakemake.params.captions
inputs = snakemake.input
tokenizer = load_tokenizer(params["tokenizer_dir"]) if "tokenizer" in inputs.keys() else None  # noqa: SIM118 (a Namedlist: `in` tests values)
data = make_captions(
    read_metadata(inputs.metadata),
    params["conditioning"],
    dataset=snakemake.params.dataset,
    n_captions=params["n_captions"],
    blip=read_blip(inputs.blip) if "blip" in inputs.keys() else None,  # noqa: SIM118
    tokenizer=tokenizer,
    llm=read_llm_captions(inputs.llm, params["llm_variants"]) if "llm" in inputs.keys() else None,  # noqa: SIM118
    random_per_image=params["random_per_image"],
    random_tokens=params["random_tokens"],
    vocab_limit=params["vocab_limit"],
    seed=params["seed"],
)
write_captions(data, snakemake.output.captions)
