"""The study's tables: ``summary.csv``, ``weightdiff.csv`` and ``baselines.csv`` (docs/formats.md).

Every number of a table comes from a file of the workflow; the row says which setting produced it
(duplication, conditioning, train_mitigation, preset, inference mitigation, scheduler, guidance,
steps) and what it was measured with (embedder, preprocessing, number of generations, short
sha256 of the model and dataset manifests, study name). A metric that the config switched off is
written as ``skipped`` (never a silent zero or blank); a statistic that is undefined (an empty
duplicated split) is left empty, as the JSON's null.

Paths are parsed back into their wildcards: ``…/{dataset}/similarity/{embedder}/{run}/{gen}.json``,
``…/{dataset}/fid/{run}/{gen}.json``, ``…/{dataset}/clipscore/{run}/{gen}.json``,
``…/{dataset}/similarity/{embedder}/train_baseline.json``, ``…/{dataset}/weightdiff/{run}.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from diffrep.config import BASE_RUN, PRESET_DEFAULTS, Run
from diffrep.fileio import atomic_path
from diffrep.provenance import with_platform

log = logging.getLogger(__name__)

SKIPPED = "skipped"
STATS = ("n", "mean", "std", "p75", "p90", "p95", "frac_above", "source_match_rate")
SPLITS = ("duplicated", "not_duplicated")
SETTING_COLUMNS = [
    "study", "seed", "dataset", "run", "preset", "embedder", "duplication", "conditioning", "train_mitigation",
    "inference_mitigation", "scheduler", "guidance_scale", "steps", "negative_prompt",
]


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


def settings(run: str) -> dict:
    """``duplication``, ``conditioning``, ``train_mitigation`` of a run name (``base`` for the base)."""
    r = Run.parse(run)
    if r.is_base:
        return {"duplication": BASE_RUN, "conditioning": BASE_RUN, "train_mitigation": BASE_RUN}
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


def _tail(path, n: int) -> list[str]:
    parts = Path(path).parts
    if len(parts) < n:
        raise TableError(f"{path}: expected at least {n} path components")
    return list(parts[-n:])


def parse_similarity_path(path) -> tuple[str, str, str, str]:
    """``(dataset, embedder, run, gen)`` of ``…/{dataset}/similarity/{embedder}/{run}/{gen}.json``."""
    ds, kind, emb, run, name = _tail(path, 5)
    if kind != "similarity":
        raise TableError(f"{path}: not a similarity statistics file (…/{{dataset}}/similarity/…)")
    return ds, emb, run, Path(name).stem


def parse_run_gen_path(path, kind: str) -> tuple[str, str, str]:
    """``(dataset, run, gen)`` of ``…/{dataset}/{kind}/{run}/{gen}.json`` (kind: fid, clipscore)."""
    ds, k, run, name = _tail(path, 4)
    if k != kind:
        raise TableError(f"{path}: not a {kind} file (…/{{dataset}}/{kind}/{{run}}/{{gen}}.json)")
    return ds, run, Path(name).stem


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


def _by_key(paths: Iterable, kind: str) -> dict[tuple[str, str, str], dict]:
    out = {}
    for p in paths:
        out[parse_run_gen_path(p, kind)] = _read_json(p)
    return out


def _manifest_hashes(manifests: Iterable) -> tuple[dict, dict]:
    """Short hashes of model manifests (``resources/models/{model}.sha256``) and dataset manifests
    (``resources/data/{dataset}/images.sha256``), by name."""
    models, datasets = {}, {}
    for m in manifests:
        p = Path(m)
        if p.name == "images.sha256":
            datasets[p.parent.name] = short_hash(p)
        else:
            models[p.name[: -len(".sha256")] if p.name.endswith(".sha256") else p.stem] = short_hash(p)
    return models, datasets


def summary_table(
    similarity: Iterable,
    fid: Iterable = (),
    clipscore: Iterable = (),
    baselines: Iterable = (),
    manifests: Iterable = (),
    presets: Mapping | None = None,
    study: str = "",
    base_model: str = "",
    fid_enabled: bool = True,
    clipscore_enabled: bool = True,
    seed: int | None = None,
) -> pd.DataFrame:
    """One row per dataset × run × preset × embedder (see the module docstring for the columns).

    ``similarity``/``fid``/``clipscore``/``baselines``: paths of the JSON files; ``presets``: the
    generation presets by name (defaults filled); a disabled metric's columns say ``skipped``; an
    enabled one whose file is missing is an error naming the setting.
    """
    presets = presets or {}
    fids, clips = _by_key(fid, "fid"), _by_key(clipscore, "clipscore")
    base_lines = {}
    for p in baselines:
        ds, _, emb, name = _tail(p, 4)
        base_lines[(ds, emb)] = _read_json(p)
    model_hash, data_hash = _manifest_hashes(manifests)
    rows = []
    for path in similarity:
        ds, emb, run, gen = parse_similarity_path(path)
        stats = _read_json(path)
        row = {"study": study, "seed": seed, "dataset": ds, "run": run, "preset": gen, "embedder": emb, **settings(run)}
        if gen not in presets:
            log.warning("preset %r of %s not among the configured presets; its settings use the defaults", gen, path)
        row.update(preset_settings(presets.get(gen, {})))
        row["n_generations"] = stats.get("n")
        row.update(_flat_stats(stats, path))
        bl = base_lines.get((ds, emb))
        row["train_baseline_p95"] = bl.get("p95") if bl else None
        row["train_baseline_mean"] = bl.get("mean") if bl else None
        if fid_enabled:
            f = fids.get((ds, run, gen))
            if f is None:
                raise TableError(f"fid is enabled but no FID file for dataset {ds}, run {run}, preset {gen}")
            row.update(fid=f["fid"], fid_n_generated=f.get("n_generated"), fid_n_reference=f.get("n_reference"))
        else:
            row.update(fid=SKIPPED, fid_n_generated=SKIPPED, fid_n_reference=SKIPPED)
        if clipscore_enabled:
            c = clips.get((ds, run, gen))
            if c is None:
                raise TableError(f"clipscore is enabled but no CLIP-score file for dataset {ds}, run {run}, preset {gen}")
            row.update(clipscore=c["clipscore"], clip_cosine_mean=c.get("clip_cosine_mean"), clip_model=c.get("model"))
        else:
            row.update(clipscore=SKIPPED, clip_cosine_mean=SKIPPED, clip_model=SKIPPED)
        row.update(
            preprocess=stats.get("preprocess"),
            preprocess_detail=stats.get("preprocess_detail"),
            index=stats.get("index"),
            top_k=stats.get("top_k"),
            n_train=stats.get("n_train"),
            base_model=base_model,
            model_manifest_sha256=model_hash.get(base_model, ""),
            dataset_manifest_sha256=data_hash.get(ds, ""),
        )
        rows.append(row)
    if not rows:
        raise TableError("no similarity statistics given: the study measured nothing")
    df = pd.DataFrame(rows)
    return df.sort_values(["dataset", "embedder", "run", "preset"], kind="stable").reset_index(drop=True)


def baselines_table(baselines: Iterable, study: str = "") -> pd.DataFrame:
    """One row per dataset × embedder: the train-vs-train baseline statistics (top-2, self excluded)."""
    rows = []
    for p in baselines:
        ds, kind, emb, _ = _tail(p, 4)
        if kind != "similarity":
            raise TableError(f"{p}: not a train_baseline.json (…/{{dataset}}/similarity/{{embedder}}/train_baseline.json)")
        s = _read_json(p)
        rows.append(
            {"study": study, "dataset": ds, "embedder": emb,
             **{k: s.get(k) for k in ("n", "mean", "std", "p75", "p90", "p95", "frac_above", "threshold")},
             "preprocess": s.get("preprocess"), "n_train": s.get("n_train")}
        )
    cols = ["study", "dataset", "embedder", "n", "mean", "std", "p75", "p90", "p95", "frac_above",
            "threshold", "preprocess", "n_train"]
    return pd.DataFrame(rows, columns=cols)


WEIGHTDIFF_COLUMNS = [
    "study", "dataset", "run", "duplication", "conditioning", "train_mitigation", "component", "block",
    "n_tensors", "numel", "l1", "l2", "rel_l2_mean", "cosine_mean", "cosine_min", "n_not_compared",
]


def weightdiff_table(paths: Iterable, study: str = "") -> pd.DataFrame:
    """Per dataset × run × component × block: tensors compared, Σ numel, Σ l1, l2 = √Σ l2² (the
    L2 norm of the block's whole difference), mean relative L2, mean and min cosine, and
    ``n_not_compared`` (shape mismatches and tensors in one model only)."""
    frames = []
    for p in paths:
        ds, kind, name = _tail(p, 3)
        if kind != "weightdiff":
            raise TableError(f"{p}: not a weightdiff table (…/{{dataset}}/weightdiff/{{run}}.parquet)")
        run = Path(name).stem
        df = pd.read_parquet(p)
        missing = {"component", "block", "l1", "l2", "cosine", "numel"} - set(df.columns)
        if missing:
            raise TableError(f"{p}: columns {sorted(missing)} missing (docs/formats.md, weightdiff)")
        ok = df["l2"].notna()
        for (comp, blk), g in df.groupby(["component", "block"], sort=True):
            gok = g[ok.loc[g.index]]
            rel = gok["rel_l2"] if "rel_l2" in gok else pd.Series(dtype=float)
            frames.append(
                {"study": study, "dataset": ds, "run": run, **settings(run), "component": comp, "block": blk,
                 "n_tensors": int(len(gok)), "numel": int(gok["numel"].sum()),
                 "l1": float(gok["l1"].sum()), "l2": float(np.sqrt((gok["l2"].astype(float) ** 2).sum())),
                 "rel_l2_mean": float(rel.mean()) if rel.notna().any() else None,
                 "cosine_mean": float(gok["cosine"].mean()) if gok["cosine"].notna().any() else None,
                 "cosine_min": float(gok["cosine"].min()) if gok["cosine"].notna().any() else None,
                 "n_not_compared": int(len(g) - len(gok))}
            )
    return pd.DataFrame(frames, columns=WEIGHTDIFF_COLUMNS)


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def write_tables(inputs, outputs, params) -> dict[str, pd.DataFrame]:
    """The tables rule: ``inputs`` with similarity, baselines, fid, clipscore, weightdiff, manifests;
    ``outputs`` with summary, weightdiff, baselines; ``params`` with study, seed, presets,
    base_model, fid (enabled), clipscore (enabled)."""
    study = params["study"]
    summary = summary_table(
        inputs["similarity"], inputs.get("fid", []), inputs.get("clipscore", []), inputs["baselines"],
        inputs.get("manifests", []), params.get("presets", {}), study, params.get("base_model", ""),
        bool(params.get("fid", True)), bool(params.get("clipscore", True)), params.get("seed"),
    )
    tables = {
        "summary": summary,
        "weightdiff": weightdiff_table(inputs.get("weightdiff", []), study),
        "baselines": baselines_table(inputs["baselines"], study),
    }
    tables = with_platform(tables, log)
    for name, df in tables.items():
        write_csv(df, outputs[name])
        log.info("%s: %d rows -> %s", name, len(df), outputs[name])
    return tables
