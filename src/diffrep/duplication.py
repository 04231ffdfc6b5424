"""Duplication plans (upstream datasets.py): which training images are duplicated, and how much.

Nothing is copied on disk. Upstream draws ``int(weight_pc * N)`` distinct images uniformly at random
and gives them sampling weight ``dup_weight`` (all others 1); a WeightedRandomSampler with
replacement then draws N samples per epoch, so a duplicated image is seen about `dup_weight` times
as often. The plan is a table (docs/formats.md): ``id``, ``duplicated``, ``weight``, in
``metadata.parquet`` order.

``nodup``: no image duplicated, all weights 1. ``dup_both`` and ``dup_image`` differ only in the
captions a duplicated image is shown with (decided at training time: under dup_image an image with
weight > 1 draws a random caption of its own, as upstream); their plans are identical (the
duplicated set depends on the seed and the ids only), so their metrics compare like with like.
Unlike upstream (``--dup_weight`` an integer), ``dup_weight`` may be any positive number. A
duplicating style whose ``int(weight_pc * N)`` is 0 is refused (:func:`check_duplicated_count`):
upstream would train it like nodup, with a sampler drawing with replacement.

The nodup plan records the duplicated set (``dup_set``: ``weight_pc`` and the seed decide it) and
weighs every image 1: ``dup_weight`` does not enter it, and the workflow does not pass it, so
editing ``dup_weight`` leaves the nodup plan and everything trained on it as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from diffrep.config import DUPLICATIONS

log = logging.getLogger(__name__)


def n_duplicated(n_images: int, weight_pc: float) -> int:
    """Upstream's ``int(weight_pc * N)``, float round-off included (0.29 * 100 is 28.999…, so 28)."""
    return int(weight_pc * n_images)


def check_duplicated_count(style: str, n_images: int, weight_pc: float) -> None:
    """Refuse a duplicating style (dup_both, dup_image) that would duplicate no image.

    With ``int(weight_pc * N)`` = 0 upstream gives every image weight 1 and still samples with
    replacement: a run named after duplication that duplicates nothing. nodup needs no set.
    """
    if style != "nodup" and n_duplicated(n_images, weight_pc) == 0:
        raise ValueError(
            f"duplication.weight_pc = {weight_pc} duplicates int({weight_pc} x {n_images}) = 0 of the "
            f"dataset's {n_images} images, so {style} would duplicate nothing: raise "
            f"duplication.weight_pc until weight_pc x {n_images} is at least 1, or train only nodup "
            "on this dataset"
        )


def make_plan(
    ids: Sequence[str], style: str, weight_pc: float = 0.05, dup_weight: float = 5, seed: int = 0
) -> pd.DataFrame:
    """The plan of one duplication style for the images `ids` (in metadata order).

    Returns a DataFrame with columns ``id`` (str), ``duplicated`` (bool), ``weight`` (float64),
    ``dup_set`` (bool). The duplicated set is ``numpy.random.default_rng(seed).choice(N,
    n_duplicated, replace=False)``: the same ids and seed always give the same plan. ``dup_set``
    marks that set in every style, nodup included (where nothing is duplicated), so that a nodup
    run's generations from those images are the control for the duplicated runs' (same images,
    same prompts, no duplication). nodup ignores `dup_weight` (its weights are all 1).
    """
    if style not in DUPLICATIONS:
        raise ValueError(f"duplication style {style!r}; allowed: {', '.join(DUPLICATIONS)}")
    if not 0 < weight_pc <= 1:
        raise ValueError(f"duplication.weight_pc = {weight_pc}: must be in (0, 1]")
    if style != "nodup" and dup_weight <= 0:
        raise ValueError(f"duplication.dup_weight = {dup_weight}: must be > 0")
    check_duplicated_count(style, len(ids), weight_pc)
    if style != "nodup" and dup_weight <= 1:
        log.warning(
            "duplication.dup_weight = %s: %s samples the duplicated images no more often than the others%s",
            dup_weight,
            style,
            " and gives them no random captions (as upstream)" if style == "dup_image" else "",
        )
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("duplication plan: image ids are not unique")
    n = len(ids)
    dup_set = np.zeros(n, dtype=bool)
    if n:
        chosen = np.random.default_rng(seed).choice(n, size=n_duplicated(n, weight_pc), replace=False)
        dup_set[chosen] = True
    duplicated = dup_set & (style != "nodup")
    weight = np.where(duplicated, float(dup_weight), 1.0)
    return pd.DataFrame({"id": ids, "duplicated": duplicated, "weight": weight, "dup_set": dup_set})


def in_dup_set(table: pd.DataFrame) -> pd.Series:
    """Whether each row's image is in the study's duplicated set (bool Series).

    Plans, prompt tables and match tables carry ``dup_set``; files written before it existed only
    ``duplicated``, which equals ``dup_set`` in the duplicated styles (nodup then has no set).
    """
    return table["dup_set" if "dup_set" in table else "duplicated"].astype(bool)


def write_plan(plan: pd.DataFrame, path) -> None:
    """Write a plan as parquet, atomically."""
    from diffrep.fileio import atomic_path

    with atomic_path(path, suffix=".parquet") as tmp:
        plan.to_parquet(tmp, index=False)
