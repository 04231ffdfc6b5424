"""Rule search_prompts: thin entry point; the logic lives in diffrep.webprompts."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.webprompts import search_prompts, write_prompts
from diffrep.workflow import start_job

start_job(snakemake)
p = snakemake.params.prompts
table = search_prompts(p["source"], dict(snakemake.input), p["n_images"], p["seed"], **p["collection"])
write_prompts(table, snakemake.output.prompts)
