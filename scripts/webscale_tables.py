"""Rule webscale_tables: thin entry point; the logic lives in diffrep.websearch and diffrep.webapprox."""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webapprox import table_columns
from diffrep.websearch import webscale_table
from diffrep.workflow import start_job

start_job(snakemake)
summaries = [json.loads(Path(p).read_text()) for p in snakemake.input.summaries]
approx = [table_columns(json.loads(Path(p).read_text())) for p in snakemake.input.approx]
webscale_table(summaries, approx).to_csv(snakemake.output.table, index=False)
