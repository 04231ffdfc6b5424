"""Rule duplication_plan: thin entry point; the logic lives in diffrep.duplication."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.duplication import make_plan, write_plan
from diffrep.workflow import setup_logging

log = setup_logging(snakemake)
settings = snakemake.params.duplication
style = snakemake.params.style
ids = pd.read_parquet(snakemake.input.metadata, columns=["id"])["id"]
plan = make_plan(
    ids, style, weight_pc=settings["weight_pc"], dup_weight=settings["dup_weight"], seed=settings["seed"]
)
log.info(
    "%s: %d of %d images duplicated (weight %s)",
    style,
    plan["duplicated"].sum(),
    len(plan),
    settings["dup_weight"],
)
write_plan(plan, snakemake.output.plan)
