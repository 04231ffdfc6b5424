"""Builders: models and datasets that the workflow makes locally (the `build` source type).

A config names a builder (`{type: build, builder: mini_sd, options: {...}}`); this registry maps
the name to a function, imported lazily so that a dry run never imports torch.

Model builders are called as ``fn(out_dir: Path, seed: int, **options)`` and write a model folder
(docs/formats.md) into `out_dir`, an empty folder (:func:`diffrep.fetch.fetch_source` stages it).
The model's manifest hashes every file of it but hidden ones, so a builder
writes what it measured (losses, checks, durations, the platform fingerprint) to the hidden
``.build_report.json`` (:func:`diffrep.provenance.build_report`), never to a hashed file: the
manifest of a rebuild on the same machine must not change, whatever the thread count
(docs/reproducibility.md).

Dataset builders are called as ``fn(staging_dir: Path, seed: int, **options)`` and write a folder
in the laion layout with classes (images, captions.json, classes.json).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from diffrep.config import ConfigError

MODEL_BUILDERS = {
    "mini_sd": "diffrep.tinysd:build_mini_sd",
    "tiny_family": "diffrep.tinyfamilies:build_tiny_family_model",
    "tiny_llm": "diffrep.tinyllm:build_tiny_llm",
    "fid_inception_from_wheel": "diffrep.fid_weights:build_fid_inception_from_wheel",
    # full-size architectures with random weights (the rehearsal study, docs/rehearsal.md)
    "rehearsal_sd": "diffrep.rehearsal:build_rehearsal_sd",
    "rehearsal_sd3": "diffrep.rehearsal:build_rehearsal_sd3",
    "rehearsal_sscd": "diffrep.rehearsal:build_rehearsal_sscd",
    "rehearsal_clip": "diffrep.rehearsal:build_rehearsal_clip",
    "rehearsal_blip": "diffrep.rehearsal:build_rehearsal_blip",
}
DATASET_BUILDERS = {
    "mini_dataset": "diffrep.minidata:build_mini_dataset",
    "showcase_dataset": "diffrep.showcasedata:build_showcase_dataset",
    "rehearsal_dataset": "diffrep.rehearsaldata:build_rehearsal_dataset",
}


def _load(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def model_builder(name: str) -> Callable:
    if name not in MODEL_BUILDERS:
        raise ConfigError(f"unknown model builder {name!r}; known: {', '.join(sorted(MODEL_BUILDERS))}")
    return _load(MODEL_BUILDERS[name])


def dataset_builder(name: str) -> Callable:
    if name not in DATASET_BUILDERS:
        raise ConfigError(f"unknown dataset builder {name!r}; known: {', '.join(sorted(DATASET_BUILDERS))}")
    return _load(DATASET_BUILDERS[name])
