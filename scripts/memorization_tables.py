"""Rule memorization_tables: detection, mitigation and per-prompt tables (diffrep.membench)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.membench import write_tables
from diffrep.workflow import log, start_job

start_job(snakemake)
tables = write_tables(
    {k: list(snakemake.input[k]) for k in ("sets", "replication", "quality", "per_prompt")},
    dict(snakemake.params.tables),
    {k: snakemake.output[k] for k in ("detection", "mitigations", "prompts")},
)
for name, table in tables.items():
    log.info("%s:\n%s", name, table.to_string())
