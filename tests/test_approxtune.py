"""Search settings chosen for a recall target: the order of the settings tried, and the recall counted."""

import numpy as np
import pytest

from diffrep.approxsearch import recall
from diffrep.approxtune import describe_trials, doublings, found_recall, tune
from diffrep.webapprox import rerank


def test_doublings_stop_at_the_ceiling():
    assert doublings(1, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert doublings(100, 1000) == [100, 200, 400, 800, 1000]  # the last clipped to the ceiling
    assert doublings(64, 16) == [16] and doublings(16, 16) == [16]


def test_found_recall_is_the_share_of_the_exact_top_r_among_the_candidates():
    exact = np.array([[7, 3, 9], [1, 2, 4]])
    cand = np.array([[3, 9, 5, 8], [2, 5, 6, -1]])
    assert found_recall(cand, exact, 1) == 0.0  # 7 and 1 are not among the candidates
    assert found_recall(cand, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)


def _some_of(top: np.ndarray, n: int, size: int, rng) -> np.ndarray:
    """``size`` distinct candidates in random order: a random part of ``top`` and other rows of ``n``."""
    keep = top[rng.random(len(top)) < 0.6]
    others = rng.choice(np.setdiff1d(np.arange(n), top), size - len(keep), replace=False)
    return rng.permutation(np.r_[keep, others])


def test_found_recall_equals_the_recall_of_the_reranked_candidates():
    """Re-ranking orders candidates as the exact search does (similarity, ties by the lower index), so
    the recall counted from the candidates is the re-ranked result's: checked with exact ties."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 8))
    ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)).astype(np.float32)
    ref[50] = ref[10]  # identical descriptors: equal similarities, the lower index first
    queries = np.vstack([ref[10] + 0.01, rng.standard_normal((19, 8))]).astype(np.float32)
    sims = queries.astype(np.float64) @ ref.T.astype(np.float64)
    exact = np.array([np.lexsort((np.arange(200), -row))[:5] for row in sims])
    cand = np.array([_some_of(exact[i], 200, 12, rng) for i in range(20)])
    _, rows = rerank(queries, cand, [(np.arange(200), ref)], 5)
    for r in (1, 5):
        assert found_recall(cand, exact, r) == recall(rows, exact, r)
    assert exact[0, :2].tolist() == [10, 50]


def _fake_search(breadth: int, candidates: int) -> np.ndarray:
    """One query whose exact top-5 is 0..4: the best is found from breadth 4, the other four once
    40 candidates are re-ranked at breadth 2 or more."""
    found = [0] if breadth >= 4 else []
    found += [1, 2, 3, 4] if candidates >= 40 and breadth >= 2 else []
    return np.array([found + [99] * (candidates - len(found))])


EXACT = np.array([[0, 1, 2, 3, 4]])


def test_tune_raises_the_breadth_then_the_candidates_then_trims_the_breadth():
    t = tune(_fake_search, EXACT, 5, start=(1, 10), ceiling=(16, 80), target=0.99)
    assert [(x.breadth, x.candidates) for x in t.trials] == [
        (1, 10), (2, 10), (4, 10), (8, 10), (16, 10),  # breadth up to its ceiling
        (16, 20), (16, 40),  # then the candidates, until the target is met
        (8, 40), (4, 40), (2, 40),  # then the breadth back down while it holds (2 misses the best)
    ]  # fmt: skip
    assert t.met and (t.chosen.breadth, t.chosen.candidates) == (4, 40) and t.ceiling == (16, 80)
    assert (t.chosen.recall_1, t.chosen.recall_k) == (1.0, 1.0)


def test_tune_stops_at_the_ceiling_with_the_best_setting_tried():
    t = tune(_fake_search, EXACT, 5, start=(1, 10), ceiling=(16, 20), target=0.99)
    assert not t.met and [(x.breadth, x.candidates) for x in t.trials][-2:] == [(16, 10), (16, 20)]
    # no setting finds more than the best match (recall@5 0.2): the first (cheapest) of those that do
    assert (t.chosen.breadth, t.chosen.candidates, t.chosen.recall_1, t.chosen.recall_k) == (4, 10, 1.0, 0.2)
    assert (
        describe_trials(t, "nprobe", 5).split("; ")[2]
        == "nprobe 4, candidates 10: recall@1 1.0000, recall@5 0.2000"
    )


def test_candidates_start_at_k():
    t = tune(_fake_search, EXACT, 5, start=(4, 2), ceiling=(4, 2), target=0.99)
    assert [(x.breadth, x.candidates) for x in t.trials] == [(4, 5)]
