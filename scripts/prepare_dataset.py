"""Rule prepare_dataset: thin entry point; the logic lives in diffrep.datasets."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.config import derive_seed
from diffrep.datasets import prepare_dataset
from diffrep.workflow import start_job

threads = start_job(snakemake)
out = snakemake.output
prepare_dataset(
    snakemake.params.name,
    snakemake.params.dataset,
    images_dir=out.images,
    metadata=out.metadata,
    manifest=out.manifest,
    report=out.report,
    # a built dataset's seed is its source's (not the study's): resources/ is shared by every study
    seed=derive_seed(snakemake.params.dataset["source"].get("seed", 0), "dataset", snakemake.params.name),
    threads=threads,
)
