"""Retrieval of training matches with faiss, and the similarity statistics of DCR's diff_retrieval.py.

Descriptors are L2-normalised (diffrep.embeddings), so the inner product is the cosine similarity
and upstream's ``torch.mm(train, gen.T)`` is what faiss ``IndexFlatIP`` computes. An IVF index
(``IndexIVFFlat`` with inner product, ``nlist`` clusters, ``nprobe`` searched) is an option for
training sets in the millions; its recall against exact search is measured in the tests.

Statistics of the top-1 similarity of each generation, exactly as upstream reports them:
``mean``, ``std`` (numpy, population: ddof 0), ``p75``/``p90``/``p95`` (numpy.percentile, linear
interpolation) and ``frac_above`` = fraction strictly above the threshold (upstream 0.5,
``sim_gt_05pc``). Upstream also splits the similarities by whether the *top-1 training match* is a
duplicated image; diffrep splits by whether the generation's *prompt* came from an image of the
study's duplicated set (the question the study asks: are duplicated prompts copied more?). The set
is the same for every duplication style (same seed), so in nodup runs and the base model the
``duplicated`` split holds the same images, not duplicated: the control. diffrep reports
``source_match_rate``, the fraction of generations whose top-1 match is the prompt's own source
image. The train-vs-train baseline is upstream's ``bg_*``: every training image's best match among
the other training images (top-2, self excluded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from diffrep.duplication import in_dup_set
from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)

STAT_KEYS = ("n", "mean", "std", "p75", "p90", "p95", "frac_above")
# What a file of the retrieve / train_baseline rules says it is (its wildcards, from the rule's params):
# readers take a file's identity from the file, never from where it lies.
MATCHES_IDENTITY = ("dataset", "embedder", "run", "preset")
BASELINE_IDENTITY = ("dataset", "embedder")


class SimilarityError(RuntimeError):
    """Retrieval inputs that do not fit together; the message names the files or values."""


# ---------------------------------------------------------------- faiss


def _descriptors(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 n × d array (no copy when it is one), n > 0."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise SimilarityError(f"{what} descriptors must be a non-empty n × d array, got shape {x.shape}")
    return x


def build_index(train: np.ndarray, index: str = "exact", nlist: int = 1024, nprobe: int = 32, seed: int = 0):
    """A faiss inner-product index over ``train`` (n × d float32, L2-normalised rows).

    ``exact``: IndexFlatIP. ``ivf``: IndexIVFFlat (inner product) with ``min(nlist, n)`` clusters
    trained by k-means on ``train`` and ``min(nprobe, nlist)`` clusters searched per query.
    """
    import faiss

    x = _descriptors(train, "training")
    d = x.shape[1]
    if index == "exact":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist_used = max(1, min(int(nlist), x.shape[0]))
        if nlist_used != nlist:
            log.warning("ivf: nlist %d > %d training vectors; using nlist %d", nlist, x.shape[0], nlist_used)
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist_used, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = seed
        idx.train(x)
        idx.nprobe = max(1, min(int(nprobe), nlist_used))
    else:
        raise SimilarityError(f"similarity.index: unknown index {index!r}; allowed: exact, ivf")
    idx.add(x)
    return idx


def search(idx, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products and training row numbers per query (each n_q × k, best first).

    ``k`` is capped at the index size. Slots an IVF search could not fill have row -1.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, min(int(k), idx.ntotal))
    sims, rows = idx.search(q, k)
    return sims, rows


def exact_search(refs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` of an exact index over ``refs``, without building one: faiss.knn reads
    ``refs`` in place (an IndexFlatIP holds a copy), so one shard's search holds it once. Same
    results as ``search(build_index(refs, "exact"), queries, k)`` (the same faiss routine)."""
    import faiss

    x = _descriptors(refs, "reference")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(q, x, max(1, min(int(k), x.shape[0])), metric=faiss.METRIC_INNER_PRODUCT)


# ---------------------------------------------------------------- statistics


def top1_statistics(values: Sequence[float], threshold: float = 0.5) -> dict:
    """Upstream's statistics of top-1 similarities (1-d).

    ``{"n", "mean", "std", "p75", "p90", "p95", "frac_above"}`` with std of ddof 0, linear
    percentiles and the fraction strictly above ``threshold``; values are None when n = 0.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return {"n": 0, **{k: None for k in STAT_KEYS[1:]}}
    return {
        "n": int(x.size),
        "mean": float(np.mean(x)),
        "std": float(np.std(x)),
        "p75": float(np.percentile(x, 75)),
        "p90": float(np.percentile(x, 90)),
        "p95": float(np.percentile(x, 95)),
        "frac_above": float(np.sum(x > threshold) / x.size),
    }


def _source_match_rate(top1) -> float | None:
    return float(top1["is_source"].mean()) if len(top1) else None


def similarity_statistics(matches, threshold: float = 0.5) -> dict:
    """Statistics of a matches table (docs/formats.md: generation, rank, similarity, duplicated, is_source).

    Top-1 rows (rank 0) only. Returns the overall statistics, the same under ``duplicated`` and
    ``not_duplicated`` (by whether the generation's prompt source is in the study's duplicated set,
    column ``dup_set``; tables without it use ``duplicated``), ``source_match_rate`` overall and
    per split, and ``threshold``.
    """
    top1 = matches[matches["rank"] == 0]
    stats = top1_statistics(top1["similarity"], threshold)
    stats["threshold"] = float(threshold)
    stats["source_match_rate"] = _source_match_rate(top1)
    in_set = in_dup_set(top1)
    for name, mask in (("duplicated", in_set), ("not_duplicated", ~in_set)):
        part = top1[mask.astype(bool)]
        stats[name] = {
            **top1_statistics(part["similarity"], threshold),
            "source_match_rate": _source_match_rate(part),
        }
    return stats


# ---------------------------------------------------------------- retrieval


def retrieve(
    train_ids: Sequence[str],
    train_emb: np.ndarray,
    gen_ids: Sequence[str],
    gen_emb: np.ndarray,
    prompts=None,
    top_k: int = 10,
    index: str = "exact",
    nlist: int = 1024,
    nprobe: int = 32,
):
    """Top-k training matches of every generation, one row per (generation, rank).

    Columns: ``generation`` (file), ``rank`` (0 = top-1), ``train_id``, ``similarity`` (float32
    inner product = cosine), and, from ``prompts`` (prompts.parquet: file, source_id, duplicated,
    dup_set), ``source_id``, ``duplicated``, ``dup_set`` and ``is_source`` (train_id == source_id).
    Without prompts the last four are null / False; prompts without ``dup_set`` (older files)
    take it from ``duplicated``.
    """
    import pandas as pd

    if train_emb.shape[1] != gen_emb.shape[1]:
        raise SimilarityError(
            f"descriptor sizes differ: training {train_emb.shape[1]}, generations {gen_emb.shape[1]}"
        )
    idx = build_index(train_emb, index, nlist, nprobe)
    sims, rows = search(idx, gen_emb, top_k)
    k = sims.shape[1]
    train_ids = np.asarray(list(train_ids), dtype=object)
    valid = rows >= 0
    df = pd.DataFrame(
        {
            "generation": np.repeat(np.asarray(list(gen_ids), dtype=object), k),
            "rank": np.tile(np.arange(k, dtype=np.int64), len(gen_ids)),
            "train_id": np.where(valid, train_ids[np.where(valid, rows, 0)], None).ravel(),
            "similarity": sims.ravel().astype(np.float32),
        }
    )
    df = df[valid.ravel()].reset_index(drop=True)
    if prompts is not None:
        p = prompts.assign(dup_set=in_dup_set(prompts))
        p = p[["file", "source_id", "duplicated", "dup_set"]].rename(columns={"file": "generation"})
        if set(df["generation"]) - set(p["generation"]):
            missing = sorted(set(df["generation"]) - set(p["generation"]))
            raise SimilarityError(f"prompts.parquet has no row for generation(s) {missing[:5]}")
        df = df.merge(p, on="generation", how="left", validate="many_to_one")
        df["duplicated"] = df["duplicated"].astype(bool)
        df["dup_set"] = df["dup_set"].astype(bool)
    else:
        df["source_id"] = pd.Series([None] * len(df), dtype=object)
        df["duplicated"] = False
        df["dup_set"] = False
    df["is_source"] = (df["train_id"] == df["source_id"]).fillna(False).astype(bool)
    return df


def train_baseline(
    train_ids: Sequence[str],
    train_emb: np.ndarray,
    index: str = "exact",
    nlist: int = 1024,
    nprobe: int = 32,
    threshold: float = 0.5,
):
    """Train-vs-train baseline: every training image's best match among the *other* training images.

    Upstream takes the second of the top-2 (the first being the image itself); diffrep searches
    the top-3 and drops the image's own row wherever it appears, so exact duplicates in the
    training set (which may outrank self on ties) are still counted as matches. Returns
    ``(table, stats)``: table columns ``train_id``, ``match_id``, ``similarity``; stats as
    :func:`top1_statistics` plus ``threshold``.
    """
    import pandas as pd

    n = len(train_ids)
    if n < 2:
        raise SimilarityError(f"the train-vs-train baseline needs at least 2 training images, got {n}")
    idx = build_index(train_emb, index, nlist, nprobe)
    sims, rows = search(idx, train_emb, 3)
    best_sim = np.full(n, np.nan, dtype=np.float32)
    best_row = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        for s, r in zip(sims[i], rows[i]):
            if r >= 0 and r != i:
                best_sim[i], best_row[i] = s, r
                break
    ids = np.asarray(list(train_ids), dtype=object)
    ok = best_row >= 0
    if not ok.all():
        log.warning("%d training image(s) got no other match (approximate index)", int((~ok).sum()))
    table = pd.DataFrame({"train_id": ids[ok], "match_id": ids[best_row[ok]], "similarity": best_sim[ok]})
    stats = top1_statistics(table["similarity"], threshold)
    stats["threshold"] = float(threshold)
    return table, stats


# ---------------------------------------------------------------- files


def check_compatible(train: dict, gen: dict, train_path, gen_path) -> None:
    """Both embedding files come from the same embedder and preprocessing."""
    for key in ("embedder", "preprocess"):
        if train[key] != gen[key]:
            raise SimilarityError(
                f"{key} differs: {train_path} has {train[key]!r}, {gen_path} has {gen[key]!r}"
            )


def provenance(emb: dict, cfg: dict) -> dict:
    """What produced a score: the embedder's model (``embedder_model``; ``embedder`` is the config's
    name, an identity field), preprocessing (with its meaning) and the faiss index."""
    from diffrep.embeddings import describe_preprocess

    index = cfg.get("index", "exact")
    out = {
        "embedder_model": emb["embedder"],
        "preprocess": emb["preprocess"],
        "preprocess_detail": describe_preprocess(emb["preprocess"]),
        "index": index,
    }
    if index == "ivf":
        out.update(nlist=int(cfg.get("nlist", 1024)), nprobe=int(cfg.get("nprobe", 32)))
    return out


def identity_fields(identity, keys: Sequence[str]) -> dict:
    """``{key: str}`` for exactly ``keys`` of ``identity`` (the rule's ``params.identity``)."""
    missing = [k for k in keys if not (identity or {}).get(k)]
    if missing:
        raise SimilarityError(
            f"identity {identity!r} lacks {missing}: the rule's params.identity must give {list(keys)}"
        )
    return {k: str(identity[k]) for k in keys}


def with_identity(df, identity: dict):
    """``df`` with one constant column per identity field, in front (a tidy table says what it is)."""
    out = df.assign(**identity)
    return out[[*identity, *(c for c in df.columns if c not in identity)]]


def read_identified(path, keys: Sequence[str], rule: str):
    """``(identity, content)`` of a statistics JSON (dict) or matches parquet (DataFrame) of ``rule``.

    ``identity`` is the tuple of the file's own ``keys`` fields (JSON) or constant columns (parquet).
    A file written before diffrep recorded them is an error that says to re-run ``rule``.
    """
    import pandas as pd

    path = str(path)
    if path.endswith(".json"):
        with open(path) as f:
            content = json.load(f)
        values = [content.get(k) for k in keys]
    else:
        content = pd.read_parquet(path)
        values = [content[k].iloc[0] if k in content and content[k].nunique() == 1 else None for k in keys]
    missing = [k for k, v in zip(keys, values) if v is None]
    if missing:
        raise SimilarityError(
            f"{path} does not say its {', '.join(missing)} (written by an older diffrep, or empty): "
            f"re-run its rule, e.g. `snakemake --forcerun {rule}`"
        )
    return tuple(str(v) for v in values), content


def write_json(path, data: dict) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_parquet(path, df) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def dup_set_statistics(matches, plan) -> dict:
    """How often the top-1 match is an image of the study's duplicated set.

    ``top1_in_dup_set``: the fraction of generations whose top-1 training match is in the set (the
    plan's ``dup_set``; ``duplicated`` for plans without it), whatever the prompt; ``dup_set_share``:
    the set's share of the training images, what that fraction would be if matches fell evenly.
    In duplicated runs a fraction above the nodup run's says the duplicated images are reproduced
    more often; the nodup run and the base model are the control.
    """
    in_set = set(plan.loc[in_dup_set(plan), "id"].astype(str))
    top1 = matches[matches["rank"] == 0]
    return {
        "top1_in_dup_set": float(top1["train_id"].astype(str).isin(in_set).mean()) if len(top1) else None,
        "dup_set_share": len(in_set) / len(plan) if len(plan) else None,
    }


def generation_platforms(gen_dir) -> dict:
    """The platform ids of the generation job and of the model's training or build job
    (``generation_info.json``; None where it does not say)."""
    path = os.path.join(gen_dir, "generation_info.json")
    info = {}
    if os.path.exists(path):
        with open(path) as f:
            info = json.load(f)
    return {
        "generation_platform_id": info.get("platform_id"),
        "model_platform_id": info.get("model_platform_id"),
    }


def retrieve_files(
    train_npz, gen_npz, gen_dir, matches_out, stats_out, cfg: dict, identity: dict, plan=None
) -> dict:
    """The retrieve rule: matches parquet and statistics JSON of one generation set (``identity``:
    its dataset, embedder, run and preset, written into both files; ``plan``: the run's duplication
    plan, for :func:`dup_set_statistics`)."""
    import pandas as pd

    from diffrep.embeddings import read_embeddings

    ident = identity_fields(identity, MATCHES_IDENTITY)
    train, gen = read_embeddings(train_npz), read_embeddings(gen_npz)
    check_compatible(train, gen, train_npz, gen_npz)
    prompts_path = os.path.join(gen_dir, "prompts.parquet")
    prompts = pd.read_parquet(prompts_path) if os.path.exists(prompts_path) else None
    if prompts is None:
        log.warning("%s missing: no duplicated split and no source-match rate", prompts_path)
    threshold = float(cfg.get("threshold", 0.5))
    matches = retrieve(
        train["ids"],
        train["embeddings"],
        gen["ids"],
        gen["embeddings"],
        prompts,
        top_k=int(cfg.get("top_k", 10)),
        index=cfg.get("index", "exact"),
        nlist=int(cfg.get("nlist", 1024)),
        nprobe=int(cfg.get("nprobe", 32)),
    )
    stats = similarity_statistics(matches, threshold)
    if prompts is None:
        stats["source_match_rate"] = None
        stats["duplicated"]["source_match_rate"] = stats["not_duplicated"]["source_match_rate"] = None
    if plan is not None:
        stats.update(dup_set_statistics(matches, pd.read_parquet(plan)))
    stats.update(top_k=int(matches["rank"].max()) + 1, n_train=len(train["ids"]), **provenance(train, cfg))
    stats.update(generation_platforms(gen_dir))
    stats = {**ident, **stats}
    write_parquet(matches_out, with_identity(matches, ident))
    write_json(stats_out, stats)
    log.info("top-1 similarity: %s", {k: stats[k] for k in STAT_KEYS})
    return stats


def train_baseline_files(train_npz, stats_out, table_out, cfg: dict, identity: dict) -> dict:
    """The train_baseline rule: per-image best other match (parquet) and its statistics (JSON), both
    carrying ``identity`` (dataset, embedder)."""
    from diffrep.embeddings import read_embeddings

    ident = identity_fields(identity, BASELINE_IDENTITY)
    train = read_embeddings(train_npz)
    table, stats = train_baseline(
        train["ids"],
        train["embeddings"],
        index=cfg.get("index", "exact"),
        nlist=int(cfg.get("nlist", 1024)),
        nprobe=int(cfg.get("nprobe", 32)),
        threshold=float(cfg.get("threshold", 0.5)),
    )
    stats = {**ident, **stats, "n_train": len(train["ids"]), **provenance(train, cfg)}
    write_parquet(table_out, with_identity(table, ident))
    write_json(stats_out, stats)
    log.info("train-vs-train baseline: %s", {k: stats[k] for k in STAT_KEYS})
    return stats
