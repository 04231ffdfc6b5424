"""The memorisation benchmark's plumbing: prompt files, generations over seeds, replication, tables.

A *benchmark* (config ``memorization.benchmarks.<name>``) is one model and a list of prompt files
(:func:`diffrep.memorization.read_prompt_table`'s format). Its jobs:

- detection — the Wen et al. metric of every prompt and the ROC statistics per set
  (:mod:`diffrep.memorization`);
- generations per preset — ``n_seeds`` seeded generations of every memorised prompt (VM / TM) that
  has a ground-truth image (``memorized/``), and ``general_seeds`` generations of
  ``n_general`` non-memorised prompts (``general/``, for quality: FID, CLIP score);
- replication per preset — every memorised generation's similarity to its prompt's ground-truth
  image(s) (the maximum over them), per prompt (mean, max, fraction above each threshold over its
  seeds) and per label (VM / TM: the fraction of generations above each threshold). A prompt whose
  ground-truth images are all unavailable (a URL that did not resolve, a missing file) is kept for
  detection, left out of the rates and counted (``n_unavailable``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep.config import derive_seed
from diffrep.fileio import atomic_path
from diffrep.memorization import MEMORIZED_LABELS, MemorizationError, read_prompt_table

log = logging.getLogger(__name__)

UNAVAILABLE_FILE = "unavailable.parquet"  # memorised prompts without any fetched ground-truth image
PLAN_COLUMNS = ["index", "file", "prompt_id", "prompt", "label", "seed", "images"]


def is_url(text: str) -> bool:
    return str(text).startswith(("http://", "https://"))


def normalise_prompt_file(
    src,
    out,
    name: str,
    columns: dict | None = None,
    label_map: dict | None = None,
    sep: str | None = None,
    default_label: str | None = None,
    image_cache=None,
):
    """Read a prompt file (renaming its `columns` {ours: theirs}) and write the benchmark's parquet.

    Local ground-truth image paths are resolved against the prompt file's folder. URLs are fetched
    into `image_cache` when one is given (:func:`fetch_truth`), else kept (and count as unavailable).
    Columns: prompt, label, images (list), image_failures (list of "url: reason"), file, row, source.
    """
    src = Path(src)
    table = read_prompt_table(src, label_map=label_map, columns=columns, sep=sep, default_label=default_label)
    table["images"] = [
        [i if is_url(i) else os.path.normpath(src.parent / i) for i in imgs] for imgs in table["images"]
    ]
    table["image_failures"] = [[] for _ in range(len(table))]
    if image_cache is not None:
        fetch_truth(table, image_cache)
    table["source"] = name
    with atomic_path(out, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    log.info("%s: %d prompts (%s)", name, len(table), table["label"].value_counts().to_dict())
    return table


def fetch_truth(table: pd.DataFrame, cache, threads: int = 8) -> None:
    """Fetch the ground-truth image URLs of `table` into `cache` (in place): a fetched URL becomes
    its local path; one that does not resolve is dropped from ``images`` and listed in
    ``image_failures`` with its reason (the prompt stays, for detection)."""
    import hashlib

    from diffrep.imagefetch import download_all

    urls = sorted({u for imgs in table["images"] for u in imgs if is_url(u)})
    ids = {u: hashlib.sha256(u.encode()).hexdigest()[:20] for u in urls}
    results = download_all([(ids[u], u) for u in urls], cache, threads=threads) if urls else {}
    images, failures = [], []
    for imgs in table["images"]:
        images.append(
            [
                str(results[ids[u]]) if is_url(u) else u
                for u in imgs
                if not is_url(u) or not isinstance(results[ids[u]], str)
            ]
        )
        failures.append(
            [f"{u}: {results[ids[u]]}" for u in imgs if is_url(u) and isinstance(results[ids[u]], str)]
        )
    table["images"], table["image_failures"] = images, failures
    n_bad = sum(len(f) for f in failures)
    if n_bad:
        log.warning("%d of %d ground-truth image URLs did not resolve (listed per prompt)", n_bad, len(urls))


def benchmark_prompts(paths) -> pd.DataFrame:
    """The benchmark's prompts: the normalised files in order, with a running prompt_id."""
    frames = [pd.read_parquet(p) for p in paths]
    table = pd.concat(frames, ignore_index=True)
    table["images"] = [list(v) for v in table["images"]]
    if "image_failures" in table:
        table["image_failures"] = [list(v) for v in table["image_failures"]]
    table.insert(0, "prompt_id", np.arange(len(table)))
    return table


def image_available(path: str) -> bool:
    """A ground-truth image is usable when it is a local file (URLs must have been fetched first)."""
    return not is_url(path) and Path(path).is_file()


def generation_plans(prompts: pd.DataFrame, settings: dict, seed: int) -> dict[str, pd.DataFrame]:
    """``memorized`` and ``general`` plans: one row per image (prompt and its seed).

    memorized: every VM / TM prompt with at least one ground-truth image available, ``n_seeds``
    seeds each; ``unavailable``: the memorised prompts whose listed images all failed to fetch;
    general: ``n_general`` non-memorised prompts (a seeded sample, all when fewer), ``general_seeds``
    seeds each. Image seeds: ``derive_seed(seed, "memorization", prompt_id, k)``.
    """
    memorised = prompts["label"].isin(MEMORIZED_LABELS)
    mem = prompts[memorised & (prompts["images"].map(len) > 0)]
    failures = prompts["image_failures"] if "image_failures" in prompts else pd.Series([[]] * len(prompts))
    missing = prompts[memorised & (prompts["images"].map(len) == 0) & (failures.map(len).to_numpy() > 0)]
    non = prompts[~prompts["label"].isin(MEMORIZED_LABELS)]
    n_general = min(int(settings["n_general"]), len(non))
    rng = np.random.default_rng(derive_seed(seed, "memorization", "general"))
    general = (
        non.iloc[np.sort(rng.choice(len(non), size=n_general, replace=False))] if n_general else non.iloc[:0]
    )
    plans = {}
    for kind, rows, n in (
        ("memorized", mem, int(settings["n_seeds"])),
        ("general", general, int(settings["general_seeds"])),
    ):
        records = [
            {
                "prompt_id": int(r.prompt_id),
                "prompt": r.prompt,
                "label": r.label,
                "seed": derive_seed(seed, "memorization", int(r.prompt_id), k),
                "images": list(r.images),
            }
            for r in rows.itertuples()
            for k in range(n)
        ]
        plan = pd.DataFrame(records, columns=PLAN_COLUMNS[2:])
        plan.insert(0, "index", np.arange(len(plan), dtype=np.int64))
        plan.insert(1, "file", [f"{i:05d}.png" for i in range(len(plan))])
        plans[kind] = plan
    plans["unavailable"] = pd.DataFrame(
        {
            "prompt_id": missing["prompt_id"].astype(int).tolist(),
            "prompt": missing["prompt"].tolist(),
            "label": missing["label"].tolist(),
            "image_failures": [list(v) for v in (failures[missing.index] if len(missing) else [])],
        }
    )
    return plans


def generate_plan(
    pipe,
    family: str,
    plan: pd.DataFrame,
    preset: dict,
    resolution: int,
    out_dir,
    seed: int,
    batch_size=16,
    unavailable: pd.DataFrame | None = None,
):
    """Generate every row of `plan` into `out_dir` (PNGs, prompts.parquet, generation_info.json)."""
    from diffrep.fileio import staged_dir
    from diffrep.generation import generate_batch, mitigate_prompts

    plan = plan.copy()
    plan["prompt_used"] = mitigate_prompts(plan, preset, seed, pipe.tokenizer) if len(plan) else []
    with staged_dir(out_dir) as tmp:
        for start in range(0, len(plan), batch_size):
            rows = plan.iloc[start : start + batch_size]
            images = generate_batch(
                pipe,
                list(rows["prompt_used"]),
                [int(s) for s in rows["seed"]],
                preset,
                resolution,
                str(pipe.device),
                family,
            )
            for file, im in zip(rows["file"], images):
                im.save(tmp / file, format="PNG")
            log.info("%s: %d / %d images", Path(out_dir).name, min(start + batch_size, len(plan)), len(plan))
        plan.to_parquet(tmp / "prompts.parquet", index=False)
        if unavailable is not None:
            unavailable.to_parquet(tmp / UNAVAILABLE_FILE, index=False)
        info = {"preset": preset, "resolution": resolution, "n_images": len(plan), "family": family}
        (tmp / "generation_info.json").write_text(json.dumps(info, indent=1, default=str))
    return plan


# --------------------------------------------------------------------------------------------
# Replication
# --------------------------------------------------------------------------------------------


def generation_similarities(gen_dir, embedder, batch_size: int = 64) -> pd.DataFrame:
    """The plan of `gen_dir` with ``similarity``: max over its prompt's available ground-truth images
    of the descriptor similarity (NaN when none is available) and ``n_images_available``."""
    gen_dir = Path(gen_dir)
    plan = pd.read_parquet(gen_dir / "prompts.parquet")
    plan["images"] = [list(v) for v in plan["images"]]
    truth = sorted({p for imgs in plan["images"] for p in imgs if image_available(p)})
    sims = np.full(len(plan), np.nan)
    if len(plan) and truth:
        gen = embedder.embed([gen_dir / f for f in plan["file"]], batch_size=batch_size)
        ref = embedder.embed([Path(p) for p in truth], batch_size=batch_size)
        where = {p: i for i, p in enumerate(truth)}
        for row, imgs in enumerate(plan["images"]):
            idx = [where[p] for p in imgs if p in where]
            if idx:
                sims[row] = float(np.max(ref[idx] @ gen[row]))
    plan["similarity"] = sims
    plan["n_images_available"] = [sum(image_available(p) for p in imgs) for imgs in plan["images"]]
    return plan


def per_prompt(sims: pd.DataFrame, thresholds) -> pd.DataFrame:
    """One row per prompt: label, n_seeds, mean / max similarity and the fraction above each threshold."""
    rows = []
    for (pid, prompt, label), g in sims.groupby(["prompt_id", "prompt", "label"], sort=True):
        s = g["similarity"].to_numpy(dtype=float)
        ok = bool(np.isfinite(s).all())
        row = {"prompt_id": pid, "prompt": prompt, "label": label, "n_seeds": len(g), "available": ok}
        row["sim_mean"] = float(s.mean()) if ok else None
        row["sim_max"] = float(s.max()) if ok else None
        for t in thresholds:
            row[f"frac_above_{t}"] = float((s > t).mean()) if ok else None
        rows.append(row)
    return pd.DataFrame(rows)


def rates(prompts: pd.DataFrame, thresholds) -> dict:
    """Per label (VM, TM, all): prompts, prompts unavailable, and the mean per-prompt fraction above
    each threshold over the available prompts (= the fraction of their generations above it)."""
    out = {}
    for name, labels in (("VM", ("VM",)), ("TM", ("TM",)), ("all", MEMORIZED_LABELS)):
        sub = prompts[prompts["label"].isin(labels)] if len(prompts) else prompts
        ok = sub[sub["available"]] if len(sub) else sub
        entry = {"n_prompts": int(len(sub)), "n_unavailable": int(len(sub) - len(ok))}
        for t in thresholds:
            entry[f"frac_above_{t}"] = float(ok[f"frac_above_{t}"].mean()) if len(ok) else None
        entry["sim_mean"] = float(ok["sim_mean"].mean()) if len(ok) else None
        out[name] = entry
    return out


def replication_files(
    gen_dir, embedder_cfg: dict, out_table, out_summary, thresholds, model_dir=None, identity=None
):
    """The replication rule: per-prompt table (parquet) and the per-label rates (JSON)."""
    from diffrep.embeddings import make_embedder

    embedder = make_embedder(embedder_cfg, model_dir)
    sims = generation_similarities(gen_dir, embedder)
    table = per_prompt(sims, thresholds)
    missing = Path(gen_dir) / UNAVAILABLE_FILE
    if missing.is_file():  # counted, never scored
        gone = pd.read_parquet(missing)
        gone = gone.assign(
            n_seeds=0, available=False, image_failures=[list(v) for v in gone["image_failures"]]
        )
        table = pd.concat([table, gone], ignore_index=True).sort_values("prompt_id", ignore_index=True)
    summary = {
        **(identity or {}),
        "embedder": embedder.name,
        "thresholds": list(thresholds),
        "rates": rates(table, thresholds),
        "n_generations": int(len(sims)),
    }
    with atomic_path(out_table, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out_summary, suffix=".json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    log.info("replication %s", json.dumps(summary["rates"]))
    return summary


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def mitigation_table(
    bench: str, presets: list[str], replication: list[dict], quality: list[dict]
) -> pd.DataFrame:
    """One row per preset: its replication rates (VM, TM, all) and its quality (FID, CLIP score)."""
    rows = []
    for preset, rep, q in zip(presets, replication, quality):
        row = {"benchmark": bench, "preset": preset, "mitigation": rep.get("mitigation", "none")}
        for label, entry in rep["rates"].items():
            for key, value in entry.items():
                row[f"{label}_{key}"] = value
        row["fid"] = q.get("fid", "skipped")
        row["clipscore"] = q.get("clipscore", "skipped")
        row["n_general"] = q.get("n_generated")
        rows.append(row)
    return pd.DataFrame(rows)


def check_prompts(table: pd.DataFrame, where: str) -> None:
    """A benchmark needs memorised and non-memorised prompts for its ROC statistics."""
    labels = set(table["label"])
    if not labels & set(MEMORIZED_LABELS) or "none" not in labels:
        raise MemorizationError(
            f"{where}: the prompt files hold labels {sorted(labels)}; detection needs memorised (VM/TM) "
            "and non-memorised (none) prompts"
        )


def dataset_prompt_file(metadata, images_dir, rows, out_csv) -> Path:
    """A prompt file of a prepared dataset's rows [start, stop) (metadata order): each picture's first
    caption as the prompt, the picture as its ground truth (a path relative to ``out_csv``'s folder)."""
    from diffrep.datasets import read_metadata

    meta = read_metadata(metadata)
    start, stop = rows
    if not 0 <= start < stop <= len(meta):
        raise MemorizationError(
            f"prompt file rows [{start}, {stop}) of {metadata}: the dataset has {len(meta)} pictures"
        )
    part = meta.iloc[start:stop]
    uncaptioned = part["id"][part["captions"].map(len) == 0].tolist()
    if uncaptioned:
        raise MemorizationError(
            f"{metadata}: picture(s) {', '.join(uncaptioned[:5])} have no caption to prompt with"
        )
    out_csv = Path(out_csv)
    rel = Path(os.path.relpath(images_dir, out_csv.parent))
    table = pd.DataFrame(
        {"prompt": [c[0] for c in part["captions"]], "images": [str(rel / f) for f in part["file"]]}
    )
    with atomic_path(out_csv, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    return out_csv


def fetch_prompt_file(source: dict, raw_dir) -> Path:
    """The prompt file of a source: a url is downloaded (sha256-checked when pinned), a dataset's rows
    written (:func:`dataset_prompt_file`), else the local path."""
    if source["type"] == "dataset":
        start, stop = source["rows"]
        out = Path(raw_dir) / f"{source['dataset']}_{start}-{stop}.csv"
        return dataset_prompt_file(source["metadata"], source["images"], (start, stop), out)
    if source["type"] != "url":
        path = Path(source.get("file") or source["path"])
        if not path.is_file():
            raise MemorizationError(f"prompt file {path} ({source['type']} source) not found")
        return path
    from diffrep.fetch import download_url, url_filename

    if not source.get("sha256"):
        log.warning("%s: no sha256 pinned; the file is used unverified", source["url"])
    return download_url(source["url"], Path(raw_dir) / url_filename(source), sha256=source.get("sha256"))


def write_tables(inputs: dict, params: dict, outputs: dict) -> dict[str, pd.DataFrame]:
    """The memorization tables: detection per set, mitigation comparison, replication per prompt.

    `inputs`: sets (the detection_sets.csv of each benchmark, as memorization_detect computed them:
    one computation of the subset statistics, so the table and the per-benchmark file agree),
    replication and quality JSONs and per-prompt parquets (one per (benchmark, preset) of
    params["runs"]).
    """
    detection = [pd.read_csv(path) for path in inputs["sets"]]
    mitigations, prompts = [], []
    for (bench, preset), rep, quality, table in zip(
        params["runs"], inputs["replication"], inputs["quality"], inputs["per_prompt"]
    ):
        rep, quality = json.loads(Path(rep).read_text()), json.loads(Path(quality).read_text())
        mitigations.append(mitigation_table(bench, [preset], [rep], [quality]))
        per = pd.read_parquet(table)
        per.insert(0, "preset", preset)
        per.insert(0, "benchmark", bench)
        prompts.append(per)
    tables = {
        "detection": pd.concat(detection, ignore_index=True),
        "mitigations": pd.concat(mitigations, ignore_index=True),
        "prompts": pd.concat(prompts, ignore_index=True),
    }
    for name, table in tables.items():
        table.insert(0, "study", params["study"])
        with atomic_path(outputs[name], suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    return tables
