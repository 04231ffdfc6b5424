# Everything that is not a rule: config validation, the run matrix, wildcard constraints, input
# functions and the final targets. Rules only name these functions; they carry no lambdas.

import re

from snakemake.utils import validate

from diffrep import config as dconf
from diffrep import jobsizes, miniweb, numerics, webshards

try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    # a number given as a string (what --config makes of nested values): say so and what works
    _hint = dconf.string_value_hint(err.__context__)
    if _hint is None:
        raise
    raise WorkflowError(f"{err}\n\n{_hint}") from None
dconf.fill_defaults(config)
# Params compare by their text: sort every mapping so that reordering keys in a config file (or a
# tool that rewrites it) re-runs nothing.
_canonical = dconf.canonical(config)
config.clear()
config.update(_canonical)
try:
    dconf.check(config)
except dconf.ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None


# The kernels every job computes with: set here, in the environment every job inherits (on a
# cluster each job parses the workflow again), before any job loads torch, numpy or faiss.
NUMERICS = numerics.settings(config["numerics"])
try:
    numerics.apply(NUMERICS)
except numerics.NumericsError as err:
    raise WorkflowError(str(err)) from None

STUDY = config["study"]
R = f"results/{STUDY}"
LOGS = f"logs/{STUDY}"
BENCH = f"benchmarks/{STUDY}"
MODELS = config["models"]
DATASETS = config["datasets"]
PRESETS = dconf.presets(config)
RUNS = dconf.runs(config)
FINETUNES = dconf.finetunes(config)
GENERATIONS = dconf.generations(config)
MEASURED = dconf.measured_generations(config)
EMBEDDERS = config["embedders"]


def _alternatives(names):
    """A regex matching exactly the given names (never matching anything when there are none)."""
    names = sorted(names)
    return "(?:" + "|".join(re.escape(n) for n in names) + ")" if names else "(?!x)x"


def _is_built(model):
    return MODELS[model]["sources"][0]["type"] == "build"


FETCHED_MODELS = [m for m in MODELS if not _is_built(m)]
BUILT_MODELS = [m for m in MODELS if _is_built(m)]


PRETRAINED = sorted({r.model for _, r in RUNS if r.is_pretrained})
RUN_PATTERN = (
    f"base|{dconf.PRETRAINED_PREFIX}{_alternatives(PRETRAINED)}|{_alternatives(dconf.DUPLICATIONS)}"
    rf"\.{_alternatives(dconf.CONDITIONINGS)}"
    rf"\.{_alternatives(dconf.TRAIN_MITIGATIONS)}"
)


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    embedder=_alternatives(EMBEDDERS),
    gen=_alternatives(PRESETS),
    run=RUN_PATTERN,
    duplication=_alternatives(dconf.DUPLICATIONS),
    conditioning=_alternatives(dconf.CONDITIONINGS),
    mitigation=_alternatives(dconf.TRAIN_MITIGATIONS),
    sweep=_alternatives(config["sweeps"]),


# ---------------------------------------------------------------- paths


def model_dir(name):
    return f"resources/models/{name}"


def model_files(name):
    """The folder and the verified manifest of a model: what a consumer depends on."""
    return {"dir": model_dir(name), "manifest": f"resources/models/{name}.sha256"}


def dataset_files(name):
    root = f"resources/data/{name}"
    return {
        "images": f"{root}/images",
        "metadata": f"{root}/metadata.parquet",
        "manifest": f"{root}/images.sha256",
    }


def run_model_dir(dataset, run):
    """The model a run generates from: the base or a pretrained model's folder, or a finetune."""
    r = dconf.Run.parse(run)
    if r.duplication is None:
        return model_dir(dconf.run_model(config, r))
    return f"{R}/{dataset}/models/{run}"


def generation_dir(dataset, run, gen):
    return f"{R}/{dataset}/generations/{run}/{gen}"


def plan_for(run):
    """The duplication plan a run was trained with (base and pretrained models count as nodup)."""
    r = dconf.Run.parse(run)
    return "nodup" if r.duplication is None else r.duplication


def prompt_conditioning(run):
    """The caption style prompts are drawn from: the run's own, instance captions for base and pretrained."""
    r = dconf.Run.parse(run)
    return "instancelevel_blip" if r.duplication is None else r.conditioning


# ---------------------------------------------------------------- input functions


def get_model_source(wildcards):
    return MODELS[wildcards.model]


def get_dataset_config(wildcards):
    return DATASETS[wildcards.dataset]


def get_dataset(wildcards):
    return dataset_files(wildcards.dataset)


def get_dataset_env(wildcards):
    """prepare_dataset's conda env: img2dataset gets its own (it pins pandas<3)."""
    src = DATASETS[wildcards.dataset]["source"]
    if src["type"] == "urls" and src.get("engine", "diffrep") == "img2dataset":
        return "../envs/optional/img2dataset.yaml"
    return "../envs/data.yaml"


def get_blip_inputs(wildcards):
    """The prepared dataset and the BLIP model folder (both have a manifest: named apart)."""
    data = dataset_files(wildcards.dataset)
    blip = model_files(config["captions"]["blip"]["model"])
    return {
        "images": data["images"],
        "metadata": data["metadata"],
        "manifest": data["manifest"],
        "dir": blip["dir"],
        "model_manifest": blip["manifest"],
    }


def get_caption_inputs(wildcards):
    """Captions need the metadata; BLIP captions where the dataset asks; the base tokenizer for random tokens."""
    inputs = {"metadata": dataset_files(wildcards.dataset)["metadata"]}
    if (
        wildcards.conditioning == "instancelevel_blip"
        and DATASETS[wildcards.dataset]["blip_captions"]
    ):
        inputs["blip"] = f"{R}/{wildcards.dataset}/captions/blip.parquet"
    if wildcards.conditioning == "instancelevel_random":
        inputs["tokenizer"] = model_files(config["base_model"])["manifest"]
    if (
        wildcards.conditioning == "instancelevel_blip"
        and DATASETS[wildcards.dataset]["llm_captions"]
    ):
        inputs["llm"] = f"{R}/{wildcards.dataset}/captions/llm.parquet"
    return inputs


def get_llm_caption_inputs(wildcards):
    """The dataset's metadata and the instruction model (both have a manifest: named apart)."""
    data = dataset_files(wildcards.dataset)
    llm = model_files(config["captions"]["llm"]["model"])
    return {
        "metadata": data["metadata"],
        "manifest": data["manifest"],
        "dir": llm["dir"],
        "model_manifest": llm["manifest"],
    }


def get_llm_caption_seed(wildcards):
    return dconf.derive_seed(config["seed"], "llm_captions", wildcards.dataset)


def get_caption_params(wildcards):
    llm = (
        {"llm_variants": config["captions"]["llm"]["n_variants"]}
        if DATASETS[wildcards.dataset]["llm_captions"]
        else {}  # no key: studies without LLM captions keep their params (nothing re-runs)
    )
    return {
        **llm,
        "conditioning": wildcards.conditioning,
        "n_captions": DATASETS[wildcards.dataset]["n_captions"],
        "random_per_image": config["captions"]["random_per_image"],
        "random_tokens": config["captions"]["random_tokens"],
        "vocab_limit": config["captions"]["vocab_limit"],
        "tokenizer_dir": model_dir(config["base_model"]),
        "seed": dconf.derive_seed(
            config["seed"], "captions", wildcards.dataset, wildcards.conditioning
        ),
    }


# What a duplication plan's content depends on: nodup records the duplicated set (weight_pc, seed)
# as the control for the duplicated runs but weighs every image 1, so dup_weight is not its param.
DUPLICATION_PLAN_KEYS = {
    "nodup": ("weight_pc", "seed"),
    "dup_both": ("weight_pc", "dup_weight", "seed"),
    "dup_image": ("weight_pc", "dup_weight", "seed"),
}


def get_duplication_params(wildcards):
    """The duplication settings of one plan, only those its file depends on (in config order):
    editing dup_weight re-plans dup_both and dup_image, never nodup nor what was trained on it.
    """
    keys = DUPLICATION_PLAN_KEYS[wildcards.duplication]
    return {k: v for k, v in config["duplication"].items() if k in keys}


def get_finetune_inputs(wildcards):
    base = model_files(config["base_model"])
    data = dataset_files(wildcards.dataset)
    return {
        "base": base["dir"],
        "base_manifest": base["manifest"],
        "images": data["images"],
        "metadata": data["metadata"],
        "captions": f"{R}/{wildcards.dataset}/captions/{wildcards.conditioning}.json",
        "plan": f"{R}/{wildcards.dataset}/duplication/{wildcards.duplication}.parquet",
    }


def get_mitigation_params(wildcards):
    return {"name": wildcards.mitigation, **config["train_mitigations"]}


TRAINING_RESOURCE_KEYS = (
    "checkpointing_steps",
    "keep_checkpoints",
    "gradient_checkpointing",
)


def get_training_params(wildcards):
    """Training settings that change the weights (checkpointing and memory options are resources)."""
    return {
        k: v for k, v in config["training"].items() if k not in TRAINING_RESOURCE_KEYS
    }


def get_run_plan(wildcards):
    """The duplication plan of a run (nodup for the base model)."""
    return f"{R}/{wildcards.dataset}/duplication/{plan_for(wildcards.run)}.parquet"


def get_generate_inputs(wildcards):
    inputs = {
        "model": run_model_dir(wildcards.dataset, wildcards.run),
        "captions": f"{R}/{wildcards.dataset}/captions/{prompt_conditioning(wildcards.run)}.json",
        "plan": get_run_plan(wildcards),
    }
    r = dconf.Run.parse(wildcards.run)
    # base or pretrained: a fetched model, verified by its manifest
    if r.duplication is None:
        inputs["manifest"] = model_files(dconf.run_model(config, r))["manifest"]
    return inputs


def _generation_job(wildcards):
    """(model, preset name, run, generation params) of a generate job, or of a generate_search job
    (a web-scale search whose prompts come from its collection or a prompt file)."""
    if "search" in wildcards.keys():
        s = SEARCHES[wildcards.search]
        run, gen = dconf.search_run(config, s), s["prompts"]["preset"]
        prompts = get_search_prompt_params(wildcards)
        n_images, seed = prompts["n_images"], prompts["seed"]
    else:
        run, gen = dconf.Run.parse(wildcards.run), wildcards.gen
        n_images = PRESETS[gen].get("n_images", config["generation"]["n_images"])
        seed = dconf.derive_seed(config["generation"]["seed"], wildcards.dataset)
    params = {
        "n_images": n_images,
        "resolution": dconf.generation_resolution(config, run),
        "seed": seed,
        "dtype": config["generation"]["dtype"],
    }
    return dconf.run_model(config, run), gen, run, params


def get_preset(wildcards):
    if "search" in wildcards.keys():
        return PRESETS[SEARCHES[wildcards.search]["prompts"]["preset"]]
    return PRESETS[wildcards.gen]


def get_generation_params(wildcards):
    return _generation_job(wildcards)[3]


def get_generation_run(wildcards):
    return _generation_job(wildcards)[2].name


def _generate_sizes(wildcards):
    """What a generate job asks for, by the model it generates from (diffrep.jobsizes)."""
    model, gen, _, params = _generation_job(wildcards)
    return jobsizes.generate_resources(
        MODELS[model], PRESETS[gen], params["n_images"], params["resolution"]
    )


def get_generate_mem_mb(wildcards):
    return _generate_sizes(wildcards)["mem_mb"]


def get_generate_gpu_mem_mb(wildcards):
    return _generate_sizes(wildcards)["gpu_mem_mb"]


def get_generate_runtime(wildcards):
    return _generate_sizes(wildcards)["runtime"]


def get_generate_cuda_dtype(wildcards):
    return _generate_sizes(wildcards)["dtype"]


def get_embedder(wildcards):
    return EMBEDDERS[wildcards.embedder]


def embedder_model(name):
    """The model files an embedder needs (SSCD), none for the pixel descriptor."""
    emb = EMBEDDERS[name]
    return model_files(emb["model"]) if emb["type"] == "sscd" else {}


def get_embedder_model(wildcards):
    return embedder_model(wildcards.embedder)


def get_embed_train_inputs(wildcards):
    return {**dataset_files(wildcards.dataset), **get_embedder_model(wildcards)}


def get_embed_generation_inputs(wildcards):
    return {
        "generations": generation_dir(wildcards.dataset, wildcards.run, wildcards.gen),
        **get_embedder_model(wildcards),
    }


def get_fid_model(wildcards):
    return model_files(config["fid"]["model"])


def get_clip_model(wildcards):
    return model_files(config["clipscore"]["model"])


def get_clipscore_baseline_inputs(wildcards):
    """Training images, their caption [0] (the instancelevel_blip captions) and the CLIP model."""
    data = dataset_files(wildcards.dataset)
    clip = model_files(config["clipscore"]["model"])
    return {
        "images": data["images"],
        "metadata": data["metadata"],
        "manifest": data["manifest"],
        "captions": f"{R}/{wildcards.dataset}/captions/instancelevel_blip.json",
        "dir": clip["dir"],
        "model_manifest": clip["manifest"],
    }


def get_generations(wildcards):
    return generation_dir(wildcards.dataset, wildcards.run, wildcards.gen)


def get_matches_identity(wildcards):
    """What a retrieve job's files are: written into them, so that no reader parses their path."""
    return {
        "dataset": wildcards.dataset,
        "embedder": wildcards.embedder,
        "run": wildcards.run,
        "preset": wildcards.gen,
    }


def get_baseline_identity(wildcards):
    return {"dataset": wildcards.dataset, "embedder": wildcards.embedder}


def get_weightdiff_inputs(wildcards):
    return {
        "base": model_files(config["base_model"])["dir"],
        "model": f"{R}/{wildcards.dataset}/models/{wildcards.run}",
    }


# ---------------------------------------------------------------- aggregate targets


def measured_ids():
    """Dataset, run and preset of every measured generation set, in the order of every measured list."""
    return [
        {"dataset": ds, "run": run.name, "preset": gen} for ds, run, gen in MEASURED
    ]


def _measured(pattern, **extra):
    return [pattern.format(R=R, gen=m["preset"], **m, **extra) for m in measured_ids()]


def similarity_stats():
    return [
        p
        for emb in EMBEDDERS
        for p in _measured("{R}/{dataset}/similarity/{emb}/{run}/{gen}.json", emb=emb)
    ]


def similarity_tables():
    return [
        p
        for emb in EMBEDDERS
        for p in _measured(
            "{R}/{dataset}/similarity/{emb}/{run}/{gen}.parquet", emb=emb
        )
    ]


def similarity_baselines():
    return [
        f"{R}/{ds}/similarity/{emb}/train_baseline.json"
        for ds in sorted({g[0] for g in MEASURED})
        for emb in EMBEDDERS
    ]


def similarity_baseline_tables():
    """Per-image train-vs-train matches (the distribution the figures draw as the baseline)."""
    return [p.replace(".json", ".parquet") for p in similarity_baselines()]


def duplication_plan_ids():
    """The duplication plans of the measured runs (which training images are duplicated), each with
    the runs trained with it: ``[{"dataset", "plan", "runs"}]`` in the order of duplication_plans().
    """
    runs = {}
    for ds, run, _ in MEASURED:
        runs.setdefault((ds, plan_for(run.name)), set()).add(run.name)
    return [
        {"dataset": ds, "plan": plan, "runs": sorted(names)}
        for (ds, plan), names in sorted(runs.items())
    ]


def duplication_plans():
    return [
        f"{R}/{p['dataset']}/duplication/{p['plan']}.parquet"
        for p in duplication_plan_ids()
    ]


def measured_presets():
    """The generation presets that are measured, by name (their settings go into the tables)."""
    return {gen: PRESETS[gen] for gen in sorted({g for _, _, g in MEASURED})}


def table_input_ids():
    """What each input of the tables rule that does not say what it is belongs to, in the order of
    get_table_inputs (rna-seq-star-deseq2's count_matrix passes sample names the same way).
    """
    weightdiff = config["weightdiff"]["enabled"]
    return {
        "fid": measured_ids() if config["fid"]["enabled"] else [],
        "clipscore": measured_ids() if config["clipscore"]["enabled"] else [],
        "weightdiff": [
            {"dataset": d, "run": r.name} for d, r in FINETUNES if weightdiff
        ],
        "model_manifests": [config["base_model"]]
        + sorted({r.model for _, r, _ in MEASURED if r.is_pretrained}),
        "dataset_manifests": sorted({r[0] for r in RUNS}),
    }


def fid_scores():
    ids = table_input_ids()["fid"]
    return [f"{R}/{i['dataset']}/fid/{i['run']}/{i['preset']}.json" for i in ids]


def clip_scores():
    ids = table_input_ids()["clipscore"]
    return [f"{R}/{i['dataset']}/clipscore/{i['run']}/{i['preset']}.json" for i in ids]


def clip_baselines():
    """The CLIP-score training-set baseline (upstream's clipscore_bg), once per measured dataset."""
    if not config["clipscore"]["enabled"]:
        return []
    return [
        f"{R}/{ds}/clipscore/train_baseline.json"
        for ds in sorted({g[0] for g in MEASURED})
    ]


def weightdiff_tables():
    ids = table_input_ids()["weightdiff"]
    return [f"{R}/{i['dataset']}/weightdiff/{i['run']}.parquet" for i in ids]


def get_table_inputs(wildcards):
    ids = table_input_ids()
    return {
        "similarity": similarity_stats(),
        "baselines": similarity_baselines(),
        "fid": fid_scores(),
        "clipscore": clip_scores(),
        "clipscore_bg": clip_baselines(),
        "weightdiff": weightdiff_tables(),
        "model_manifests": [model_files(m)["manifest"] for m in ids["model_manifests"]],
        "dataset_manifests": [
            dataset_files(ds)["manifest"] for ds in ids["dataset_manifests"]
        ],
    }


def gallery_figures():
    return [
        p
        for emb in EMBEDDERS
        for p in _measured(
            "{R}/figures/gallery/{dataset}/{emb}/{run}/{gen}.png", emb=emb
        )
    ]


def weightdiff_figures():
    if not config["weightdiff"]["enabled"]:
        return []
    return [f"{R}/figures/weightdiff/{ds}/{run.name}.png" for ds, run in FINETUNES]


def sweep_figures():
    return [f"{R}/figures/grid/{sweep}.png" for sweep in config["sweeps"]]


def all_figures():
    return (
        [f"{R}/figures/{name}.png" for name in dconf.SUMMARY_FIGURES]
        + gallery_figures()
        + weightdiff_figures()
        + sweep_figures()
    )


FIGURE_STYLE_KEYS = ("style", "context", "dpi")


def get_figure_style(wildcards):
    """Style shared by all figures plus this figure's own options (only these re-run it)."""
    style = {k: config["figures"][k] for k in FIGURE_STYLE_KEYS}
    return {**style, **config["figures"]["per_figure"].get(wildcards.figure, {})}


def get_common_style(wildcards):
    return {k: config["figures"][k] for k in FIGURE_STYLE_KEYS}


def _sweep_cells(name):
    """A sweep's cells (generation presets) by name, in the sweep's product order."""
    return {g: p for g, p in PRESETS.items() if p.get("sweep") == name}


def _sweep_generations(name):
    """Run × cell of a sweep: the rows of its grid, in the order of its inputs."""
    cells = _sweep_cells(name)
    return [
        {"run": run, "cell": cell}
        for run in config["sweeps"][name]["runs"]
        for cell in cells
    ]


def get_sweep_generations(wildcards):
    dataset = config["sweeps"][wildcards.sweep]["dataset"]
    return [
        generation_dir(dataset, g["run"], g["cell"])
        for g in _sweep_generations(wildcards.sweep)
    ]


def get_sweep_params(wildcards):
    """The sweep's runs and cells, and the run × cell of each input folder, in order."""
    return {
        "runs": config["sweeps"][wildcards.sweep]["runs"],
        "cells": _sweep_cells(wildcards.sweep),
        "generations": _sweep_generations(wildcards.sweep),
    }


def get_final_output():
    """What `snakemake` (rule all) builds for the configured study."""
    tables = [f"{R}/tables/summary.csv", f"{R}/tables/weightdiff.csv"]
    return (
        tables
        + all_figures()
        + calibration_outputs()
        + webscale_outputs()
        + memorization_outputs()
    )


# ---------------------------------------------------------------- calibration (rules/calibration.smk)


def calibration_outputs():
    """The calibration tables and figures of every measured dataset and embedder (if enabled)."""
    if not config["calibration"]["enabled"]:
        return []
    pairs = [(ds, emb) for ds in sorted({g[0] for g in MEASURED}) for emb in EMBEDDERS]
    return [f"{R}/{ds}/calibration/{emb}/table.csv" for ds, emb in pairs] + [
        f"{R}/figures/calibration/{ds}/{emb}.png" for ds, emb in pairs
    ]


def get_calibration_inputs(wildcards):
    return {
        **dataset_files(wildcards.dataset),
        "train": f"{R}/{wildcards.dataset}/embeddings/{wildcards.embedder}/train.npz",
        **get_embedder_model(wildcards),
    }


def get_calibration_params(wildcards):
    return {k: v for k, v in config["calibration"].items() if k != "enabled"}


def _calibrated_datasets():
    return sorted({g[0] for g in MEASURED})


def get_study_threshold_inputs(wildcards):
    """The calibration summaries the study's threshold for an embedder is chosen from."""
    return [
        f"{R}/{ds}/calibration/{wildcards.embedder}/summary.json"
        for ds in _calibrated_datasets()
    ]


def get_study_threshold_datasets(wildcards):
    return _calibrated_datasets()


def get_threshold_input(wildcards):
    """similarity.threshold: calibrated - the study's threshold file for the embedder; else none."""
    if config["similarity"]["threshold"] != "calibrated":
        return []
    return f"{R}/calibration/{wildcards.embedder}/threshold.json"


# ---------------------------------------------------------------- web-scale search (rules/webscale.smk)

WEBSCALE = config["webscale"]
COLLECTIONS = WEBSCALE["collections"]
SEARCHES = {s["name"]: s for s in WEBSCALE["searches"]}
WS = "resources/webscale"
try:
    # a model's pretraining pictures as its "web" (the mini lane): parquet and row count are derived
    for _name, _coll in COLLECTIONS.items():
        if _coll.get("pretraining_of"):
            _coll["parquets"] = [miniweb.mini_web_path(WS, _name)["parquet"]]
            _coll["n_rows"] = miniweb.pretraining_rows(
                config["models"],
                _coll["pretraining_of"],
                f"webscale.collections.{_name}.pretraining_of",
            )
        # a dataset's pictures as its "web" (the rehearsal lane)
        if _coll.get("dataset_of"):
            _coll["parquets"] = [miniweb.mini_web_path(WS, _name)["parquet"]]
    # shard counts at DAG time: parquet footers when the files are on disk, else the configured n_rows
    N_SHARDS = {
        name: webshards.shard_count(c, name)
        for name, c in COLLECTIONS.items()
        if any(s["collection"] == name for s in SEARCHES.values())
    }
except webshards.ShardError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None


wildcard_constraints:
    collection=_alternatives(COLLECTIONS),
    search=_alternatives(SEARCHES),
    shard=r"\d{5}",


# collections made by rule pretraining_web (a mini model's pretraining set) / dataset_web (a dataset)
PRETRAINING_WEBS = [n for n, c in COLLECTIONS.items() if c.get("pretraining_of")]
DATASET_WEBS = [n for n, c in COLLECTIONS.items() if c.get("dataset_of")]
# collections whose shards are downloaded (download_shard) / already on disk (register_shard)
DOWNLOADED = [n for n, c in COLLECTIONS.items() if not c.get("on_disk")]
ON_DISK = [n for n, c in COLLECTIONS.items() if c.get("on_disk")]


def shard_tar(collection, shard):
    """A shard's tar: downloaded under resources/webscale/, or img2dataset's on the user's disk."""
    folder = COLLECTIONS[collection].get("on_disk")
    if folder:
        return f"{folder}/{shard}.tar"
    return f"{WS}/{collection}/shards/{shard}.tar"


def get_on_disk_shard(wildcards):
    """An on-disk shard's tar and img2dataset stats, and the parquets it is checked against."""
    folder = COLLECTIONS[wildcards.collection]["on_disk"]
    return {
        "tar": f"{folder}/{wildcards.shard}.tar",
        "stats": f"{folder}/{wildcards.shard}_stats.json",
        **get_download_inputs(wildcards),
    }


def shard_names(collection):
    """The shard numbers of a collection as path names (00000, 00001, ...)."""
    return [f"{i:05d}" for i in range(N_SHARDS[collection])]


def get_shard_rows_params(wildcards):
    """What defines a shard's rows (a change re-downloads): shard size and column names. Fetch settings
    and the missing-shard opt-in reach the job as resources, so changing them re-runs nothing.
    """
    cfg = COLLECTIONS[wildcards.collection]
    return {k: cfg[k] for k in ("shard_size", "url_col", "caption_col", "id_cols")}


def get_fetch_engine(wildcards):
    return COLLECTIONS[wildcards.collection]["download"]["engine"]


def get_shard_download_env(wildcards):
    """download_shard's conda env: img2dataset gets its own (it pins pandas<3)."""
    if get_fetch_engine(wildcards) == "img2dataset":
        return "../envs/optional/img2dataset.yaml"
    return "../envs/data.yaml"


def get_fetch_threads(wildcards):
    return COLLECTIONS[wildcards.collection]["download"]["threads"]


def get_fetch_timeout(wildcards):
    return COLLECTIONS[wildcards.collection]["download"]["timeout"]


def get_fetch_retries(wildcards):
    return COLLECTIONS[wildcards.collection]["download"]["retries"]


def collection_parquets(name):
    return [str(p) for p in webshards.collection_files(COLLECTIONS[name]["parquets"])]


def get_download_inputs(wildcards):
    """A shard's metadata parquets, and the collection's sha256 manifest when it has one."""
    manifest = COLLECTIONS[wildcards.collection].get("manifest")
    return {
        "parquets": collection_parquets(wildcards.collection),
        **({"manifest": manifest} if manifest else {}),
    }


def get_search(wildcards):
    return SEARCHES[wildcards.search]


def get_allow_missing(wildcards):
    """Whether a shard that fetched nothing is recorded (some search over the collection allows missing
    shards) rather than failing its download job."""
    return int(
        any(
            s["allow_missing_shards"]
            for s in SEARCHES.values()
            if s["collection"] == wildcards.collection
        )
    )


def get_search_label(wildcards):
    """What every number of a search is labelled with."""
    s = SEARCHES[wildcards.search]
    return {
        "search": s["name"],
        "model": s["model"],
        "collection": s["collection"],
        "embedder": s["embedder"],
    }


def _search_generations(s):
    """The descriptors of a search's generations: a dataset run's (source dataset) or its own."""
    if dconf.search_prompt_source(s) != "dataset":
        return f"{R}/webscale/{s['name']}/generations.npz"
    run = dconf.search_run(config, s).name
    ds, preset = s["prompts"]["dataset"], s["prompts"]["preset"]
    return f"{R}/{ds}/embeddings/{s['embedder']}/{run}/{preset}.npz"


def get_search_prompt_inputs(wildcards):
    """What a search's prompts are sampled from: its collection's parquets, or a prompt table."""
    s = SEARCHES[wildcards.search]
    if dconf.search_prompt_source(s) == "prompt_file":
        return {"table": prompt_table(s["prompts"]["prompt_file"])}
    return {"parquets": collection_parquets(s["collection"])}


def get_search_prompt_params(wildcards):
    """Source, count and seed of a search's prompts (a change re-draws them), and the collection's
    columns and shard size."""
    s = SEARCHES[wildcards.search]
    p, coll = s["prompts"], COLLECTIONS[s["collection"]]
    source = dconf.search_prompt_source(s)
    return {
        "source": source,
        "n_images": p.get("n_images", config["generation"]["n_images"]),
        "seed": p.get(
            "seed", dconf.derive_seed(config["seed"], "webscale", s["name"], "prompts")
        ),
        "collection": (
            {k: coll[k] for k in ("shard_size", "url_col", "caption_col")}
            if source == "collection"
            else {}
        ),
    }


def get_search_generate_inputs(wildcards):
    """A search's model (verified by its manifest) and prompts table (generate_search)."""
    s = SEARCHES[wildcards.search]
    model = dconf.run_model(config, dconf.search_run(config, s))
    return {
        "model": model_dir(model),
        "manifest": model_files(model)["manifest"],
        "prompts": f"{R}/webscale/{wildcards.search}/prompts.parquet",
    }


def get_search_embed_inputs(wildcards):
    """A search's own generations and its embedder's model (embed_search_generations)."""
    s = SEARCHES[wildcards.search]
    return {
        "generations": f"{R}/webscale/{wildcards.search}/generations",
        **embedder_model(s["embedder"]),
    }


def get_search_embedder(wildcards):
    return EMBEDDERS[SEARCHES[wildcards.search]["embedder"]]


def get_bad_images(wildcards):
    return COLLECTIONS[wildcards.collection]["bad_images"]


def get_search_top_k(wildcards):
    return SEARCHES[wildcards.search]["top_k"]


def get_search_shards(wildcards):
    """The shard names of a search's collection, in the order the merge's inputs list them."""
    return shard_names(SEARCHES[wildcards.search]["collection"])


def get_search_threshold(wildcards):
    return SEARCHES[wildcards.search]["threshold"]


def get_search_generation_dir(wildcards):
    """The generation folder of a search: a dataset run's (pretrained-<model>) or its own."""
    s = SEARCHES[wildcards.search]
    if dconf.search_prompt_source(s) != "dataset":
        return f"{R}/webscale/{wildcards.search}/generations"
    run = dconf.search_run(config, s).name
    return generation_dir(s["prompts"]["dataset"], run, s["prompts"]["preset"])


def get_search_shard_tars(wildcards):
    """Every shard tar of a search's collection, in shard order (the gallery reads the matched ones)."""
    s = SEARCHES[wildcards.search]
    return [shard_tar(s["collection"], i) for i in shard_names(s["collection"])]


def get_search_shard_stats(wildcards):
    """Every shard's stats of a search's collection, in shard order."""
    s = SEARCHES[wildcards.search]
    return [
        f"{WS}/{s['collection']}/shards/{i}_stats.json"
        for i in shard_names(s["collection"])
    ]


def get_search_seed(wildcards):
    """The bootstrap's seed: the study seed, derived per search."""
    return dconf.derive_seed(config["seed"], "webscale", wildcards.search)


def get_search_shard_inputs(wildcards):
    s = SEARCHES[wildcards.search]
    shard = f"{WS}/{s['collection']}/embeddings/{s['embedder']}/{wildcards.shard}"
    return {
        "generations": _search_generations(s),
        "shard": f"{shard}.npz",
        "meta": f"{shard}.parquet",
    }


def get_embed_shard_inputs(wildcards):
    return {
        "tar": shard_tar(wildcards.collection, wildcards.shard),
        "stats": f"{WS}/{wildcards.collection}/shards/{wildcards.shard}_stats.json",
        **get_embedder_model(wildcards),
    }


def get_merge_inputs(wildcards):
    """Every shard's search result and download stats of a search (the merge checks they are complete)."""
    s = SEARCHES[wildcards.search]
    shards = shard_names(s["collection"])
    return {
        "generations": _search_generations(s),
        "results": [
            f"{R}/webscale/{wildcards.search}/shards/{i}.parquet" for i in shards
        ],
        "stats": [f"{WS}/{s['collection']}/shards/{i}_stats.json" for i in shards],
        # prompts from the collection: each generation's own caption row (own-image matches)
        **(
            {"generation_dir": f"{R}/webscale/{wildcards.search}/generations"}
            if dconf.search_prompt_source(s) == "collection"
            else {}
        ),
    }


def get_pretraining_model(wildcards):
    """The built model whose pretraining pictures are a collection's web (the mini lane)."""
    return model_files(COLLECTIONS[wildcards.collection]["pretraining_of"])


def get_web_dataset(wildcards):
    """The prepared dataset whose pictures are a collection's web (the rehearsal lane)."""
    return dataset_files(COLLECTIONS[wildcards.collection]["dataset_of"])


def get_web_rows(wildcards):
    return COLLECTIONS[wildcards.collection]["n_rows"]


def get_web_url(wildcards):
    return COLLECTIONS[wildcards.collection].get("web_url")


def get_approx_inputs(wildcards):
    """A search's generations, every shard's descriptors and metadata (the approximate index's) and
    download stats (what its missing-shard messages say to do)."""
    s = SEARCHES[wildcards.search]
    shard = f"{WS}/{s['collection']}/embeddings/{s['embedder']}"
    names = shard_names(s["collection"])
    return {
        "generations": _search_generations(s),
        "npz": [f"{shard}/{i}.npz" for i in names],
        "meta": [f"{shard}/{i}.parquet" for i in names],
        "stats": [f"{WS}/{s['collection']}/shards/{i}_stats.json" for i in names],
    }


def get_approx_params(wildcards):
    """The approximate index's settings (recall target, where its search starts and stops) and the
    collection's shard size."""
    s = SEARCHES[wildcards.search]
    return {**s["approx"], "shard_size": COLLECTIONS[s["collection"]]["shard_size"]}


def get_search_allow_missing(wildcards):
    return SEARCHES[wildcards.search]["allow_missing_shards"]


def approx_outputs():
    """The approximate index's results of the searches that configure one."""
    return [
        f"{R}/webscale/{name}/approx_{f}"
        for name, s in SEARCHES.items()
        if s.get("approx")
        for f in ("matches.parquet", "recall.json")
    ]


def approx_recalls():
    """The approximate index's recall summaries (a column group of the web-scale table)."""
    return [
        f"{R}/webscale/{name}/approx_recall.json"
        for name, s in SEARCHES.items()
        if s.get("approx")
    ]


def webscale_summaries():
    return [f"{R}/webscale/{name}/summary.json" for name in SEARCHES]


def webscale_outputs():
    """The web-scale table (one row per search), when any search is configured."""
    figures = [
        f"{R}/figures/webscale/{name}/{fig}.png"
        for name in SEARCHES
        for fig in ("gallery", "top1_histogram")
    ]
    return [f"{R}/tables/webscale.csv", *figures, *approx_outputs()] if SEARCHES else []


# ---------------------------------------------------------------- memorization (rules/memorization.smk)

MEMORIZATION = config["memorization"]
PROMPT_FILES = MEMORIZATION["prompt_files"]
BENCHMARKS = MEMORIZATION["benchmarks"]


wildcard_constraints:
    bench=_alternatives(BENCHMARKS),
    prompt_file=_alternatives(PROMPT_FILES),


def prompt_table(name):
    return f"resources/prompts/{name}.parquet"


def bench_presets(bench):
    return BENCHMARKS[bench].get("presets", ["default"])


def get_prompt_file_inputs(wildcards):
    """A prompt file shipped by a built model depends on that model's verified manifest; one made of a
    dataset's rows on the prepared dataset."""
    src = PROMPT_FILES[wildcards.prompt_file]["source"]
    if src["type"] == "dataset":
        return dataset_files(src["dataset"])
    return model_files(src["model"]) if src["type"] == "model" else {}


def get_prompt_file_params(wildcards):
    entry = PROMPT_FILES[wildcards.prompt_file]
    src = dict(entry["source"])
    if src["type"] == "model":
        src["file"] = f"{model_dir(src['model'])}/{src['path']}"
    if src["type"] == "dataset":
        files = dataset_files(src["dataset"])
        src.update(metadata=files["metadata"], images=files["images"])
    return {
        "source": src,
        "columns": entry.get("columns", {}),
        "label_map": entry.get("label_map", {}),
        "sep": entry.get("sep"),
        "default_label": entry.get("default_label"),
        "fetch_images": entry.get("fetch_images", False),
    }


def get_bench_inputs(wildcards):
    bench = BENCHMARKS[wildcards.bench]
    return {
        **model_files(bench["model"]),
        "prompts": [prompt_table(p) for p in bench["prompt_files"]],
    }


def get_detection_params(wildcards):
    bench = BENCHMARKS[wildcards.bench]
    return {
        **MEMORIZATION["detection"],
        "resolution": memorization_resolution(wildcards.bench),
        "seed": dconf.derive_seed(MEMORIZATION["seed"], "detection", wildcards.bench),
        "model": bench["model"],
    }


def memorization_resolution(bench):
    entry = BENCHMARKS[bench]
    if entry.get("resolution"):
        return entry["resolution"]
    return dconf.generation_resolution(config, dconf.Run(model=entry["model"]))


def get_bench_generation_params(wildcards):
    return {
        **MEMORIZATION["replication"],
        "resolution": memorization_resolution(wildcards.bench),
        "seed": dconf.derive_seed(MEMORIZATION["seed"], "generation", wildcards.bench),
    }


def memorization_embedder():
    name = MEMORIZATION["replication"]["embedder"] or next(iter(EMBEDDERS))
    return name


def get_replication_inputs(wildcards):
    emb = EMBEDDERS[memorization_embedder()]
    return {
        "generations": f"{R}/memorization/{wildcards.bench}/generations/{wildcards.gen}/memorized",
        **(model_files(emb["model"]) if emb["type"] == "sscd" else {}),
    }


def get_replication_params(wildcards):
    return {
        "embedder": EMBEDDERS[memorization_embedder()],
        "embedder_name": memorization_embedder(),
        "thresholds": MEMORIZATION["replication"]["thresholds"],
        "mitigation": PRESETS[wildcards.gen].get("mitigation", "none"),
    }


def get_quality_inputs(wildcards):
    inputs = {
        "generations": f"{R}/memorization/{wildcards.bench}/generations/{wildcards.gen}/general"
    }
    ds = BENCHMARKS[wildcards.bench].get("fid_dataset")
    if ds and config["fid"]["enabled"]:
        inputs["reference"] = f"{R}/{ds}/fid/reference.npz"
        inputs.update(get_fid_model(wildcards))
    if config["clipscore"]["enabled"]:
        clip = model_files(config["clipscore"]["model"])
        inputs.update(clip=clip["dir"], clip_manifest=clip["manifest"])
    return inputs


def get_memorization_table_inputs(wildcards):
    return {
        "sets": [f"{R}/memorization/{b}/detection_sets.csv" for b in BENCHMARKS],
        "replication": [
            f"{R}/memorization/{b}/replication/{g}.json"
            for b in BENCHMARKS
            for g in bench_presets(b)
        ],
        "quality": [
            f"{R}/memorization/{b}/quality/{g}.json"
            for b in BENCHMARKS
            for g in bench_presets(b)
        ],
        "per_prompt": [
            f"{R}/memorization/{b}/replication/{g}.parquet"
            for b in BENCHMARKS
            for g in bench_presets(b)
        ],
    }


def get_memorization_table_params(wildcards):
    return {
        "runs": [(b, g) for b in BENCHMARKS for g in bench_presets(b)],
        "study": STUDY,
    }


def memorization_outputs(in_all=True):
    """The memorization tables and figures of the configured benchmarks: in the default target
    only when `memorization.enabled`, always for the `memorization` target."""
    if not BENCHMARKS or (in_all and not MEMORIZATION["enabled"]):
        return []
    return [
        f"{R}/tables/memorization_detection.csv",
        f"{R}/tables/memorization_mitigations.csv",
        f"{R}/tables/memorization_prompts.csv",
        f"{R}/figures/memorization/roc.png",
        f"{R}/figures/memorization/tradeoff.png",
    ]


def get_quality_resolution(wildcards):
    return memorization_resolution(wildcards.bench)
