"""Rule train_baseline: thin entry point; the logic lives in diffrep.similarity."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.calibration import resolve_threshold
from diffrep.similarity import train_baseline_files
from diffrep.workflow import start_job

start_job(snakemake)
train_baseline_files(
    snakemake.input.train,
    snakemake.output.stats,
    snakemake.output.matches,
    {
        "threshold": resolve_threshold(snakemake.params.threshold, snakemake.input.get("threshold")),
        "index": snakemake.params.faiss_index,
        "nlist": snakemake.params.nlist,
        "nprobe": snakemake.params.nprobe,
    },
    identity=snakemake.params.identity,
)
