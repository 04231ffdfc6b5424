"""Rule memorization_replication: similarity of memorised prompts' generations to their ground truth."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.workflow import start_job

start_job(snakemake)


from diffrep.membench import replication_files  # noqa: E402

rep = snakemake.params.replication
replication_files(
    snakemake.input.generations,
    dict(rep["embedder"]),
    snakemake.output.table,
    snakemake.output.summary,
    list(rep["thresholds"]),
    model_dir=snakemake.input.get("dir"),
    identity={
        "benchmark": snakemake.params.bench,
        "preset": snakemake.params.preset,
        "mitigation": rep["mitigation"],
        "embedder_name": rep["embedder_name"],
    },
)
