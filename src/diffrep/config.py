"""The study configuration beyond what JSON schema can say.

`schemas/config.schema.yaml` checks keys, types and names and fills defaults; this module checks
what crosses keys (a preset a block names must exist, a train-time mitigation needs instance
captions, ...), expands the experiment blocks into the run matrix, and names runs.

A run is ``base`` (the model before finetuning), ``pretrained-{model}`` (another diffusers models
entry, generated without finetuning) or ``{duplication}.{conditioning}.{mitigation}``, e.g.
``dup_both.instancelevel_blip.none``. Setting names contain no dots, so a run name parses back.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

from diffrep.families import (
    FAMILIES,
    FINETUNABLE,
    FLOW_SCHEDULERS,
    UNET_SCHEDULERS,
    model_defaults,
    preset_problems,
)

# The study's setting names, defined here once: the package, the rules (wildcard constraints) and the
# training CLI import them; schemas/config.schema.yaml repeats them as enums (tests/test_config.py
# checks that the two agree).
DUPLICATIONS = ("nodup", "dup_both", "dup_image")
CONDITIONINGS = ("nolevel", "classlevel", "instancelevel_blip", "instancelevel_random")
# memthreshold: Wen et al.'s train-time mitigation (diffrep.memorization.threshold_mask)
TRAIN_MITIGATIONS = ("none", "allcaps", "randrepl", "randwordadd", "wordrepeat", "gaussnoise", "memthreshold")
INFERENCE_MITIGATIONS = (
    "none",
    "gaussnoise",
    "rand_numb_add",
    "rand_word_add",
    "rand_word_repeat",
    # memorisation mitigations published after DCR (diffrep.memmitigation)
    "prompt_optimization",
    "guidance_transition",
    "attention_rescale",
)
SCHEDULERS = (*UNET_SCHEDULERS, *FLOW_SCHEDULERS)
SINGLE_CAPTION_CONDITIONINGS = ("nolevel", "classlevel")
BASE_RUN = "base"
PRETRAINED_PREFIX = "pretrained-"  # run "pretrained-<model>": a models entry generating without finetuning

PRESET_DEFAULTS = {
    "mitigation": "none",
    "lam": 0.1,
    "repeats": 4,
    "scheduler": "default",
    "guidance_scale": 7.5,
    "steps": 50,
    "negative_prompt": "",
}

# The summary figures (diffrep.figures draws them; rules/common.smk makes one job each; the schema's
# figures.per_figure names them): defined here, where the Snakefile can import it without plotting libraries.
SUMMARY_FIGURES = (
    "sim95_by_dup_cond",
    "mitigation_tradeoff",
    "similarity_distributions",
    "duplicated_vs_not",
    "replication_by_dataset_size",
)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the allowed values."""


@dataclass(frozen=True, order=True)
class Run:
    """One model of the study: the base model, or a finetune setting."""

    duplication: str | None = None
    conditioning: str | None = None
    mitigation: str | None = None
    model: str | None = None  # a pretrained run's model (a models entry), generated without finetuning

    @property
    def is_base(self) -> bool:
        return self.duplication is None and self.model is None

    @property
    def is_pretrained(self) -> bool:
        return self.model is not None

    @property
    def name(self) -> str:
        if self.is_pretrained:
            return f"{PRETRAINED_PREFIX}{self.model}"
        if self.is_base:
            return BASE_RUN
        return f"{self.duplication}.{self.conditioning}.{self.mitigation}"

    @classmethod
    def parse(cls, name: str) -> Run:
        """Parse ``base``, ``pretrained-<model>`` or ``dup.cond.mitigation``; raise ConfigError naming the bad part."""
        if name == BASE_RUN:
            return cls()
        if name.startswith(PRETRAINED_PREFIX) and "." not in name and len(name) > len(PRETRAINED_PREFIX):
            return cls(model=name[len(PRETRAINED_PREFIX) :])
        parts = name.split(".")
        if len(parts) != 3:
            raise ConfigError(
                f"run {name!r}: expected 'base' or '<duplication>.<conditioning>.<mitigation>' (or 'pretrained-<model>')"
            )
        for value, allowed, what in zip(
            parts,
            (DUPLICATIONS, CONDITIONINGS, TRAIN_MITIGATIONS),
            ("duplication", "conditioning", "train mitigation"),
        ):
            if value not in allowed:
                raise ConfigError(f"run {name!r}: unknown {what} {value!r}; allowed: {', '.join(allowed)}")
        return cls(*parts)

    def __str__(self) -> str:
        return self.name


def canonical(obj):
    """A copy of `obj` with every mapping's keys sorted (lists keep their order).

    Snakemake compares a rule's params as text, so key order would otherwise count as a change.
    """
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    return obj


def _schema_errors(error):
    """A jsonschema ValidationError and, depth first, the errors of its anyOf / oneOf branches."""
    if error is None or not hasattr(error, "validator"):
        return
    yield error
    for sub in getattr(error, "context", None) or ():
        yield from _schema_errors(sub)


def _typed_text(err) -> bool:
    """Whether a schema error is a type error on the text of the number or boolean the schema asks for."""
    if err.validator != "type" or not isinstance(err.instance, str):
        return False
    value, types = err.instance, err.validator_value
    types = {types} if isinstance(types, str) else set(types)
    if types & {"integer", "number"}:
        try:
            float(value)
            return True
        except ValueError:
            pass
    return "boolean" in types and value.strip().lower() in ("true", "false")


def string_value_hint(error) -> str | None:
    """What to do about a schema error on a number or boolean given as a string, which is what
    ``snakemake --config`` makes of every value nested inside a mapping; None for any other error.

    `error` is the jsonschema ValidationError that ``snakemake.utils.validate`` raised from.
    """
    for err in _schema_errors(error):
        if _typed_text(err):
            key = ".".join(str(p) for p in err.absolute_path)
            return (
                f"{key}: {err.instance!r} is a string, where the schema asks for {err.validator_value}. "
                "`snakemake --config` passes every value nested inside a mapping as a string "
                "(--config training='{max_train_steps: 10}' gives '10'). To override a nested key, write "
                "it in a config file of your own, which is merged into the study's: --configfile "
                "profiles/mini/study.yaml my-overrides.yaml (a profile's study file first), or "
                "--configfile my-overrides.yaml for config.yaml (README, Configuration). In a config "
                "file, write numbers without quotes."
            )
    return None


def derive_seed(seed: int, *keys: object) -> int:
    """A stable 31-bit seed from a master seed and any keys (wildcards, names)."""
    text = "\x1f".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _allowed(values) -> str:
    return ", ".join(sorted(values)) or "(none defined)"


def _require_model(config: dict, name: str, kind: str, key: str) -> None:
    models = config["models"]
    if name not in models:
        raise ConfigError(f"{key}: model {name!r} is not defined in models; defined: {_allowed(models)}")
    if models[name]["kind"] != kind:
        raise ConfigError(f"{key}: model {name!r} has kind {models[name]['kind']!r}, expected {kind!r}")


def check_combination(
    dataset: str, ds: dict, duplication: str, conditioning: str, mitigation: str, where: str
) -> None:
    """Reject a finetune setting that upstream cannot run, saying why."""
    if conditioning == "classlevel" and not ds.get("has_classes", False):
        raise ConfigError(
            f"{where}: conditioning 'classlevel' needs class labels, but dataset {dataset!r} has "
            "has_classes: false (use an imagefolder dataset such as Imagenette, or drop classlevel)"
        )
    if mitigation != "none" and conditioning != "instancelevel_blip":
        raise ConfigError(
            f"{where}: train_mitigation {mitigation!r} with conditioning {conditioning!r}: upstream "
            "applies train-time mitigations to instancelevel_blip captions only; allowed with "
            f"{conditioning!r}: none"
        )
    if duplication == "dup_image" and conditioning in SINGLE_CAPTION_CONDITIONINGS:
        raise ConfigError(
            f"{where}: duplication 'dup_image' with conditioning {conditioning!r}: every image has one "
            "caption, so dup_image equals dup_both; use dup_both"
        )


SEEDED_SECTIONS = ("duplication", "training", "generation", "memorization")


# The CLIP model each CLIP-score convention uses unless clipscore.model names another: torchmetrics'
# CLIPScore defaults to OpenAI ViT-L/14, DCR's gen_clipscore uses OpenAI ViT-B/16.
CLIP_MODEL_BY_CONVENTION = {"torchmetrics": "clip", "upstream": "clip_vit_b16"}


def fill_defaults(config: dict) -> dict:
    """The defaults that depend on other keys (in place; returned), after the schema's own.

    Sections that set no seed of their own take the master ``seed``; ``clipscore.model`` defaults to
    the model of ``clipscore.convention`` (:data:`CLIP_MODEL_BY_CONVENTION`).
    """
    for section in SEEDED_SECTIONS:
        part = config.setdefault(section, {})
        if part.get("seed") is None:
            part["seed"] = config.get("seed", 0)
    clip = config.setdefault("clipscore", {})
    if clip.get("model") is None:
        clip["model"] = CLIP_MODEL_BY_CONVENTION[clip.get("convention", "torchmetrics")]
    return config


def check(config: dict) -> None:
    """Cross-key checks after schema validation (which has filled the defaults)."""
    models = config["models"]
    datasets = config["datasets"]
    _require_model(config, config["base_model"], "diffusers", "base_model")
    presets = config["generation"]["presets"]
    for name in presets:
        if "-" in name and name.split("-")[0] in config.get("sweeps", {}):
            raise ConfigError(
                f"generation.presets.{name}: names '<sweep>-...' are reserved for the expanded sweep presets"
            )
    for i, block in enumerate(config["experiments"]):
        where = f"experiments[{i}] ({block['name']})"
        for ds in block["datasets"]:
            if ds not in datasets:
                raise ConfigError(
                    f"{where}: dataset {ds!r} is not defined in datasets; defined: {_allowed(datasets)}"
                )
        for gen in block["generation"]:
            if gen not in presets:
                raise ConfigError(
                    f"{where}: generation preset {gen!r} is not defined in generation.presets; defined: {_allowed(presets)}"
                )
        check_block_runs(config, block, where)
        for ds, dup, cond, mit in itertools.product(
            block["datasets"], block["duplication"], block["conditioning"], block["train_mitigation"]
        ):
            check_combination(ds, datasets[ds], dup, cond, mit, where)
    names = [b["name"] for b in config["experiments"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"experiments: block names must be unique; repeated: {', '.join(dupes)}")
    for name, emb in config["embedders"].items():
        if emb["type"] == "sscd":
            if "model" not in emb:
                raise ConfigError(
                    f"embedders.{name}: type 'sscd' needs a model (a models entry of kind sscd)"
                )
            _require_model(config, emb["model"], "sscd", f"embedders.{name}.model")
    if config["fid"]["enabled"]:
        _require_model(config, config["fid"]["model"], "fid_inception", "fid.model")
    if config["clipscore"]["enabled"]:
        _require_model(config, config["clipscore"]["model"], "clip", "clipscore.model")
    check_caption_models(config)
    matrix = {(ds, r.name) for ds, r in runs({**config, "sweeps": {}})}
    for name, sweep in config.get("sweeps", {}).items():
        where = f"sweeps.{name}"
        if sweep["dataset"] not in datasets:
            raise ConfigError(
                f"{where}: dataset {sweep['dataset']!r} is not defined; defined: {_allowed(datasets)}"
            )
        for run in sweep["runs"]:
            if Run.parse(run).is_pretrained:
                _require_model(config, Run.parse(run).model, "diffusers", f"{where}.runs ({run})")
            elif run != BASE_RUN and (sweep["dataset"], run) not in matrix:
                raise ConfigError(
                    f"{where}: run {run!r} is not in the experiments matrix for dataset {sweep['dataset']!r}"
                )
        for sched in sweep["scheduler"]:
            if sched not in SCHEDULERS:
                raise ConfigError(
                    f"{where}.scheduler: unknown scheduler {sched!r}; allowed: {', '.join(SCHEDULERS)}"
                )
    for name, model in models.items():
        for j, src in enumerate(model["sources"]):
            need = {"modelscope": "repo", "huggingface": "repo", "url": "url", "build": "builder"}[
                src["type"]
            ]
            if need not in src:
                raise ConfigError(f"models.{name}.sources[{j}]: source type {src['type']!r} needs '{need}'")
    check_families(config)
    for name, ds in datasets.items():
        src = ds["source"]
        need = {"folder": "path", "urls": "path", "build": "builder"}[src["type"]]
        if need not in src:
            raise ConfigError(f"datasets.{name}.source: type {src['type']!r} needs '{need}'")
    check_threshold(config)
    check_webscale(config)
    check_memorization(config)


def check_threshold(config: dict) -> None:
    """similarity.threshold: calibrated needs the calibration rule."""
    if config["similarity"]["threshold"] == "calibrated" and not config["calibration"]["enabled"]:
        raise ConfigError(
            "similarity.threshold: 'calibrated' takes the threshold from the calibration; "
            "set calibration.enabled: true"
        )


def check_caption_models(config: dict) -> None:
    """The captioners instancelevel_blip needs: BLIP where a dataset asks for BLIP captions, the
    instruction model (and an instruction with a {caption} slot) where one asks for LLM captions."""
    datasets = config["datasets"]
    if any(d["blip_captions"] for d in datasets.values()) and "instancelevel_blip" in _used_conditionings(
        config
    ):
        _require_model(config, config["captions"]["blip"]["model"], "blip", "captions.blip.model")
    if any(d.get("llm_captions") for d in datasets.values()) and "instancelevel_blip" in _used_conditionings(
        config
    ):
        _require_model(config, config["captions"]["llm"]["model"], "llm", "captions.llm.model")
        instruction = config["captions"]["llm"].get("instruction")
        if instruction is not None and "{caption}" not in instruction:
            raise ConfigError(
                "captions.llm.instruction: no {caption} placeholder; the caption would not be sent"
            )


def check_block_runs(config: dict, block: dict, where: str) -> None:
    """A block makes runs: finetunes (duplication and conditioning both given), the base run or
    pretrained models (diffusers models entries)."""
    if bool(block["duplication"]) != bool(block["conditioning"]):
        given, empty = (
            ("duplication", "conditioning") if block["duplication"] else ("conditioning", "duplication")
        )
        raise ConfigError(f"{where}: {given} is given but {empty} is empty; a finetune needs both")
    if not (block["duplication"] or block["include_base"] or block.get("pretrained")):
        raise ConfigError(
            f"{where}: the block makes no run; give duplication and conditioning, include_base: true "
            "or pretrained: [<model>, ...]"
        )
    for model in block.get("pretrained", []):
        _require_model(config, model, "diffusers", f"{where}.pretrained")


# the keys of webscale.searches[].prompts each source uses (besides preset)
SEARCH_PROMPT_KEYS = {
    "dataset": ("dataset",),
    "collection": ("n_images", "seed"),
    "prompt_file": ("prompt_file", "n_images", "seed"),
}


def check_webscale(config: dict) -> None:
    """Cross-key checks of the webscale searches: their model, collection, embedder, dataset, preset."""
    ws = config.get("webscale", {})
    collections = ws.get("collections", {})
    for name, coll in collections.items():
        if coll.get("dataset_of") is not None and coll["dataset_of"] not in config["datasets"]:
            raise ConfigError(
                f"webscale.collections.{name}.dataset_of: {coll['dataset_of']!r} is not defined; "
                f"defined: {_allowed(config['datasets'])}"
            )
    names = [s["name"] for s in ws.get("searches", [])]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"webscale.searches: names must be unique; repeated: {', '.join(dupes)}")
    for i, search in enumerate(ws.get("searches", [])):
        where = f"webscale.searches[{i}] ({search['name']})"
        _require_model(config, search["model"], "diffusers", f"{where}.model")
        prompts, source = search["prompts"], search_prompt_source(search)
        checks = [
            ("collection", search["collection"], collections),
            ("embedder", search["embedder"], config["embedders"]),
            ("prompts.preset", prompts["preset"], config["generation"]["presets"]),
        ]
        if source == "dataset":
            checks.append(("prompts.dataset", prompts["dataset"], config["datasets"]))
        if source == "prompt_file":
            files = config.get("memorization", {}).get("prompt_files", {})
            checks.append(("prompts.prompt_file", prompts["prompt_file"], files))
        for key, value, defined in checks:
            if value not in defined:
                raise ConfigError(f"{where}.{key}: {value!r} is not defined; defined: {_allowed(defined)}")
        unused = [k for k in ("dataset", "prompt_file", "n_images", "seed") if k in prompts]
        unused = [k for k in unused if k not in SEARCH_PROMPT_KEYS[source]]
        if unused:
            raise ConfigError(
                f"{where}.prompts: {', '.join(unused)} has no effect with source {source!r} (it uses "
                f"{', '.join(SEARCH_PROMPT_KEYS[source])} and preset)"
            )


def check_families(config: dict) -> None:
    """Model-family checks: every generated preset suits its model; only finetunable families finetune."""
    models, base = config["models"], config["base_model"]
    family = models[base].get("family", "sd")
    if finetunes(config) and family not in FINETUNABLE:
        raise ConfigError(
            f"base_model {base!r} has family {family!r}, which the trainer cannot finetune; finetunable "
            f"families: {', '.join(FINETUNABLE)} (the {'/'.join(FAMILIES)} families can all be generated from)"
        )
    all_presets = presets(config)
    for model, gen in sorted({(run_model(config, r), g) for _, r, g in generations(config)}):
        for problem in preset_problems(model, models[model], all_presets[gen]):
            raise ConfigError(f"generation preset {gen!r}: {problem}")


def _used_conditionings(config: dict) -> set[str]:
    return {c for b in config["experiments"] for c in b["conditioning"]}


def runs(config: dict) -> list[tuple[str, Run]]:
    """All (dataset, run) pairs of the matrix, base runs included where a block asks, sorted."""
    out = set()
    for block in config["experiments"]:
        for ds in block["datasets"]:
            if block["include_base"]:
                out.add((ds, Run()))
            out.update((ds, Run(model=m)) for m in block.get("pretrained", []))
            for dup, cond, mit in itertools.product(
                block["duplication"], block["conditioning"], block["train_mitigation"]
            ):
                out.add((ds, Run(dup, cond, mit)))
    for sweep in config.get("sweeps", {}).values():
        for run in sweep["runs"]:
            out.add((sweep["dataset"], Run.parse(run)))
    for search in config.get("webscale", {}).get("searches", []):  # the web-scale lane's generations
        if search_prompt_source(search) == "dataset":
            out.add((search["prompts"]["dataset"], search_run(config, search)))
    return sorted(out, key=lambda x: (x[0], not x[1].is_base, x[1].name))


def search_prompt_source(search: dict) -> str:
    """dataset (a dataset's run generates the search's images), collection or prompt_file (the search's
    own generate_search job, from its prompts table)."""
    return search["prompts"].get("source", "dataset")


def search_run(config: dict, search: dict) -> Run:
    """The run whose generations a web-scale search searches: ``pretrained-<model>``, or ``base``
    when the model is the base model (the same generations: the mini lane's mini_sd)."""
    if search["model"] == config["base_model"]:
        return Run()
    return Run.parse(PRETRAINED_PREFIX + search["model"])


def finetunes(config: dict) -> list[tuple[str, Run]]:
    """The (dataset, run) pairs that need a finetune job."""
    return [(ds, r) for ds, r in runs(config) if r.duplication is not None]


def run_model(config: dict, run: Run) -> str:
    """The models entry a run generates from: its own for a pretrained run, else the base model."""
    return run.model if run.is_pretrained else config["base_model"]


def generation_resolution(config: dict, run: Run) -> int:
    """Image size of a run's generations: generation.resolution if set; else a pretrained run's
    model's native size (models.<m>.defaults / its family's), else the training resolution."""
    if config["generation"].get("resolution"):
        return config["generation"]["resolution"]
    if run.is_pretrained:
        native = model_defaults(config["models"][run.model]).get("resolution")
        if native:
            return native
    return config["training"]["resolution"]


def _sweep_defaults(config: dict, sweep: dict) -> dict:
    """Sampling defaults of a sweep: its model's (models.<m>.defaults, family) when every run
    generates from one model, else PRESET_DEFAULTS."""
    models = {run_model(config, Run.parse(r)) for r in sweep["runs"]}
    if len(models) != 1:
        return {}
    found = model_defaults(config["models"][models.pop()])
    return {k: found[k] for k in ("steps", "guidance_scale")}


def sweep_presets(config: dict) -> dict[str, dict]:
    """Expand every sweep into presets named ``{sweep}-{index:02d}`` (cells in product order)."""
    out = {}
    for name, sweep in config.get("sweeps", {}).items():
        fallback = {**PRESET_DEFAULTS, **_sweep_defaults(config, sweep)}
        cells = itertools.product(
            sweep["scheduler"],
            sweep.get("guidance_scale") or [fallback["guidance_scale"]],
            sweep.get("steps") or [fallback["steps"]],
            sweep["negative_prompt"],
        )
        for i, (sched, cfg, steps, neg) in enumerate(cells):
            out[f"{name}-{i:02d}"] = {
                **PRESET_DEFAULTS,
                "scheduler": sched,
                "guidance_scale": cfg,
                "steps": steps,
                "negative_prompt": neg,
                "n_images": sweep["n_images"],
                "sweep": name,
            }
    return out


def presets(config: dict) -> dict[str, dict]:
    """Every generation preset by name, defaults filled, sweeps expanded."""
    out = {name: {**PRESET_DEFAULTS, **p} for name, p in config["generation"]["presets"].items()}
    out.update(sweep_presets(config))
    return out


def generations(config: dict) -> list[tuple[str, Run, str]]:
    """All (dataset, run, preset) triples that are generated, sorted."""
    out = set()
    for block in config["experiments"]:
        for ds in block["datasets"]:
            block_runs = [
                Run(*c)
                for c in itertools.product(
                    block["duplication"], block["conditioning"], block["train_mitigation"]
                )
            ]
            if block["include_base"]:
                block_runs.append(Run())
            block_runs += [Run(model=m) for m in block.get("pretrained", [])]
            for r, gen in itertools.product(block_runs, block["generation"]):
                out.add((ds, r, gen))
    for sweep_name, sweep in config.get("sweeps", {}).items():
        for gen in (g for g, p in sweep_presets(config).items() if p["sweep"] == sweep_name):
            for run in sweep["runs"]:
                out.add((sweep["dataset"], Run.parse(run), gen))
    return sorted(out, key=lambda x: (x[0], not x[1].is_base, x[1].name, x[2]))


def measured_generations(config: dict) -> list[tuple[str, Run, str]]:
    """Generations that get similarity / FID / CLIP score (sweep cells only feed image grids)."""
    sweeps = sweep_presets(config)
    return [g for g in generations(config) if g[2] not in sweeps]


MEMORIZATION_FAMILIES = ("sd", "sdxl")  # the UNet families (diffrep.memorization.SUPPORTED_FAMILIES)
PROMPT_SOURCE_NEEDS = {
    "url": ("url",),
    "model": ("model", "path"),
    "file": ("path",),
    "dataset": ("dataset", "rows"),
}


def check_memorization(config: dict) -> None:
    """Cross-key checks of the memorization benchmarks (models, families, prompt files, presets) and of
    the memthreshold train-time mitigation (it needs its threshold)."""
    if any("memthreshold" in b["train_mitigation"] for b in config["experiments"]) and (
        config.get("train_mitigations", {}).get("mem_threshold") is None
    ):
        raise ConfigError(
            "train_mitigation memthreshold needs train_mitigations.mem_threshold (the metric's threshold)"
        )
    mem = config.get("memorization", {})
    files = mem.get("prompt_files", {})
    for name, entry in files.items():
        src = entry["source"]
        for key in PROMPT_SOURCE_NEEDS[src["type"]]:
            if key not in src:
                raise ConfigError(
                    f"memorization.prompt_files.{name}.source: type {src['type']!r} needs '{key}'"
                )
        if src["type"] == "model":
            _require_model(
                config, src["model"], "diffusers", f"memorization.prompt_files.{name}.source.model"
            )
        if src["type"] == "dataset" and src["dataset"] not in config["datasets"]:
            raise ConfigError(
                f"memorization.prompt_files.{name}.source.dataset: {src['dataset']!r} is not defined; "
                f"defined: {_allowed(config['datasets'])}"
            )
    emb = mem.get("replication", {}).get("embedder")
    if emb is not None and emb not in config["embedders"]:
        raise ConfigError(
            f"memorization.replication.embedder: {emb!r} is not defined; defined: {_allowed(config['embedders'])}"
        )
    for name, bench in mem.get("benchmarks", {}).items():
        where = f"memorization.benchmarks.{name}"
        _require_model(config, bench["model"], "diffusers", f"{where}.model")
        family = config["models"][bench["model"]].get("family", "sd")
        if family not in MEMORIZATION_FAMILIES:
            raise ConfigError(
                f"{where}.model: model {bench['model']!r} is of family {family!r}; the detection metric "
                f"||eps(x_t,c) - eps(x_t,empty)|| is implemented for {', '.join(MEMORIZATION_FAMILIES)}"
            )
        for key, values, defined in (
            ("prompt_files", bench["prompt_files"], files),
            ("presets", bench.get("presets", ["default"]), config["generation"]["presets"]),
        ):
            for value in values:
                if value not in defined:
                    raise ConfigError(
                        f"{where}.{key}: {value!r} is not defined; defined: {_allowed(defined)}"
                    )
        ds = bench.get("fid_dataset")
        if ds is not None and ds not in config["datasets"]:
            raise ConfigError(
                f"{where}.fid_dataset: {ds!r} is not defined; defined: {_allowed(config['datasets'])}"
            )
