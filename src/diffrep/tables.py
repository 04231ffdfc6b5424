"""The study's tables: ``summary.csv``, ``weightdiff.csv`` and ``baselines.csv`` (docs/formats.md).

Every number of a table comes from a file of the workflow; the row says which setting produced it
(duplication, conditioning, train_mitigation, preset, inference mitigation, scheduler, guidance,
steps) and what it was measured with (embedder, preprocessing, number of generations, short
sha256 of the model and dataset manifests, study name). A metric that the config switched off is
written as ``skipped`` (never a silent zero or blank); a statistic that is undefined (an empty
duplicated split) is left empty, as the JSON's null.

No path is parsed: the similarity statistics and the train-vs-train baselines say which dataset,
embedder, run and preset they are; every other input (FID, CLIP score, weight differences,
manifests) comes with its id in the rule's ``params.ids``, in the same order as the inputs (as
rna-seq-star-deseq2's ``count_matrix`` gets its sample names). The layout of ``results/`` is written
once, in the rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep.config import BASE_RUN, PRESET_DEFAULTS, Run
from diffrep.fileio import atomic_path
from diffrep.provenance import platform_fingerprint, with_platform
from diffrep.similarity import (
    BASELINE_IDENTITY,
    MATCHES_IDENTITY,
    STAT_KEYS,
    SimilarityError,
    read_identified,
)

log = logging.getLogger(__name__)

SKIPPED = "skipped"
STATS = (*STAT_KEYS, "source_match_rate")
SPLITS = ("duplicated", "not_duplicated")
# The inputs of the tables rule that do not say what they are, and the fields of their ids in params.ids
# (manifests are named by their model or dataset name alone).
KEYED_INPUTS = ("fid", "clipscore", "weightdiff", "model_manifests", "dataset_manifests")
ID_FIELDS = {
    "fid": ("dataset", "run", "preset"),
    "clipscore": ("dataset", "run", "preset"),
    "weightdiff": ("dataset", "run"),
}


class TableError(ValueError):
    """Inputs of a table that do not fit together; the message names the file and key."""


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TableError(f"cannot read {path}: {err}") from None


def short_hash(path, length: int = 12) -> str:
    """The first ``length`` hex digits of the sha256 of a file (a manifest: it pins every file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


PRETRAINED = "pretrained"


def settings(run: str) -> dict:
    """``duplication``, ``conditioning``, ``train_mitigation`` of a run name (all three ``base`` for
    the base run, ``pretrained`` for a ``pretrained-<model>`` run)."""
    r = Run.parse(run)
    if r.is_base or r.is_pretrained:
        name = BASE_RUN if r.is_base else PRETRAINED
        return {"duplication": name, "conditioning": name, "train_mitigation": name}
    return {"duplication": r.duplication, "conditioning": r.conditioning, "train_mitigation": r.mitigation}


def preset_settings(preset: Mapping) -> dict:
    """The inference-time columns of a generation preset (defaults filled)."""
    p = {**PRESET_DEFAULTS, **(preset or {})}
    return {
        "inference_mitigation": p["mitigation"],
        "scheduler": p["scheduler"],
        "guidance_scale": float(p["guidance_scale"]),
        "steps": int(p["steps"]),
        "negative_prompt": p["negative_prompt"],
    }


def _identified(path, keys, rule: str) -> tuple[tuple, dict]:
    """``(identity, statistics)`` of a JSON that says what it is (diffrep.similarity.read_identified)."""
    try:
        return read_identified(path, keys, rule)
    except (OSError, ValueError, SimilarityError) as err:
        raise TableError(
            str(err) if isinstance(err, SimilarityError) else f"cannot read {path}: {err}"
        ) from None


def keyed(paths: Iterable, ids: Iterable, name: str) -> dict:
    """``{id: path}``: each input file ``name`` with its id from ``params.ids[name]`` (same order).

    An id is a name (manifests) or a mapping with the fields of :data:`ID_FIELDS` ``[name]``, which
    becomes the tuple of those fields (``(dataset, run, preset)`` for fid and clipscore).
    """
    paths, ids = list(paths), list(ids)
    if len(paths) != len(ids):
        raise TableError(
            f"input {name!r}: {len(paths)} file(s) but {len(ids)} id(s) in params.ids.{name}; "
            "the rule must name every input, in order"
        )
    fields = ID_FIELDS.get(name)
    out = {}
    for i, p in zip(ids, paths):
        if fields and not (isinstance(i, Mapping) and set(fields) <= set(i)):
            raise TableError(f"params.ids.{name}: {i!r} for {p} lacks one of {list(fields)}")
        out[tuple(i[k] for k in fields) if fields else i] = p
    return out


def _flat_stats(stats: dict, path) -> dict:
    out = {}
    for key in STATS:
        if key not in stats:
            raise TableError(f"{path}: key {key!r} missing (docs/formats.md, similarity statistics)")
        out[key] = stats[key]
    out["threshold"] = stats.get("threshold")
    for key in ("top1_in_dup_set", "dup_set_share"):  # optional: written since the duplicated-set control
        out[key] = stats.get(key)
    for split in SPLITS:
        part = stats.get(split) or {}
        for key in STATS:
            out[f"{split}_{key}"] = part.get(key)
    return out


def _manifest_hashes(models: Mapping, datasets: Mapping) -> tuple[dict, dict]:
    """Short hashes of model manifests (``{model: path}``) and dataset manifests (``{dataset: path}``)."""
    return {k: short_hash(p) for k, p in models.items()}, {k: short_hash(p) for k, p in datasets.items()}


def _setting_columns(run: str, gen: str, presets: Mapping, path) -> dict:
    """The training and inference settings of a row: :func:`settings` of the run, then
    :func:`preset_settings` of the preset (the defaults, with a warning, for an unknown preset)."""
    if gen not in presets:
        log.warning(
            "preset %r of %s not among the configured presets; its settings use the defaults", gen, path
        )
    return {**settings(run), **preset_settings(presets.get(gen, {}))}


def _similarity_columns(stats: dict, path, baseline: dict | None) -> dict:
    """The similarity statistics of a row (:func:`_flat_stats`) and its train-vs-train baseline."""
    return {
        "n_generations": stats.get("n"),
        **_flat_stats(stats, path),
        "train_baseline_p95": baseline.get("p95") if baseline else None,
        "train_baseline_mean": baseline.get("mean") if baseline else None,
    }


def _fid_columns(fids: Mapping, key: tuple, enabled: bool) -> dict:
    """FID of the generation set ``key`` = (dataset, run, preset); ``skipped`` when fid is off."""
    if not enabled:
        return dict(fid=SKIPPED, fid_n_generated=SKIPPED, fid_n_reference=SKIPPED, fid_convention=SKIPPED)
    f = fids.get(key)
    if f is None:
        ds, run, gen = key
        raise TableError(f"fid is enabled but no FID file for dataset {ds}, run {run}, preset {gen}")
    return dict(
        fid=f["fid"],
        fid_n_generated=f.get("n_generated"),
        fid_n_reference=f.get("n_reference"),
        fid_convention=f.get("convention", "pytorch-fid"),
    )


def _clipscore_columns(clips: Mapping, clip_bg: Mapping, key: tuple, enabled: bool) -> dict:
    """CLIP score of the generation set ``key`` = (dataset, run, preset) and its dataset's training-set
    baseline; ``skipped`` when clipscore is off."""
    if not enabled:
        return dict(
            clipscore=SKIPPED,
            clip_cosine_mean=SKIPPED,
            clip_model=SKIPPED,
            clipscore_convention=SKIPPED,
            clipscore_bg=SKIPPED,
        )
    ds, run, gen = key
    c = clips.get(key)
    if c is None:
        raise TableError(
            f"clipscore is enabled but no CLIP-score file for dataset {ds}, run {run}, preset {gen}"
        )
    return dict(
        clipscore=c["clipscore"],
        clip_cosine_mean=c.get("clip_cosine_mean"),
        clip_model=c.get("model"),
        clipscore_convention=c.get("convention"),
        clipscore_bg=clip_bg.get(ds, {}).get("clipscore"),
    )


def _provenance_columns(stats: dict, base_model: str, model_hash: Mapping, dataset_hash: str) -> dict:
    """What a row was measured with: preprocessing, index, top_k, training-set size, base model and the
    short hashes of its model and dataset manifests."""
    return dict(
        preprocess=stats.get("preprocess"),
        preprocess_detail=stats.get("preprocess_detail"),
        index=stats.get("index"),
        top_k=stats.get("top_k"),
        n_train=stats.get("n_train"),
        base_model=base_model,
        model_manifest_sha256=model_hash.get(base_model, ""),
        dataset_manifest_sha256=dataset_hash,
        # the numerics the numbers come from (the platform_id column is the tables job's own)
        model_platform_id=stats.get("model_platform_id"),
        generation_platform_id=stats.get("generation_platform_id"),
    )


def _row_model(run: str, base_model: str) -> str:
    """The models entry a row's generations come from: a pretrained run's own, else the base model
    (finetunes are made from it)."""
    r = Run.parse(run)
    return r.model if r.is_pretrained else base_model


def summary_table(
    similarity: Iterable,
    fid: Mapping | None = None,
    clipscore: Mapping | None = None,
    baselines: Iterable = (),
    manifests: Mapping | None = None,
    presets: Mapping | None = None,
    study: str = "",
    base_model: str = "",
    fid_enabled: bool = True,
    clipscore_enabled: bool = True,
    seed: int | None = None,
    clipscore_bg: Iterable = (),
) -> pd.DataFrame:
    """One row per dataset × run × preset × embedder (see the module docstring for the columns).

    ``similarity``/``baselines``: paths of the JSON files (they say what they are); ``fid``/``clipscore``:
    ``{(dataset, run, preset): JSON path}``; ``manifests``: ``{"models": {model: path}, "datasets":
    {dataset: path}}``; ``presets``: the generation presets by name (defaults filled); a disabled
    metric's columns say ``skipped``; an enabled one whose file is missing is an error naming the setting.
    ``clipscore_bg``: the CLIP-score training-set baselines (each JSON names its dataset).
    """
    presets = presets or {}
    fids = {k: _read_json(p) for k, p in (fid or {}).items()}
    clips = {k: _read_json(p) for k, p in (clipscore or {}).items()}
    clip_bg = {c["dataset"]: c for c in map(_read_json, clipscore_bg)}
    base_lines = dict(_identified(p, BASELINE_IDENTITY, "train_baseline") for p in baselines)
    manifests = manifests or {}
    model_hash, data_hash = _manifest_hashes(manifests.get("models", {}), manifests.get("datasets", {}))
    rows = []
    for path in similarity:
        (ds, emb, run, gen), stats = _identified(path, MATCHES_IDENTITY, "retrieve")
        rows.append(
            {
                "study": study,
                "seed": seed,
                "dataset": ds,
                "run": run,
                "preset": gen,
                "embedder": emb,
                **_setting_columns(run, gen, presets, path),
                **_similarity_columns(stats, path, base_lines.get((ds, emb))),
                **_fid_columns(fids, (ds, run, gen), fid_enabled),
                **_clipscore_columns(clips, clip_bg, (ds, run, gen), clipscore_enabled),
                **_provenance_columns(stats, _row_model(run, base_model), model_hash, data_hash.get(ds, "")),
            }
        )
    if not rows:
        raise TableError("no similarity statistics given: the study measured nothing")
    df = pd.DataFrame(rows)
    return df.sort_values(["dataset", "embedder", "run", "preset"], kind="stable").reset_index(drop=True)


def baselines_table(baselines: Iterable, study: str = "") -> pd.DataFrame:
    """One row per dataset × embedder: the train-vs-train baseline statistics (top-2, self excluded)."""
    rows = []
    for p in baselines:
        (ds, emb), s = _identified(p, BASELINE_IDENTITY, "train_baseline")
        rows.append(
            {
                "study": study,
                "dataset": ds,
                "embedder": emb,
                **{k: s.get(k) for k in ("n", "mean", "std", "p75", "p90", "p95", "frac_above", "threshold")},
                "preprocess": s.get("preprocess"),
                "n_train": s.get("n_train"),
            }
        )
    cols = [
        "study",
        "dataset",
        "embedder",
        "n",
        "mean",
        "std",
        "p75",
        "p90",
        "p95",
        "frac_above",
        "threshold",
        "preprocess",
        "n_train",
    ]
    return pd.DataFrame(rows, columns=cols)


WEIGHTDIFF_COLUMNS = [
    "study",
    "dataset",
    "run",
    "duplication",
    "conditioning",
    "train_mitigation",
    "component",
    "block",
    "n_tensors",
    "numel",
    "l1",
    "l2",
    "rel_l2_mean",
    "cosine_mean",
    "cosine_min",
    "n_not_compared",
]


def weightdiff_table(tables: Mapping, study: str = "") -> pd.DataFrame:
    """Per dataset × run × component × block: tensors compared, Σ numel, Σ l1, l2 = √Σ l2² (the
    L2 norm of the block's whole difference), mean relative L2, mean and min cosine, and
    ``n_not_compared`` (shape mismatches and tensors in one model only). ``tables``: ``{(dataset,
    run): path of the run's weightdiff parquet}``."""
    frames = []
    for (ds, run), p in tables.items():
        df = pd.read_parquet(p)
        missing = {"component", "block", "l1", "l2", "cosine", "numel"} - set(df.columns)
        if missing:
            raise TableError(f"{p}: columns {sorted(missing)} missing (docs/formats.md, weightdiff)")
        ok = df["l2"].notna()
        for (comp, blk), g in df.groupby(["component", "block"], sort=True):
            gok = g[ok.loc[g.index]]
            rel = gok["rel_l2"] if "rel_l2" in gok else pd.Series(dtype=float)
            frames.append(
                {
                    "study": study,
                    "dataset": ds,
                    "run": run,
                    **settings(run),
                    "component": comp,
                    "block": blk,
                    "n_tensors": int(len(gok)),
                    "numel": int(gok["numel"].sum()),
                    "l1": float(gok["l1"].sum()),
                    "l2": float(np.sqrt((gok["l2"].astype(float) ** 2).sum())),
                    "rel_l2_mean": float(rel.mean()) if rel.notna().any() else None,
                    "cosine_mean": float(gok["cosine"].mean()) if gok["cosine"].notna().any() else None,
                    "cosine_min": float(gok["cosine"].min()) if gok["cosine"].notna().any() else None,
                    "n_not_compared": int(len(g) - len(gok)),
                }
            )
    return pd.DataFrame(frames, columns=WEIGHTDIFF_COLUMNS)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def write_tables(inputs, outputs, params) -> dict[str, pd.DataFrame]:
    """The tables rule: ``inputs`` with similarity, baselines and the :data:`KEYED_INPUTS` (lists of
    paths); ``outputs`` with summary, weightdiff, baselines; ``params`` with study, seed, presets,
    base_model, fid (enabled), clipscore (enabled) and ``ids``: for each keyed input, the id of each
    file in order (``{dataset, run, preset}`` for fid and clipscore, ``{dataset, run}`` for weightdiff,
    the model or dataset name for manifests)."""
    study = params["study"]
    ids = params.get("ids", {})
    k = {name: keyed(inputs.get(name, []), ids.get(name, []), name) for name in KEYED_INPUTS}
    summary = summary_table(
        inputs["similarity"],
        k["fid"],
        k["clipscore"],
        inputs["baselines"],
        {"models": k["model_manifests"], "datasets": k["dataset_manifests"]},
        params.get("presets", {}),
        study,
        params.get("base_model", ""),
        bool(params.get("fid", True)),
        bool(params.get("clipscore", True)),
        params.get("seed"),
        clipscore_bg=inputs.get("clipscore_bg", []),
    )
    tables = {
        "summary": summary,
        "weightdiff": weightdiff_table(k["weightdiff"], study),
        "baselines": baselines_table(inputs["baselines"], study),
    }
    tables = with_platform(tables, log, platform_fingerprint(params.get("numerics")))
    for name, df in tables.items():
        write_csv(df, outputs[name])
        log.info("%s: %d rows -> %s", name, len(df), outputs[name])
    return tables
