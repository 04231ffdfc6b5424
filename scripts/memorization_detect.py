"""Rule memorization_detect: Wen et al.'s metric per prompt and the ROC statistics per set (diffrep.memorization)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs


from diffrep.workflow import log, start_job

start_job(snakemake)

import torch  # noqa: E402

from diffrep import families, membench, memorization, pipelines  # noqa: E402
from diffrep.fileio import atomic_path  # noqa: E402
from diffrep.progress import ProgressLog  # noqa: E402

settings = dict(snakemake.params.detection)
family = families.family_of(snakemake.input.dir)
memorization.check_family(family, settings["model"])
prompts = membench.benchmark_prompts(snakemake.input.prompts)
membench.check_prompts(prompts, f"benchmark {snakemake.wildcards.bench}")
pipe = pipelines.load_pipeline(
    snakemake.input.dir, "cuda" if torch.cuda.is_available() else "cpu", torch.float32, family
)
n_jobs = len(prompts) * int(settings["n_generations"])
det = memorization.detect(
    pipe,
    prompts,
    settings,
    batch_size=snakemake.resources.batch_size,
    progress=ProgressLog("detect", n_jobs, log),
)
with atomic_path(snakemake.output.detection, suffix=".parquet") as tmp:
    det.to_parquet(tmp, index=False)
sets = memorization.set_statistics(det, n_subsets=int(settings["n_subsets"]), seed=int(settings["seed"]))
sets.insert(0, "benchmark", snakemake.wildcards.bench)
with atomic_path(snakemake.output.sets, suffix=".csv") as tmp:
    sets.to_csv(tmp, index=False)
log.info("detection:\n%s", sets.to_string())
