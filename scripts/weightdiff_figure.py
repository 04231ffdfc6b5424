"""Rule weightdiff_figure: weight-difference histograms of one run (logic in diffrep.figures)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.figures import save_figure, weightdiff_histograms
from diffrep.workflow import start_job

start_job(snakemake)
w = snakemake.wildcards
style = dict(snakemake.params.style)
fig = weightdiff_histograms(
    pd.read_parquet(snakemake.input.table),
    style,
    study=snakemake.params.study,
    title=f"UNet weight change vs the base: {w.dataset} / {w.run}",
)
save_figure(fig, snakemake.output.png, snakemake.output.pdf, dpi=style["dpi"])
