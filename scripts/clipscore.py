"""Rules clipscore / clipscore_train_baseline: thin entry point; the logic lives in diffrep.clipscore."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.clipscore import clipscore_of_generations, clipscore_of_training_set
from diffrep.workflow import start_job

start_job(snakemake)
inp, params = snakemake.input, snakemake.params
if snakemake.rule == "clipscore_train_baseline":
    clipscore_of_training_set(
        inp.images,
        inp.metadata,
        inp.captions,
        inp.dir,
        snakemake.output.score,
        params.model,
        params.dataset,
        batch_size=snakemake.resources.batch_size,
        convention=params.convention,
    )
else:
    clipscore_of_generations(
        inp.generations,
        inp.dir,
        snakemake.output.score,
        params.model,
        batch_size=snakemake.resources.batch_size,
        convention=params.convention,
    )
