"""Rule duplication_plan: thin entry point; the logic lives in diffrep.duplication."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.duplication import make_plan, write_plan
from diffrep.workflow import setup_logging

log = setup_logging(snakemake)
d = snakemake.params.duplication
ids = pd.read_parquet(snakemake.input.metadata, columns=["id"])["id"]
plan = make_plan(ids, snakemake.params.style, weight_pc=d["weight_pc"], dup_weight=d["dup_weight"], seed=d["seed"])
log.info("%s: %d of %d images duplicated (weight %s)", snakemake.params.style, plan["duplicated"].sum(), len(plan), d["dup_weight"])
write_plan(plan, snakemake.output.plan)
