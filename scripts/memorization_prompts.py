"""Rule memorization_prompts: fetch (or copy from a built model) and validate a prompt file (diffrep.membench)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.membench import fetch_prompt_file, normalise_prompt_file
from diffrep.workflow import start_job

start_job(snakemake)
entry = snakemake.params.prompt_file
src = fetch_prompt_file(entry["source"], "resources/prompts/.raw")
normalise_prompt_file(
    src,
    snakemake.output.table,
    snakemake.params.name,
    columns=dict(entry["columns"]),
    label_map=dict(entry["label_map"]),
    sep=entry.get("sep"),
    default_label=entry.get("default_label"),
    image_cache=f"resources/prompts/{snakemake.params.name}.images" if entry.get("fetch_images") else None,
)
