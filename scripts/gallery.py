"""Rule gallery: generations beside their top training matches (logic in diffrep.figures)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.figures import gallery, save_figure
from diffrep.workflow import start_job

start_job(snakemake)
w = snakemake.wildcards
fig = gallery(
    pd.read_parquet(snakemake.input.matches),
    snakemake.input.generations,
    snakemake.input.images,
    pd.read_parquet(snakemake.input.metadata),
    study=snakemake.params.study,
    title=f"Match gallery: {w.dataset} / {w.embedder} / {w.run} / {w.gen}",
    size=snakemake.params.size,
    top_k=snakemake.params.top_k,
)
save_figure(fig, snakemake.output.png, snakemake.output.pdf, dpi=snakemake.params.dpi)
