"""Rules generate and generate_search: images of one run with one preset (prompts, seeds, mitigation: diffrep.generation)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.workflow import start_job

start_job(snakemake)


from diffrep.generation import generate  # noqa: E402

gen = snakemake.params.generation
generate(
    model_dir=snakemake.input.model,
    captions_file=snakemake.input.get("captions"),
    plan_file=snakemake.input.get("plan"),
    prompts_file=snakemake.input.get("prompts"),  # a web-scale search's prompts table (generate_search)
    out_dir=snakemake.output.images,
    preset=snakemake.params.preset,
    n_images=gen["n_images"],
    resolution=gen["resolution"],
    seed=gen["seed"],
    dtype=gen["dtype"],
    batch_size=snakemake.resources.batch_size,
    run=snakemake.params.run,
)
