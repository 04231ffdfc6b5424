"""The approximate index of a web-scale search, over the collection's shard files.

What exact sharded search cannot hold (or not fast enough) an index does (diffrep.approxsearch:
IVF-PQ or HNSW): trained on a seeded sample of the collection's descriptors, every shard added under
its global row indices one shard at a time, searched for ``candidates`` neighbours per generation,
which are then re-ranked by their exact inner products, the descriptors read back shard by shard.
The result has the columns of the exact merge (diffrep.websearch.MATCH_COLUMNS).

Its quality is measured beside it: recall@1 and recall@10 of the re-ranked result against exact
sharded search on a held-out, seeded sample of the generations (queries the index was not trained
on), written to ``approx_recall.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffrep.approxsearch import KINDS, ApproxSearchError, add_shards, build_index, recall
from diffrep.embeddings import read_embeddings
from diffrep.fileio import atomic_path
from diffrep.websearch import MATCH_COLUMNS, merge_topk, search_shard
from diffrep.webshards import ShardError

log = logging.getLogger(__name__)
RECALL_K = (1, 10)


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


def candidates(index, queries: np.ndarray, n: int, nprobe: int, ef_search: int) -> np.ndarray:
    """The index's ``n`` approximate neighbours (global indices) per query."""
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
    """A clear error for an index setting that cannot work with descriptors of ``dim`` dimensions."""
    if cfg["kind"] not in KINDS:
        raise ApproxSearchError(f"approx.kind {cfg['kind']!r}; allowed: {', '.join(KINDS)}")
    if cfg["kind"] == "ivfpq" and dim % cfg["m"]:
        raise ApproxSearchError(
            f"approx.m: {cfg['m']} does not divide the descriptors' dimension {dim} (IVF-PQ splits it into m parts)"
        )


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
) -> dict:
    """Search the generations with an approximate index of the shards; write the re-ranked top-``k``
    (``out_matches``, columns of the exact merge) and recall@1/@10 against exact search on a held-out
    sample of ``cfg['recall_queries']`` generations (``out_recall``). Returns the recall summary.

    ``cfg``: kind (ivfpq, hnsw), train_size, nlist, m, nbits, hnsw_m, nprobe, ef_search, candidates.
    """
    gen = read_embeddings(generations_npz)
    queries = np.ascontiguousarray(gen["embeddings"], dtype=np.float32)
    check_settings(cfg, queries.shape[1])
    kk = max(int(k), max(RECALL_K))
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
    n_indexed = add_shards(index, _indexed(shards))
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    cand = candidates(index, queries, max(cfg["candidates"], kk), cfg["nprobe"], cfg["ef_search"])
    sims, rows = rerank_from_shards(queries, cand, shards, kk)
    t_search = time.perf_counter() - t0
    with atomic_path(out_matches, suffix=".parquet") as tmp:
        frame = _frame(gen["ids"], sims[:, :k], rows[:, :k], shards, shard_size)
        for key, value in label.items():
            frame[key] = value
        frame.to_parquet(tmp, index=False)
    held = np.sort(
        np.random.default_rng([seed, 1]).choice(
            len(queries), min(cfg["recall_queries"], len(queries)), replace=False
        )
    )
    exact = exact_topk(queries[held], shards, kk)
    summary = {
        **label,
        **{f"recall@{r}": recall(rows[held], exact, r) for r in RECALL_K},
        "recall_queries": int(len(held)),
        "n_indexed": int(n_indexed),
        "train_size": int(len(sample)),
        "build_seconds": round(t_build, 2),
        "search_seconds": round(t_search, 2),
        "index": {key: cfg[key] for key in sorted(cfg)},
    }
    log.info("approximate index: %s", json.dumps(summary))
    with atomic_path(out_recall) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary
