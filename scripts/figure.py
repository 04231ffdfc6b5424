"""Rule summary_figure: one of the summary figures from the tables (logic in diffrep.figures)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.figures import save_figure, summary_figure
from diffrep.workflow import start_job

start_job(snakemake)
style = dict(snakemake.params.style)
fig = summary_figure(
    snakemake.wildcards.figure,
    snakemake.input.summary,
    snakemake.input.baselines,
    matches=list(snakemake.input.similarity),
    baseline_matches=list(snakemake.input.baseline_matches),
    plans=list(snakemake.input.plans),
    plan_ids=snakemake.params.plans,
    style=style,
    study=snakemake.params.study,
)
save_figure(fig, snakemake.output.png, snakemake.output.pdf, dpi=style["dpi"])
