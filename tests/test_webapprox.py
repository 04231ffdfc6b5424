"""The approximate index over shard files: re-ranked results like the exact merge, recall written beside."""

import json

import numpy as np
import pandas as pd
import pytest

from diffrep.approxsearch import ApproxSearchError
from diffrep.embeddings import l2_normalise, write_embeddings
from diffrep.webapprox import ShardFiles, approx_search_files, exact_topk, rerank_from_shards

SHARD = 500
CFG = dict(
    kind="ivfpq", train_size=1500, nlist=16, m=8, nbits=8, hnsw_m=16, nprobe=8, ef_search=64,
    candidates=100, recall_queries=60,
)  # fmt: skip


def _write_shards(tmp_path, ref, empty=()):
    shards = []
    for s in range(-(-len(ref) // SHARD)):
        idx = np.arange(s * SHARD, min((s + 1) * SHARD, len(ref)))
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
    assert summary["recall@1"] >= 0.99 and summary["recall@10"] >= 0.95, summary
    assert summary["n_indexed"] == 2000 and summary["recall_queries"] == 60 and summary["model"] == "m"
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
