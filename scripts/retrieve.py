"""Rule retrieve: thin entry point; the logic lives in diffrep.similarity."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.calibration import resolve_threshold
from diffrep.similarity import retrieve_files
from diffrep.workflow import start_job

start_job(snakemake)
retrieve_files(
    snakemake.input.train,
    snakemake.input.generations,
    snakemake.input.images,
    snakemake.output.matches,
    snakemake.output.stats,
    {
        **snakemake.params.similarity,
        "threshold": resolve_threshold(
            snakemake.params.similarity["threshold"], snakemake.input.get("threshold")
        ),
    },
    identity=snakemake.params.identity,
    plan=snakemake.input.plan,
)
