"""Rule calibrate: thin entry point; the logic lives in diffrep.calibration."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.calibration import calibrate_files
from diffrep.workflow import start_job

start_job(snakemake)
settings = dict(snakemake.params.calibration)
calibrate_files(
    snakemake.input.images,
    snakemake.input.metadata,
    snakemake.input.train,
    dict(snakemake.params.embedder),
    snakemake.output.scores,
    snakemake.output.table,
    snakemake.output.summary,
    augmentations=list(settings["augmentations"]),
    n_images=settings["n_images"],
    max_fpr=settings["max_fpr"],
    seed=settings["seed"],
    model_dir=snakemake.input.get("dir"),
    batch_size=snakemake.resources.batch_size,
)
