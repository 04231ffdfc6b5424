"""The app's one door into the diffrep library: config, generation, embeddings, similarity.

Every call the app makes into the rest of ``diffrep`` goes through this module, so that renames
inside the library touch one file. Heavy imports (torch, diffusers, faiss) happen on first use, not
at import, so the app starts in about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffrep import config as dconf

# The Snakemake target that writes every finetuned model (rules/train.smk).
FINETUNE_TARGET = "finetune_all"
# The target that builds or fetches the models of resources/models/ (rules/models.smk).
MODELS_TARGET = "models"
BASE_RUN = dconf.BASE_RUN
SCHEMA = "schemas/config.schema.yaml"  # of the workflow folder the app runs in, else of this checkout


class AdapterError(RuntimeError):
    """A library call failed in a way the user can act on (the message says how)."""


def load_config(path: str | Path, schema: str | Path = SCHEMA) -> dict:
    """A study config with the schema's defaults filled, validated as the workflow does."""
    import yaml
    from snakemake.utils import validate

    schema = Path(schema)
    if not schema.is_file():
        schema = Path(__file__).resolve().parents[3] / SCHEMA
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: not a study config (a YAML mapping)")
    validate(config, schema=str(schema))
    dconf.fill_defaults(config)
    return config


def presets(config: dict) -> dict[str, dict]:
    """Every generation preset of the config by name, defaults filled (sweep cells included)."""
    return dconf.presets(config)


def parse_run(name: str) -> str:
    """The canonical run name; AdapterError naming the bad part otherwise."""
    try:
        return dconf.Run.parse(name).name
    except dconf.ConfigError as err:
        raise AdapterError(str(err)) from None


def device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``: the rule of the library's resolve_device (which is moving)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model_dir: Path, dev: str):
    """A diffusers pipeline of a model folder (safetensors only, local files only)."""
    from diffrep.generation import load_pipeline as _load
    from diffrep.generation import resolve_dtype

    return _load(str(model_dir), dev, resolve_dtype("auto", dev))


def token_count(pipe, prompt: str) -> tuple[int, int]:
    """(tokens of the prompt with start/end tokens, the text encoder's limit)."""
    ids = pipe.tokenizer(prompt, truncation=False)["input_ids"]
    return len(ids), int(pipe.tokenizer.model_max_length)


def generate_images(pipe, prompts: list[str], seeds: list[int], preset: dict, resolution: int, dev: str):
    """(PIL images, prompts as used) of prompts and their generator seeds under a preset, one batch.

    The preset's prompt mitigation is applied to prompt ``i`` with seed ``seeds[i]`` as the generate
    rule applies it; the scheduler is set from the pipeline's original one every call.
    """
    import pandas as pd

    from diffrep import generation

    used = [
        generation.mitigate_prompts(pd.DataFrame({"index": [0], "prompt": [p]}), preset, s, pipe.tokenizer)[0]
        for p, s in zip(prompts, seeds)
    ]
    original = getattr(pipe, "_diffrep_scheduler", None)
    if original is None:
        original = pipe._diffrep_scheduler = pipe.scheduler
    pipe.scheduler = original
    generation.set_scheduler(pipe, preset.get("scheduler", "default"))
    return generation.generate_batch(pipe, used, list(seeds), preset, resolution, dev), used


def clip_model(config: dict, resources: Path, dev: str):
    """(model, processor) of the study's CLIP model, or None where CLIP score is off or not fetched."""
    cfg = config.get("clipscore") or {}
    model_dir = resources / "models" / str(cfg.get("model", "clip"))
    if not cfg.get("enabled", True) or not (model_dir / "config.json").is_file():
        return None
    from diffrep.clipscore import load_clip

    return load_clip(model_dir, dev)


def clip_scores(clip, images: list, prompts: list[str], dev: str) -> list[float]:
    """CLIP score 100·max(cos, 0) of each image against its prompt (torchmetrics' definition)."""
    from diffrep.clipscore import cosines

    model, processor = clip
    return [100.0 * max(float(c), 0.0) for c in cosines(model, processor, images, prompts, device=dev)]


def make_embedder(cfg: dict, resources: Path):
    """The embedder of an ``embedders`` config entry (SSCD weights from resources/models/)."""
    from diffrep.embeddings import make_embedder as _make

    model_dir = resources / "models" / cfg["model"] if cfg.get("type") == "sscd" else None
    return _make(cfg, model_dir)


def embed(embedder, paths: list[Path]) -> np.ndarray:
    """L2-normalised descriptors (n × d float32) of image files."""
    return embedder.embed(paths, batch_size=8, device=None, num_workers=0)


def read_embeddings(path: Path) -> dict:
    """``{"ids", "embeddings", "embedder", "preprocess"}`` of an embedding npz (docs/formats.md)."""
    from diffrep.embeddings import read_embeddings as _read

    return _read(path)


def build_index(train: np.ndarray):
    """An exact inner-product faiss index over L2-normalised training descriptors."""
    from diffrep.similarity import build_index as _build

    return _build(train, "exact")


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k similarities and training rows per query (best first)."""
    from diffrep.similarity import search as _search

    return _search(index, queries, k)
