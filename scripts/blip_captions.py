"""Rule blip_captions: thin entry point; the logic lives in diffrep.blip."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.blip import caption_dataset
from diffrep.datasets import read_metadata
from diffrep.fileio import atomic_path
from diffrep.workflow import start_job

start_job(snakemake)
table = caption_dataset(
    snakemake.input.images,
    read_metadata(snakemake.input.metadata),
    snakemake.input.dir,
    snakemake.params.blip,
    seed=snakemake.params.seed,
    batch_size=snakemake.resources.batch_size,
)
with atomic_path(snakemake.output.captions, suffix=".parquet") as tmp:
    table.to_parquet(tmp, index=False)
