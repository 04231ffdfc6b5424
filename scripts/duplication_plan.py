"""Rule duplication_plan: thin entry point; the logic lives in the diffrep package."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.workflow import not_implemented, setup_logging

setup_logging(snakemake)
not_implemented(snakemake, issue=5, what="duplication plans")
