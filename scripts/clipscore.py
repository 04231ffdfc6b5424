"""Rule clipscore: thin entry point; the logic lives in diffrep.clipscore."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import torch

from diffrep.clipscore import clipscore_of_generations
from diffrep.workflow import setup_logging

setup_logging(snakemake)
torch.set_num_threads(snakemake.threads)
clipscore_of_generations(
    snakemake.input.generations,
    snakemake.input.dir,
    snakemake.output.score,
    snakemake.params.model,
    batch_size=snakemake.resources.batch_size,
)
