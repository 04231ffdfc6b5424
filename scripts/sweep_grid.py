"""Rule sweep_grid: scheduler x CFG x steps image grid of a sweep (logic in diffrep.figures)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.figures import save_figure, sweep_cells, sweep_grid
from diffrep.workflow import start_job

start_job(snakemake)
cells = sweep_cells(list(snakemake.input.generations), snakemake.params.sweep)
fig = sweep_grid(cells, study=snakemake.params.study, title=f"Sampling sweep {snakemake.wildcards.sweep}")
save_figure(fig, snakemake.output.png, snakemake.output.pdf, dpi=snakemake.params.dpi)
