"""Rule embed_train / embed_generations: thin entry point; the logic lives in diffrep.embeddings."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.embeddings import embed_to_file
from diffrep.workflow import start_job

start_job(snakemake)
inp = snakemake.input
embed_to_file(
    snakemake.params.embedder,
    snakemake.output.embeddings,
    images_dir=inp.get("images"),
    metadata=inp.get("metadata"),
    generations=inp.get("generations"),
    model_dir=inp.get("dir"),
    batch_size=snakemake.resources.batch_size,
    num_workers=snakemake.resources.workers,
)
