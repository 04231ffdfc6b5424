"""Rule memorization_figures: ROC of the detection metric and replication vs quality (diffrep.memfigures)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.memfigures import roc_figure, tradeoff_figure
from diffrep.workflow import start_job

start_job(snakemake)
detections = {b: pd.read_parquet(p) for b, p in zip(snakemake.params.benchmarks, snakemake.input.detections)}
roc_figure(detections, snakemake.params.study, snakemake.output.roc)
tradeoff_figure(
    pd.read_csv(snakemake.input.mitigations),
    snakemake.params.thresholds[0],
    snakemake.params.study,
    snakemake.output.tradeoff,
)
