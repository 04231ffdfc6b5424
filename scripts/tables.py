"""Rule tables: summary.csv, weightdiff.csv and baselines.csv (logic in diffrep.tables)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.tables import write_tables
from diffrep.workflow import start_job

start_job(snakemake)
write_tables(
    {k: [v] if isinstance(v, str) else list(v) for k, v in snakemake.input.items()},
    dict(snakemake.output.items()),
    dict(snakemake.params.items()),
)
