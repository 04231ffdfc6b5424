"""Approximate search with exact re-ranking: recall against exact search on held-out queries."""

import numpy as np
import pytest

from diffrep.approxsearch import (
    ApproxSearchError,
    add_shards,
    build_index,
    recall,
    search_reranked,
    training_sample,
)
from diffrep.embeddings import l2_normalise


def _clustered(rng, n, centres, noise):
    return l2_normalise(
        centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, centres.shape[1]))
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    ref = _clustered(rng, 6000, centres, 0.6)
    copies = l2_normalise(ref[rng.choice(6000, 100, replace=False)] + 0.05 * rng.standard_normal((100, 32)))
    fresh = _clustered(rng, 100, centres, 0.6)  # held out: neither in the reference nor the sample
    return ref, np.vstack([copies, fresh]).astype(np.float32)


def _exact(ref, queries, k):
    import faiss

    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref)
    return index.search(queries, k)


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_reranked_approximate_search_recall_against_exact(data, kind):
    ref, queries = data
    index = build_index(training_sample(ref, 2000, seed=1), kind, nlist=32, m=8, seed=1)
    shards = [(np.arange(s, min(s + 1000, len(ref))), ref[s : s + 1000]) for s in range(0, len(ref), 1000)]
    assert add_shards(index, shards) == len(ref)
    sims, rows = search_reranked(
        index, queries, 10, candidates=100, vectors_of=lambda ids: ref[ids], nprobe=8
    )
    exact_sims, exact_rows = _exact(ref, queries, 10)
    # re-ranked similarities are exact inner products of the returned rows
    np.testing.assert_allclose(sims, np.einsum("qkd,qd->qk", ref[rows], queries), atol=1e-5)
    assert recall(rows[:100], exact_rows[:100], 1) == 1.0  # every near-copy found at top-1
    assert recall(rows, exact_rows, 1) >= 0.99 and recall(rows, exact_rows, 10) >= 0.99
    if kind == "ivfpq":  # PQ codes alone (candidates = k) rank poorly: the exact re-ranking is what counts
        _, plain = search_reranked(
            index, queries, 10, candidates=10, vectors_of=lambda ids: ref[ids], nprobe=8
        )
        assert recall(plain, exact_rows, 10) < 0.8


def test_recall_counts_the_exact_neighbours_found():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall(np.array([[1, 9, 2], [7, 8, 9]]), exact, 1) == 0.5
    assert recall(np.array([[1, 9, 2], [7, 8, 9]]), exact, 3) == pytest.approx((2 / 3 + 0) / 2)


def test_bad_settings_are_named():
    sample = np.ones((10, 30), np.float32)
    with pytest.raises(ApproxSearchError, match="dimension 30 is not divisible by m=16"):
        build_index(sample, "ivfpq", m=16)
    with pytest.raises(ApproxSearchError, match="approximate index 'lsh'; allowed: ivfpq, hnsw"):
        build_index(sample, "lsh")
