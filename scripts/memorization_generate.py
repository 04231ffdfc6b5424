"""Rule memorization_generate: memorised prompts over seeds and general prompts, one preset (diffrep.membench)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

from diffrep.workflow import start_job

start_job(snakemake)

import torch  # noqa: E402

from diffrep import families, membench, pipelines  # noqa: E402
from diffrep.generation import set_scheduler  # noqa: E402

gen = dict(snakemake.params.generation)
preset = dict(snakemake.params.preset)
family = families.family_of(snakemake.input.dir)
device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = pipelines.load_pipeline(snakemake.input.dir, device, torch.float32, family)
set_scheduler(pipe, preset.get("scheduler", "default"))
plans = membench.generation_plans(membench.benchmark_prompts(snakemake.input.prompts), gen, int(gen["seed"]))
for kind in ("memorized", "general"):
    membench.generate_plan(
        pipe,
        family,
        plans[kind],
        preset,
        int(gen["resolution"]),
        getattr(snakemake.output, kind),
        int(gen["seed"]),
        batch_size=snakemake.resources.batch_size,
        unavailable=plans["unavailable"] if kind == "memorized" else None,
    )
