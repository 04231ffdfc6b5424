"""Rule llm_captions: thin entry point; the logic lives in diffrep.llmcaptions."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.datasets import read_metadata
from diffrep.llmcaptions import llm_captions, write_llm_captions
from diffrep.workflow import start_job

start_job(snakemake)
table = llm_captions(
    read_metadata(snakemake.input.metadata),
    snakemake.input.dir,
    snakemake.params.llm,
    seed=snakemake.params.seed,
    dataset=snakemake.params.dataset,
)
write_llm_captions(table, snakemake.output.captions)
