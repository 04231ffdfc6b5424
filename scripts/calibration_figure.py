"""Rule calibration_figure: ROC curves and score histograms of one calibration (diffrep.calibration)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.calibration import plot_calibration
from diffrep.workflow import start_job

start_job(snakemake)
plot_calibration(
    pd.read_parquet(snakemake.input.scores),
    pd.read_csv(snakemake.input.table),
    snakemake.output.png,
    title=f"{snakemake.params.study}: {snakemake.wildcards.dataset}, {snakemake.wildcards.embedder}",
    dpi=snakemake.params.style["dpi"],
)
