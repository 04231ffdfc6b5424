"""Rule llm_captions: thin entry point; the logic lives in diffrep.llmcaptions."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import torch

from diffrep.datasets import read_metadata
from diffrep.llmcaptions import llm_captions, write_llm_captions
from diffrep.workflow import setup_logging

setup_logging(snakemake)
torch.set_num_threads(snakemake.threads)
table = llm_captions(
    read_metadata(snakemake.input.metadata),
    snakemake.input.dir,
    snakemake.params.llm,
    seed=snakemake.params.seed,
    dataset=snakemake.params.dataset,
)
write_llm_captions(table, snakemake.output.captions)
