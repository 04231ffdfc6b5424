"""Rule fid_reference / fid: thin entry point; the logic lives in diffrep.fid."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.fid import fid_of_generations, reference_statistics
from diffrep.workflow import start_job

start_job(snakemake)
inp, out = snakemake.input, snakemake.output
if snakemake.rule == "fid_reference":
    reference_statistics(
        inp.images,
        inp.metadata,
        inp.dir,
        out.stats,
        snakemake.params.resolution,
        batch_size=snakemake.resources.batch_size,
        num_workers=snakemake.resources.workers,
        convention=snakemake.params.convention,
    )
else:
    fid_of_generations(
        inp.generations,
        inp.reference,
        inp.dir,
        out.score,
        snakemake.params.resolution,
        batch_size=snakemake.resources.batch_size,
        num_workers=snakemake.resources.workers,
        convention=snakemake.params.convention,
    )
