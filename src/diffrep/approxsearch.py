"""Approximate search for collections that exact search cannot hold, with exact re-ranking and its recall.

An inner-product faiss index (``ivfpq``: IndexIVFPQ, or ``hnsw``: IndexHNSWFlat) is trained on a seeded
sample of the reference descriptors, the shards are added one at a time under their global row
indices, and each query's ``candidates`` approximate neighbours are re-ranked by their exact inner
products (the descriptors fetched back from the shards). Its quality is measured, not assumed:
:func:`recall` compares it with exact search on a held-out sample of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

KINDS = ("ivfpq", "hnsw")


class ApproxSearchError(ValueError):
    """An approximate-index setting or input that cannot be used; the message names it."""


def training_sample(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` rows (without replacement; all rows when there are fewer)."""
    rng = np.random.default_rng(seed)
    take = rng.choice(len(vectors), size=min(int(n), len(vectors)), replace=False)
    return np.ascontiguousarray(vectors[np.sort(take)], dtype=np.float32)


def build_index(
    sample: np.ndarray,
    kind: str = "ivfpq",
    nlist: int = 256,
    m: int = 16,
    nbits: int = 8,
    hnsw_m: int = 32,
    seed: int = 0,
):
    """An untrained-then-trained inner-product index of ``kind`` on ``sample`` (n × d float32).

    ``ivfpq``: ``nlist`` clusters, ``m`` sub-quantisers of ``nbits`` bits (d must be divisible by m);
    ``hnsw``: ``hnsw_m`` links per node (no training). Vectors are added with :func:`add_shards`.
    """
    import faiss

    d = sample.shape[1]
    if kind == "ivfpq":
        if d % m:
            raise ApproxSearchError(f"ivfpq: dimension {d} is not divisible by m={m}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(
            quantizer, d, min(int(nlist), len(sample)), int(m), int(nbits), faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = int(seed)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return index
    if kind == "hnsw":
        return faiss.IndexIDMap(faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT))
    raise ApproxSearchError(f"approximate index {kind!r}; allowed: {', '.join(KINDS)}")


def add_shards(index, shards: Iterable[tuple[np.ndarray, np.ndarray]]) -> int:
    """Add ``(global indices, descriptors)`` of each shard, one shard in memory at a time; return ntotal."""
    for ids, vectors in shards:
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index.ntotal


def search_reranked(
    index,
    queries: np.ndarray,
    k: int,
    candidates: int,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    nprobe: int = 32,
    ef_search: int = 128,
):
    """Top-``k`` (similarities, global indices) per query: ``candidates`` approximate neighbours
    re-ranked by their exact inner products (``vectors_of(ids)`` returns their descriptors)."""
    import faiss

    if candidates < k:
        raise ApproxSearchError(f"candidates ({candidates}) must be at least k ({k})")
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if hasattr(inner, "nprobe"):
        inner.nprobe = int(nprobe)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef_search)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, cand = index.search(q, int(candidates))
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    rows = np.full((len(q), k), -1, dtype=np.int64)
    for i, ids in enumerate(cand):
        ids = ids[ids >= 0]
        exact = vectors_of(ids) @ q[i]
        order = np.lexsort((ids, -exact))[:k]  # highest similarity first, ties by the lower index
        sims[i, : len(order)], rows[i, : len(order)] = exact[order], ids[order]
    return sims, rows


def recall(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Recall@k: the mean fraction of each query's exact top-``k`` found in its approximate top-``k``
    (for k = 1: the fraction of queries whose exact best match is the approximate best match)."""
    hits = [len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits))
