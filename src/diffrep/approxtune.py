"""Search settings of an approximate index chosen for a recall target, measured on held-out queries.

A user asks for a recall (``recall_target``, e.g. 0.99) instead of setting the search breadth by hand:
on a seeded sample of queries whose exact top-k is known, :func:`tune` widens the search until the
sample's recall@1 and recall@k reach the target, in a fixed, deterministic order:

1. the breadth (IVF-PQ: ``nprobe`` cells visited; HNSW: ``efSearch``) is doubled from its start value
   up to its ceiling, the re-ranked ``candidates`` kept at their start value;
2. if the target is still missed at the ceiling breadth, ``candidates`` is doubled up to its ceiling;
3. once met in step 2, the breadth is halved back while the target still holds at those candidates
   (the leanest breadth of the doubling sequence for them).

If every setting up to both ceilings misses the target, the result says so (``met`` false) with every
setting tried; the caller fails, or writes the best one marked as below the target.

faiss's ``ParameterSpace.explore`` is not used: it times every operating point (the choice would
depend on the machine's load, so a re-run could pick other settings) and cannot see the exact
re-ranking of candidates read back from the shards, which is what the recall here counts.

The recall of a setting is counted from its candidates, without re-ranking them: the re-ranking orders
candidates by exact similarity, ties by the lower global index, as the exact search does, so each
exact top-r neighbour found among the candidates is among the re-ranked top-r. Recall@r of the
re-ranked result is therefore the share of each query's exact top-r that is among its candidates
(:func:`found_recall`); no descriptor needs to be read back while tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

BREADTH = {"ivfpq": "nprobe", "hnsw": "ef_search"}  # the search-breadth setting of each index kind


@dataclass(frozen=True)
class Trial:
    """One setting tried: breadth (nprobe or efSearch), candidates re-ranked, and the sample's recall."""

    breadth: int
    candidates: int
    recall_1: float
    recall_k: float

    def met(self, target: float) -> bool:
        """Whether recall@1 and recall@k both reach ``target``."""
        return self.recall_1 >= target and self.recall_k >= target

    def as_dict(self, breadth_name: str) -> dict:
        """``{breadth_name: …, "candidates": …, "recall@1": …, "recall@k": …}`` (what the outputs write)."""
        d = asdict(self)
        return {
            breadth_name: d["breadth"],
            "candidates": d["candidates"],
            "recall@1": d["recall_1"],
            "recall@k": d["recall_k"],
        }


@dataclass
class Tuning:
    """The outcome of :func:`tune`: the chosen trial, whether it meets the target, every trial in order,
    and the ceiling ``(breadth, candidates)`` it stopped at."""

    chosen: Trial
    met: bool
    trials: list[Trial]
    target: float
    ceiling: tuple[int, int]


def doublings(start: int, ceiling: int) -> list[int]:
    """``start, 2·start, 4·start, …`` up to ``ceiling``, the last value clipped to it (``[ceiling]`` if
    ``start >= ceiling``)."""
    start, ceiling = int(start), int(ceiling)
    if start >= ceiling:
        return [ceiling]
    values = [start]
    while values[-1] < ceiling:
        values.append(min(2 * values[-1], ceiling))
    return values


def found_recall(cand: np.ndarray, exact_rows: np.ndarray, r: int) -> float:
    """Recall@``r`` of the re-ranked result of candidates ``cand`` (queries × c global indices, -1 =
    none) against the exact top-``r`` (``exact_rows``, queries × ≥ r): the mean share of each query's
    exact top-``r`` among its candidates (an exact slot of -1, a collection smaller than r, counts as
    found, as diffrep.approxsearch.recall counts it)."""
    hits = [
        sum(1 for e in exact[:r] if e < 0 or e in found) / r
        for found, exact in zip(map(set, cand.tolist()), exact_rows.tolist())
    ]
    return float(np.mean(hits))


def tune(
    search: Callable[[int, int], np.ndarray],
    exact_rows: np.ndarray,
    k: int,
    start: tuple[int, int],
    ceiling: tuple[int, int],
    target: float,
) -> Tuning:
    """The search settings for ``target`` (module docstring: the order in which settings are tried).

    ``search(breadth, candidates)`` returns the candidates (queries × candidates global indices) of the
    held-out queries at those settings; ``exact_rows`` (queries × k) is their exact top-``k``.
    ``start`` and ``ceiling`` are ``(breadth, candidates)``; candidates are at least ``k``.
    """
    trials: dict[tuple[int, int], Trial] = {}

    def trial(breadth: int, cand: int) -> Trial:
        if (breadth, cand) not in trials:
            found = search(breadth, cand)
            trials[(breadth, cand)] = Trial(
                breadth, cand, found_recall(found, exact_rows, 1), found_recall(found, exact_rows, k)
            )
        return trials[(breadth, cand)]

    breadths = doublings(start[0], ceiling[0])
    cands = doublings(max(start[1], k), max(ceiling[1], k))
    done = _first_met((trial(b, cands[0]) for b in breadths), target)
    if done is None:
        done = _first_met((trial(breadths[-1], c) for c in cands), target)
        if done is not None:  # step 3: the leanest breadth that keeps the target at these candidates
            for b in reversed(breadths[:-1]):
                if not trial(b, done.candidates).met(target):
                    break
                done = trials[(b, done.candidates)]
    tried, top = list(trials.values()), (breadths[-1], cands[-1])
    if done is None:  # the best trial (the first of equals: the cheapest tried)
        best = max(tried, key=lambda t: (min(t.recall_1, t.recall_k), t.recall_1))
        return Tuning(best, False, tried, target, top)
    return Tuning(done, True, tried, target, top)


def _first_met(trials, target: float) -> Trial | None:
    """The first trial of an iterable that meets ``target`` (the rest are not run), or None."""
    return next((t for t in trials if t.met(target)), None)


def describe_trials(tuning: Tuning, breadth_name: str, k: int) -> str:
    """The settings tried and their recall, one ``breadth/candidates: recall@1, recall@k`` per trial."""
    return "; ".join(
        f"{breadth_name} {t.breadth}, candidates {t.candidates}: recall@1 {t.recall_1:.4f}, "
        f"recall@{k} {t.recall_k:.4f}"
        for t in tuning.trials
    )
