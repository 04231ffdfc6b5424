"""The approximate index over shard files: re-ranked results like the exact merge, recall written beside."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from diffrep.approxsearch import ApproxSearchError
from diffrep.embeddings import l2_normalise, write_embeddings
from diffrep.webapprox import ShardFiles, approx_search_files, exact_topk, rerank_from_shards, table_columns
from diffrep.websearch import webscale_table
from diffrep.webshards import ShardError

SHARD = 500
CFG = dict(
    kind="ivfpq",
    train_size=1500,
    nlist=16,
    m=8,
    nbits=8,
    hnsw_m=16,
    nprobe=8,
    ef_search=64,
    candidates=100,
    recall_queries=60,
    recall_target=0.99,
    accept_below_target=False,
    max_nprobe=None,
    max_ef_search=4096,
    max_candidates=3200,
)  # fmt: skip (the schema's defaults where it has them)


def _write_shards(tmp_path, ref, empty=(), size=SHARD):
    shards = []
    for s in range(-(-len(ref) // size)):
        idx = np.arange(s * size, min((s + 1) * size, len(ref)))
        if s in empty:
            idx = idx[:0]
        keys = [f"{i:09d}" for i in idx]
        npz, meta = tmp_path / f"{s:05d}.npz", tmp_path / f"{s:05d}.parquet"
        write_embeddings(npz, keys, ref[idx] if len(idx) else np.zeros((0, 0), np.float32), "t", "p")
        pd.DataFrame(
            {"key": keys, "index": idx, "url": [f"u{i}" for i in idx], "caption": [f"c{i}" for i in idx]}
        ).to_parquet(meta)
        shards.append(ShardFiles(s, str(npz), str(meta)))
    return shards


@pytest.fixture
def collection(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 32)).astype(np.float32)
    ref = l2_normalise(centres[rng.integers(0, 30, 2000)] + 0.6 * rng.standard_normal((2000, 32))).astype(
        np.float32
    )
    planted = np.array([3, 777, 1250, 1999])  # one per shard
    gen = l2_normalise(
        np.vstack(
            [
                ref[planted] + 0.05 * rng.standard_normal((4, 32)),
                centres[rng.integers(0, 30, 56)] + 0.6 * rng.standard_normal((56, 32)),
            ]
        )
    ).astype(np.float32)
    write_embeddings(tmp_path / "gen.npz", [f"g{i}" for i in range(60)], gen, "t", "p")
    return tmp_path, ref, gen, planted


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approx_search_finds_planted_copies_and_writes_its_recall(collection, kind):
    tmp_path, ref, gen, planted = collection
    shards = _write_shards(tmp_path, ref)
    label = {"search": "s", "model": "m", "collection": "c", "embedder": "e"}
    summary = approx_search_files(
        tmp_path / "gen.npz",
        shards,
        SHARD,
        {**CFG, "kind": kind},
        5,
        1,
        tmp_path / "am.parquet",
        tmp_path / "ar.json",
        label,
    )
    assert json.loads((tmp_path / "ar.json").read_text()) == summary
    assert summary["recall@1"] >= 0.99 and summary["recall@k"] >= 0.99 and summary["k"] == 5, summary
    assert summary["n_indexed"] == 2000 and summary["recall_queries"] == 60 and summary["model"] == "m"
    assert summary["below_target"] is False and summary["missing_shards"] == []
    m = pd.read_parquet(tmp_path / "am.parquet")
    assert len(m) == 60 * 5 and (m.groupby("generation")["rank"].max() == 4).all()
    top1 = m[m["rank"] == 0].set_index("generation")
    assert top1.loc[["g0", "g1", "g2", "g3"], "index"].tolist() == planted.tolist()
    assert top1.loc[["g0", "g1", "g2", "g3"], "shard"].tolist() == [0, 1, 2, 3]
    assert top1.loc["g1", ["url", "caption"]].tolist() == ["u777", "c777"]
    # re-ranked similarities are the exact inner products
    exact = np.einsum(
        "nd,nd->n", ref[m["index"].to_numpy()], gen[m["generation"].str[1:].astype(int).to_numpy()]
    )
    np.testing.assert_allclose(m["similarity"], exact, atol=1e-5)


def test_rerank_and_exact_skip_an_empty_shard(collection):
    tmp_path, ref, gen, planted = collection
    shards = _write_shards(tmp_path, ref, empty={1})
    exact = exact_topk(gen[:4], shards, 3)
    assert exact[:, 0].tolist() == [3, int(exact[1, 0]), 1250, 1999] and not 500 <= exact[1, 0] < 1000
    cand = np.array([[3, 600, 4, -1]])  # 600 is in the empty shard: no descriptor, not returned
    sims, rows = rerank_from_shards(gen[:1], cand, shards, 3)
    assert rows.tolist() == [[3, 4, -1]]


def test_an_ivfpq_m_that_does_not_divide_the_dimension_is_named(collection):
    tmp_path, ref, _, _ = collection
    shards = _write_shards(tmp_path, ref)
    with pytest.raises(ApproxSearchError, match=r"approx.m: 7 does not divide the descriptors' dimension 32"):
        approx_search_files(
            tmp_path / "gen.npz", shards, SHARD, {**CFG, "m": 7}, 5, 1, tmp_path / "a", tmp_path / "b", {}
        )


# ---------------------------------------------------------------- the recall target on planted data

# Planted collections, their design fixed before the first run: 5 503 references of 32 dimensions in
# shards of 1 000 (the last holds 503); clustered (55 centres, each reference 0.8 centre + 0.6 noise,
# normalised, as bench/webscale.py's clustered data), random (uniform on the sphere), and the mixture
# (60 % of the rows in 100 clusters, 40 % random). Generations: 20 near-copies (reference + 0.05
# noise) and 100 noisy copies (0.6 reference + 0.4 noise), of seeded random references.
N_REF, DIM, K = 5503, 32, 5
PLANTED_CFG = {**CFG, "train_size": 2560, "nlist": 64, "nprobe": 1, "candidates": 10, "recall_queries": 100}


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_references(kind: str, rng) -> np.ndarray:
    """N_REF × DIM unit descriptors of one planted design (clustered, random or mixture)."""
    noise = _unit(rng.standard_normal((N_REF, DIM)))
    if kind == "random":
        return noise
    n_centres = 55 if kind == "clustered" else 100
    centres = _unit(rng.standard_normal((n_centres, DIM)))
    clustered = _unit(0.8 * centres[rng.integers(0, n_centres, N_REF)] + 0.6 * noise)
    if kind == "clustered":
        return clustered
    in_clusters = rng.permutation(N_REF) < int(0.6 * N_REF)
    return np.where(in_clusters[:, None], clustered, _unit(rng.standard_normal((N_REF, DIM))))


def planted_generations(ref: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(120 generations, the reference row each was made from): 20 near-copies, 100 noisy copies."""
    src = rng.choice(len(ref), 120, replace=False)
    noise = rng.standard_normal((120, DIM))
    near = ref[src[:20]] + 0.05 * noise[:20]
    noisy = 0.6 * ref[src[20:]] + 0.4 * _unit(noise[20:])
    return _unit(np.vstack([near, noisy])), src


def _planted_collection(tmp_path, kind: str, seed: int = 0):
    rng = np.random.default_rng([seed, len(kind)])
    ref = planted_references(kind, rng)
    gen, src = planted_generations(ref, rng)
    write_embeddings(tmp_path / "gen.npz", [f"g{i}" for i in range(len(gen))], gen, "t", "p")
    return _write_shards(tmp_path, ref, size=1000), ref, gen, src


def brute_force_topk(ref: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-``k`` rows per query in float64: highest similarity first, ties by the lower row."""
    sims = queries.astype(np.float64) @ ref.astype(np.float64).T
    return np.array([np.lexsort((np.arange(len(ref)), -row))[:k] for row in sims])


def brute_force_recall(matches, ref, gen, sample, r: int) -> float:
    """Recall@``r`` of approx_matches.parquet on the generations ``sample`` (ids ``g<row>``), against
    :func:`brute_force_topk`: the mean share of each exact top-``r`` found in the written top-``r``."""
    written = matches.sort_values(["generation", "rank"]).groupby("generation")["index"].apply(list)
    exact = brute_force_topk(ref, gen[[int(g[1:]) for g in sample]], r)
    return float(np.mean([len(set(written[g][:r]) & set(e)) / r for g, e in zip(sample, exact)]))


def _run_planted(tmp_path, shards, cfg, **kw):
    label = {"search": "planted", "model": "m", "collection": "c", "embedder": "e"}
    return approx_search_files(
        tmp_path / "gen.npz",
        shards,
        1000,
        cfg,
        K,
        1,
        tmp_path / "am.parquet",
        tmp_path / "ar.json",
        label,
        **kw,
    )


@pytest.mark.parametrize(
    "data, kind", [("clustered", "ivfpq"), ("random", "ivfpq"), ("mixture", "ivfpq"), ("mixture", "hnsw")]
)
def test_recall_target_is_met_on_planted_data_and_is_what_brute_force_measures(tmp_path, data, kind):
    shards, ref, gen, src = _planted_collection(tmp_path, data)
    breadth = "nprobe" if kind == "ivfpq" else "ef_search"
    summary = _run_planted(tmp_path, shards, {**PLANTED_CFG, "kind": kind, "ef_search": 4})
    m = pd.read_parquet(tmp_path / "am.parquet")
    sample = summary["recall_sample"]
    assert len(sample) == 100 and summary["below_target"] is False and summary["n_indexed"] == N_REF
    assert summary["recall@1"] == brute_force_recall(m, ref, gen, sample, 1) >= 0.99
    assert summary["recall@k"] == brute_force_recall(m, ref, gen, sample, K) >= 0.99
    # the recall counted from the candidates while tuning is the re-ranked result's
    tried = {(t[breadth], t["candidates"]): t for t in summary["tuning"]}
    chosen = (summary[breadth], summary["candidates"])
    assert (tried[chosen]["recall@1"], tried[chosen]["recall@k"]) == (
        summary["recall@1"],
        summary["recall@k"],
    )
    # the leanest breadth of the doubling sequence: half of it at the same candidates missed the target
    start = 1 if kind == "ivfpq" else 4
    half = tried.get((chosen[0] // 2, chosen[1]))
    assert chosen[0] == start or min(half["recall@1"], half["recall@k"]) < 0.99, summary["tuning"]
    # every row says which settings and recall it comes from; every near-copy at top-1, in its shard
    assert set(m["below_target"]) == {False} and set(m["recall_target"]) == {0.99}
    assert (
        set(m[breadth]) == {chosen[0]}
        and set(m["candidates"]) == {chosen[1]}
        and set(m["missing_shards"]) == {""}
    )
    top1 = m[m["rank"] == 0].set_index("generation")
    near = [f"g{i}" for i in range(20)]
    assert top1.loc[near, "index"].tolist() == src[:20].tolist()
    assert top1.loc[near, "shard"].tolist() == (src[:20] // 1000).tolist()


OUT_OF_REACH = {**PLANTED_CFG, "max_nprobe": 2, "max_candidates": 20}  # 2 of 64 cells, 20 re-ranked
TRIAL = r"nprobe (\d+), candidates (\d+): recall@1 (\d\.\d{4}), recall@5 (\d\.\d{4})"


def test_a_target_out_of_reach_fails_with_the_recall_reached_and_the_settings_tried(tmp_path):
    shards, *_ = _planted_collection(tmp_path, "random")
    with pytest.raises(ApproxSearchError) as err:
        _run_planted(tmp_path, shards, OUT_OF_REACH)
    message = str(err.value)
    head, tried = message.split(" Settings tried: ")
    trials = [(int(b), int(c), float(r1), float(rk)) for b, c, r1, rk in re.findall(TRIAL, tried)]
    assert [t[:2] for t in trials] == [(1, 10), (2, 10), (2, 20)]  # breadth first, then candidates
    best = max(trials, key=lambda t: (min(t[2:]), t[2]))
    assert max(best[2:]) < 0.99
    assert head.startswith(
        "approximate index of search 'planted': recall target 0.99 not reached within the ceiling "
        f"(nprobe 2, candidates 20): recall@1 {best[2]:.4f}, recall@5 {best[3]:.4f} at nprobe {best[0]}, "
        f"candidates {best[1]}"
    ), message
    assert "approx.accept_below_target: true" in tried and "approx.max_candidates" in tried
    assert not (tmp_path / "am.parquet").exists() and not (tmp_path / "ar.json").exists()


def test_accept_below_target_writes_outputs_that_say_so(tmp_path):
    shards, ref, gen, _ = _planted_collection(tmp_path, "random")
    summary = _run_planted(tmp_path, shards, {**OUT_OF_REACH, "accept_below_target": True})
    m = pd.read_parquet(tmp_path / "am.parquet")
    assert json.loads((tmp_path / "ar.json").read_text()) == summary
    assert summary["below_target"] is True and summary["ceiling"] == {"nprobe": 2, "candidates": 20}
    assert summary["below_target_note"] == (
        "recall target 0.99 not reached; written because approx.accept_below_target is true"
    )
    sample = summary["recall_sample"]
    assert summary["recall@1"] == brute_force_recall(m, ref, gen, sample, 1) < 0.99
    assert summary["recall@k"] == brute_force_recall(m, ref, gen, sample, K) < 0.99
    assert set(m["below_target"]) == {True} and set(m["recall@1"]) == {summary["recall@1"]}
    table = webscale_table(
        [{"search": "planted", "rate": 0.2, "missing_shards": []}], [table_columns(summary)]
    )
    row = table.iloc[0]
    assert bool(row["approx_below_target"]) is True and row["approx_recall@1"] == summary["recall@1"]
    assert (row["approx_nprobe"], row["approx_candidates"]) == (summary["nprobe"], summary["candidates"])


def test_approximate_outputs_name_the_missing_shards(collection):
    tmp_path, ref, _, _ = collection
    shards = _write_shards(tmp_path, ref, empty={1})
    args = (tmp_path / "gen.npz", shards, SHARD, CFG, 5, 1, tmp_path / "am.parquet", tmp_path / "ar.json", {})
    stats = {s: tmp_path / f"{s:05d}_stats.json" for s in range(4)}  # shard 1: a recorded failed download
    for s, path in stats.items():
        path.write_text(json.dumps({"successes": 0 if s == 1 else 500, "error": "all links dead"}))
    with pytest.raises(ShardError, match=r"^approximate index: 1 of 4 shards have no result: 1; ") as err:
        approx_search_files(*args, stats_paths=stats)
    # the merge's advice, from the same helper: the recorded failure's files to delete
    assert str(stats[1]) in str(err.value) and "allow_missing_shards: true" in str(err.value)
    assert not (tmp_path / "am.parquet").exists()
    summary = approx_search_files(*args, allow_missing=True, stats_paths=stats)
    m = pd.read_parquet(tmp_path / "am.parquet")
    assert (
        summary["missing_shards"] == [1] == json.loads((tmp_path / "ar.json").read_text())["missing_shards"]
    )
    assert set(m["missing_shards"]) == {"1"} and summary["n_shards"] == 4 and summary["n_indexed"] == 1500
    assert not m["index"].between(500, 999).any()


def test_a_start_above_its_ceiling_is_named(collection):
    tmp_path, ref, _, _ = collection
    shards = _write_shards(tmp_path, ref)
    with pytest.raises(
        ApproxSearchError, match=r"approx.candidates: 100 is above approx.max_candidates: 50 "
    ):
        approx_search_files(
            tmp_path / "gen.npz",
            shards,
            SHARD,
            {**CFG, "max_candidates": 50},
            5,
            1,
            tmp_path / "a",
            tmp_path / "b",
            {},
        )


CONFIGS = [
    "config.yaml",
    "profiles/mini/study.yaml",
    "profiles/rehearsal/study.yaml",
    "profiles/showcase/study.yaml",
    "tests/micro/config.yaml",
    "tests/microshowcase/config.yaml",
]


def test_every_approximate_search_of_the_configs_aims_at_the_recall_target():
    schema = yaml.safe_load((REPO / "schemas/config.schema.yaml").read_text())
    search = schema["properties"]["webscale"]["properties"]["searches"]["items"]["properties"]
    defaults = {key: p.get("default") for key, p in search["approx"]["properties"].items()}
    assert defaults["recall_target"] == 0.99 and defaults["accept_below_target"] is False
    approx = [
        (path, s["name"], s["approx"])
        for path in CONFIGS
        for s in ((yaml.safe_load((REPO / path).read_text()) or {}).get("webscale") or {}).get("searches", [])
        if s.get("approx")
    ]
    assert [a[:2] for a in approx] == [
        ("profiles/mini/study.yaml", "mini_sd_web"),
        ("profiles/rehearsal/study.yaml", "sd14_laion_like_web"),
        ("tests/micro/config.yaml", "micro_sd_web"),
    ]
    for path, _, a in approx:
        settings = {**defaults, **a}
        assert settings["recall_target"] == 0.99 and not settings["accept_below_target"], path
