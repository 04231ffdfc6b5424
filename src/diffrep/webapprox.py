"""The approximate index of a web-scale search, over the collection's shard files.

What exact sharded search cannot hold (or not fast enough) an index does (diffrep.approxsearch:
IVF-PQ or HNSW): trained on a seeded sample of the collection's descriptors, every shard added under
its global row indices one shard at a time, searched for ``candidates`` neighbours per generation,
which are then re-ranked by their exact inner products, the descriptors read back shard by shard.
The result has the columns of the exact merge (diffrep.websearch.MATCH_COLUMNS).

The search settings are not set by hand but chosen for a recall target (``recall_target``): a
held-out, seeded sample of the generations is searched exactly (sharded search and merge), and the
search breadth, then the re-ranked candidates, are raised until the sample's recall@1 and recall@k
reach the target (diffrep.approxtune), or the job stops at the ceiling with the recall reached and
the settings tried (unless ``accept_below_target``: then every output says so). The recall of the
written result on that sample, the target, the settings chosen and tried and the missing shards go
into ``approx_recall.json``, onto every row of ``approx_matches.parquet`` and into the web-scale table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffrep.approxsearch import KINDS, ApproxSearchError, add_shards, build_index, recall
from diffrep.approxtune import BREADTH, Tuning, describe_trials, tune
from diffrep.embeddings import read_embeddings
from diffrep.fileio import atomic_path
from diffrep.websearch import MATCH_COLUMNS, check_complete, merge_topk, missing_text, search_shard
from diffrep.webshards import ShardError

log = logging.getLogger(__name__)


@dataclass
class ShardFiles:
    """One shard's descriptors (npz) and metadata (parquet: key, index, url, caption; same order)."""

    shard: int
    npz: str
    meta: str

    def load(self):
        """(descriptors n × d float32, metadata frame); an empty shard has no rows."""
        import pandas as pd

        meta = pd.read_parquet(self.meta)
        emb = read_embeddings(self.npz)["embeddings"] if len(meta) else np.zeros((0, 0), np.float32)
        if len(emb) != len(meta):
            raise ShardError(
                f"shard {self.shard}: {len(emb)} descriptors in {self.npz} but {len(meta)} rows in {self.meta}"
            )
        return emb, meta


def sample_across_shards(shards: Sequence[ShardFiles], n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` descriptors of the whole collection (uniform over its rows), read one
    shard at a time."""
    import pyarrow.parquet as pq

    sizes = np.array([pq.ParquetFile(s.meta).metadata.num_rows for s in shards])
    total = int(sizes.sum())
    if total == 0:
        raise ShardError("approximate index: the collection has no descriptors (every shard is empty)")
    take = np.sort(np.random.default_rng(seed).choice(total, size=min(int(n), total), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for i, s in enumerate(shards):
        mine = take[(take >= starts[i]) & (take < starts[i + 1])] - starts[i]
        if len(mine):
            parts.append(s.load()[0][mine])
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def _indexed(shards: Sequence[ShardFiles]):
    for s in shards:
        emb, meta = s.load()
        if len(meta):
            yield meta["index"].to_numpy(np.int64), emb


def rerank(queries: np.ndarray, cand: np.ndarray, shards, k: int):
    """Exact top-``k`` (similarities, global indices) of each query among its candidates ``cand``
    (queries × c global indices, -1 = none); ``shards`` yields ``(global indices, descriptors)`` one
    shard at a time, so only one shard's descriptors are in memory."""
    sims = np.full(cand.shape, -np.inf, dtype=np.float32)
    for index, emb in shards:
        if not len(index):
            continue
        order = np.argsort(index, kind="stable")
        pos = np.clip(np.searchsorted(index[order], cand), 0, len(index) - 1)
        hit = (cand >= 0) & (index[order][pos] == cand)
        q, c = np.nonzero(hit)
        sims[q, c] = np.einsum("nd,nd->n", emb[order[pos[q, c]]], queries[q])
    ids = np.where(np.isfinite(sims), cand, np.iinfo(np.int64).max)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]  # highest similarity first, ties by the lower index
    top_s, top_i = np.take_along_axis(sims, order, 1), np.take_along_axis(cand, order, 1)
    top_i[~np.isfinite(top_s)] = -1
    return top_s, top_i


def rerank_from_shards(queries: np.ndarray, cand: np.ndarray, shards: Sequence[ShardFiles], k: int):
    """:func:`rerank` with the descriptors read back from the shard files."""
    return rerank(queries, cand, _indexed(shards), k)


def candidates(index, queries: np.ndarray, n: int, nprobe: int = 1, ef_search: int = 16) -> np.ndarray:
    """The index's ``n`` approximate neighbours (queries × n global indices, -1 = none) per query,
    visiting ``nprobe`` cells (IVF) or with search breadth ``ef_search`` (HNSW)."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if hasattr(inner, "nprobe"):
        inner.nprobe = int(nprobe)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef_search)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), int(n))[1]


def exact_topk(queries: np.ndarray, shards: Sequence[ShardFiles], k: int) -> np.ndarray:
    """Exact top-``k`` global indices per query: the workflow's sharded search and merge."""
    ids = [str(i) for i in range(len(queries))]
    frames = (
        search_shard(ids, queries, emb, meta, s.shard, k)
        for s in shards
        for emb, meta in [s.load()]
        if len(meta)
    )
    merged = merge_topk(frames, k)
    merged = merged.assign(q=merged["generation"].astype(int)).sort_values(["q", "rank"])
    out = np.full((len(queries), k), -1, dtype=np.int64)
    out[merged["q"].to_numpy(), merged["rank"].to_numpy()] = merged["index"].to_numpy()
    return out


def _frame(gen_ids, sims, rows, shards: Sequence[ShardFiles], shard_size: int):
    """The matches frame (MATCH_COLUMNS) of top-k global indices, url and caption from the shards."""
    import pandas as pd

    k = rows.shape[1]
    frame = pd.DataFrame(
        {
            "generation": np.repeat(np.asarray(list(gen_ids), dtype=object), k),
            "rank": np.tile(np.arange(k), len(gen_ids)),
            "similarity": sims.ravel().astype(np.float32),
            "index": rows.ravel(),
        }
    )
    frame = frame[frame["index"] >= 0].reset_index(drop=True)
    frame["shard"] = frame["index"] // int(shard_size)
    wanted = set(frame["index"])
    parts = (pd.read_parquet(s.meta, columns=["index", "url", "caption"]) for s in shards)  # one at a time
    meta = pd.concat(m[m["index"].isin(wanted)] for m in parts).drop_duplicates("index")
    frame = frame.merge(meta, on="index", how="left")
    return frame[list(MATCH_COLUMNS)]


def check_settings(cfg: dict, dim: int) -> None:
    """A clear error for an index setting that cannot work with descriptors of ``dim`` dimensions, or
    for a start value of the recall-target search above its ceiling."""
    if cfg["kind"] not in KINDS:
        raise ApproxSearchError(f"approx.kind {cfg['kind']!r}; allowed: {', '.join(KINDS)}")
    if cfg["kind"] == "ivfpq" and dim % cfg["m"]:
        raise ApproxSearchError(
            f"approx.m: {cfg['m']} does not divide the descriptors' dimension {dim} (IVF-PQ splits it into m parts)"
        )
    for start, top in (
        ("nprobe", "max_nprobe"),
        ("ef_search", "max_ef_search"),
        ("candidates", "max_candidates"),
    ):
        if cfg.get(top) is not None and cfg[start] > cfg[top]:
            raise ApproxSearchError(
                f"approx.{start}: {cfg[start]} is above approx.{top}: {cfg[top]} ({start} is where the search "
                f"for the recall target starts, {top} where it stops); lower {start} or raise {top}"
            )


def present_shards(shards: Sequence[ShardFiles]) -> list[int]:
    """The shards that have descriptors (an empty one is a missing shard's: its download fetched nothing)."""
    import pyarrow.parquet as pq

    return [s.shard for s in shards if pq.ParquetFile(s.meta).metadata.num_rows > 0]


def held_out(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded sample (sorted row numbers) of ``size`` of the ``n`` queries on which the search
    settings are tuned and the recall is measured."""
    return np.sort(np.random.default_rng([seed, 1]).choice(n, min(int(size), n), replace=False))


def _built_index(shards: Sequence[ShardFiles], cfg: dict, seed: int):
    """(the trained index with every shard added, its training-sample size, seconds taken)."""
    t0 = time.perf_counter()
    sample = sample_across_shards(shards, cfg["train_size"], seed)
    index = build_index(
        sample,
        cfg["kind"],
        nlist=cfg["nlist"],
        m=cfg["m"],
        nbits=cfg["nbits"],
        hnsw_m=cfg["hnsw_m"],
        seed=seed,
    )
    add_shards(index, _indexed(shards))
    return index, len(sample), time.perf_counter() - t0


def search_ceiling(index, cfg: dict) -> tuple[int, int]:
    """The ceiling ``(breadth, candidates)`` of the recall-target search: ``max_nprobe`` (null: every
    cell of the index) or ``max_ef_search``, and ``max_candidates``."""
    if cfg["kind"] == "ivfpq":
        nlist = int(index.nlist)
        top = nlist if cfg.get("max_nprobe") is None else min(int(cfg["max_nprobe"]), nlist)
    else:
        top = int(cfg["max_ef_search"])
    return top, int(cfg["max_candidates"])


def tune_settings(index, queries: np.ndarray, exact_rows: np.ndarray, cfg: dict, k: int) -> Tuning:
    """The search settings that reach ``cfg['recall_target']`` on ``queries`` (the held-out sample,
    queries × d) whose exact top-``k`` global indices are ``exact_rows`` (diffrep.approxtune.tune)."""
    breadth = BREADTH[cfg["kind"]]

    def search(width: int, n: int) -> np.ndarray:
        return candidates(index, queries, n, **{breadth: width})

    start = (cfg[breadth], cfg["candidates"])
    return tune(search, exact_rows, k, start, search_ceiling(index, cfg), cfg["recall_target"])


def below_target_message(label: dict, tuning: Tuning, recalls: tuple[float, float], cfg: dict, k: int) -> str:
    """Why the recall target was missed: the recall reached (``recalls``: recall@1, recall@k), the
    settings tried, the ceiling, and what the user can do."""
    name, chosen = BREADTH[cfg["kind"]], tuning.chosen
    return (
        f"approximate index of search {label.get('search', '')!r}: recall target {tuning.target} not "
        f"reached within the ceiling ({name} {tuning.ceiling[0]}, candidates {tuning.ceiling[1]}): recall@1 "
        f"{recalls[0]:.4f}, recall@{k} {recalls[1]:.4f} at {name} {chosen.breadth}, candidates "
        f"{chosen.candidates}, on the held-out generations. Settings tried: "
        f"{describe_trials(tuning, name, k)}. Raise approx.max_candidates or approx.max_{name}, build a "
        "finer index (ivfpq: approx.nlist, approx.m; hnsw: approx.hnsw_m), lower approx.recall_target, "
        "use the exact results (matches.parquet), or set approx.accept_below_target: true to write these "
        "results marked as below the target"
    )


def _check_target(label, tuning: Tuning, recalls: tuple[float, float], cfg: dict, k: int) -> bool:
    """Whether ``recalls`` (recall@1, recall@k) are below the target; raises (nothing written) unless
    ``cfg['accept_below_target']``, when it is logged and every output says so."""
    if min(recalls) >= tuning.target:
        return False
    message = below_target_message(label, tuning, recalls, cfg, k)
    if not cfg["accept_below_target"]:
        raise ApproxSearchError(message)
    log.warning("%s (written: approx.accept_below_target is true)", message)
    return True


def _summary(label, tuning: Tuning, recalls, below: bool, cfg: dict, k: int, extra: dict) -> dict:
    """approx_recall.json: the label, the recall measured on the written result, the target and whether
    it is met, the settings chosen and tried, and ``extra`` (counts, seconds, missing shards)."""
    name, chosen = BREADTH[cfg["kind"]], tuning.chosen
    summary = {
        **label,
        "recall@1": recalls[0],
        "recall@k": recalls[1],
        "k": int(k),
        "recall_target": tuning.target,
        "below_target": below,
        name: chosen.breadth,
        "candidates": chosen.candidates,
        "ceiling": {name: tuning.ceiling[0], "candidates": tuning.ceiling[1]},
        "tuning": [t.as_dict(name) for t in tuning.trials],
        **extra,
        "index": {key: cfg[key] for key in sorted(cfg)},
    }
    if below:
        summary["below_target_note"] = (
            f"recall target {tuning.target} not reached; written because approx.accept_below_target is true"
        )
    return summary


MATCH_KEYS = ("recall_target", "recall@1", "recall@k", "below_target", "nprobe", "ef_search", "candidates")


def _write_matches(out, gen_ids, sims, rows, shards, shard_size: int, label: dict, summary: dict) -> None:
    """approx_matches.parquet: MATCH_COLUMNS, the label, the missing shards (written as the merge writes
    them) and the recall, target and settings of ``summary``, on every row."""
    frame = _frame(gen_ids, sims, rows, shards, shard_size)
    columns = {
        **label,
        "missing_shards": missing_text(summary["missing_shards"]),
        **{key: summary[key] for key in MATCH_KEYS if key in summary},
    }
    for key, value in columns.items():
        frame[key] = value
    with atomic_path(out, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)


def approx_search_files(
    generations_npz,
    shards: Sequence[ShardFiles],
    shard_size: int,
    cfg: dict,
    k: int,
    seed: int,
    out_matches,
    out_recall,
    label: dict,
    allow_missing: bool = False,
    stats_paths: dict | None = None,
) -> dict:
    """Search the generations with an approximate index of the shards, its search settings tuned to
    ``cfg['recall_target']`` on a held-out sample of ``cfg['recall_queries']`` generations searched
    exactly (diffrep.approxtune); write the re-ranked top-``k`` (``out_matches``: the exact merge's
    columns, the label, the missing shards, recall and settings) and the recall summary
    (``out_recall``). Returns the summary.

    ``cfg``: kind (ivfpq, hnsw), train_size, nlist, m, nbits, hnsw_m, nprobe / ef_search and
    candidates (where the search starts), max_nprobe / max_ef_search and max_candidates (where it
    stops), recall_target, accept_below_target, recall_queries. Missing shards (no descriptors) stop
    it unless ``allow_missing``, with the merge's messages (diffrep.websearch.check_complete, which
    reads the shards' download stats ``stats_paths`` {shard: path}); a target missed at the ceiling
    stops it unless ``accept_below_target``.
    """
    gen = read_embeddings(generations_npz)
    queries = np.ascontiguousarray(gen["embeddings"], dtype=np.float32)
    check_settings(cfg, queries.shape[1])
    missing = check_complete(
        len(shards), present_shards(shards), allow_missing, "approximate index", stats_paths=stats_paths
    )
    index, n_train, t_build = _built_index(shards, cfg, seed)
    held = held_out(len(queries), cfg["recall_queries"], seed)
    t0 = time.perf_counter()
    exact = exact_topk(queries[held], shards, k)
    tuning = tune_settings(index, queries[held], exact, cfg, k)
    t_tune = time.perf_counter() - t0
    chosen = tuning.chosen
    if not tuning.met and not cfg["accept_below_target"]:  # fail before searching every generation
        raise ApproxSearchError(
            below_target_message(label, tuning, (chosen.recall_1, chosen.recall_k), cfg, k)
        )
    t0 = time.perf_counter()
    cand = candidates(index, queries, chosen.candidates, **{BREADTH[cfg["kind"]]: chosen.breadth})
    sims, rows = rerank_from_shards(queries, cand, shards, k)
    t_search = time.perf_counter() - t0
    recalls = (recall(rows[held], exact, 1), recall(rows[held], exact, k))  # the written result's
    below = _check_target(label, tuning, recalls, cfg, k)
    extra = {
        "recall_queries": int(len(held)),
        "recall_sample": [str(gen["ids"][i]) for i in held],
        "n_shards": len(shards),
        "missing_shards": missing,
        "n_indexed": int(index.ntotal),
        "train_size": int(n_train),
        "build_seconds": round(t_build, 2),
        "tuning_seconds": round(t_tune, 2),
        "search_seconds": round(t_search, 2),
    }
    summary = _summary(label, tuning, recalls, below, cfg, k, extra)
    log.info(
        "approximate index: %s", json.dumps({key: v for key, v in summary.items() if key != "recall_sample"})
    )
    _write_matches(out_matches, gen["ids"], sims, rows, shards, shard_size, label, summary)
    with atomic_path(out_recall) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


TABLE_KEYS = (
    "recall_target",
    "recall@1",
    "recall@k",
    "k",
    "below_target",
    "nprobe",
    "ef_search",
    "candidates",
)


def table_columns(summary: dict) -> dict:
    """The approximate index's columns of the web-scale table for one search's approx_recall.json:
    ``search`` and ``approx_<key>`` for the recall, target, whether it is below, and the settings."""
    return {
        "search": summary["search"],
        **{f"approx_{key}": summary[key] for key in TABLE_KEYS if key in summary},
    }
