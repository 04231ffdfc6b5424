"""Rule duplication_plan: thin entry point; the logic lives in diffrep.duplication."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.duplication import make_plan, write_plan
from diffrep.workflow import log, start_job

start_job(snakemake)
settings = snakemake.params.duplication
style = snakemake.params.style
ids = pd.read_parquet(snakemake.input.metadata, columns=["id"])["id"]
plan = make_plan(ids, style, **settings)  # nodup's settings hold no dup_weight: it does not use one
log.info(
    "%s: %d of %d images duplicated (weight %s)",
    style,
    plan["duplicated"].sum(),
    len(plan),
    plan["weight"].max() if len(plan) else 1.0,
)
write_plan(plan, snakemake.output.plan)
