"""faiss retrieval and the similarity statistics of DCR's diff_retrieval.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep import embeddings as E
from diffrep import similarity as S
from test_embeddings import make_dataset, make_sscd_standin, smooth_image

torch.set_num_threads(1)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- statistics by hand


def test_top1_statistics_match_a_hand_computed_example():
    stats = S.top1_statistics([0.2, 1.0, 0.5, 0.8, 0.6, 0.4], threshold=0.5)
    # mean 3.5/6; population std; numpy linear percentiles of the sorted 0.2 0.4 0.5 0.6 0.8 1.0:
    # p75 at position 3.75 -> 0.6 + 0.75*0.2 = 0.75; p90 at 4.5 -> 0.9; p95 at 4.75 -> 0.95
    mean = 3.5 / 6
    std = np.sqrt(sum((v - mean) ** 2 for v in [0.2, 1.0, 0.5, 0.8, 0.6, 0.4]) / 6)
    assert stats["n"] == 6
    assert stats["mean"] == pytest.approx(mean)
    assert stats["std"] == pytest.approx(std)
    assert stats["p75"] == pytest.approx(0.75)
    assert stats["p90"] == pytest.approx(0.9)
    assert stats["p95"] == pytest.approx(0.95)
    assert stats["frac_above"] == pytest.approx(3 / 6)  # 0.5 itself is not above (upstream: x0 > 0.5)
    empty = S.top1_statistics([], 0.5)
    assert empty["n"] == 0 and empty["mean"] is None


def test_statistics_split_by_prompt_duplication_and_source_match():
    matches = pd.DataFrame(
        {
            "generation": ["g0", "g0", "g1", "g1", "g2", "g2", "g3", "g3"],
            "rank": [0, 1] * 4,
            "train_id": ["a", "b", "b", "a", "c", "a", "a", "c"],
            "similarity": [0.9, 0.3, 0.7, 0.6, 0.4, 0.2, 0.55, 0.5],
            "source_id": ["a", "a", "c", "c", "c", "c", "b", "b"],
            "duplicated": [True, True, True, True, False, False, False, False],
        }
    )
    matches["is_source"] = matches["train_id"] == matches["source_id"]
    s = S.similarity_statistics(matches, threshold=0.5)
    assert s["n"] == 4 and s["mean"] == pytest.approx((0.9 + 0.7 + 0.4 + 0.55) / 4)
    assert s["frac_above"] == pytest.approx(3 / 4)
    assert s["source_match_rate"] == pytest.approx(2 / 4)  # g0 -> a (its source), g2 -> c
    assert s["duplicated"]["n"] == 2 and s["duplicated"]["mean"] == pytest.approx(0.8)
    assert s["duplicated"]["std"] == pytest.approx(0.1)
    assert s["duplicated"]["source_match_rate"] == pytest.approx(0.5)
    assert s["not_duplicated"]["mean"] == pytest.approx(0.475)
    assert s["not_duplicated"]["frac_above"] == pytest.approx(0.5)
    assert s["not_duplicated"]["source_match_rate"] == pytest.approx(0.5)
    # a nodup run: nothing duplicated, but the split follows the study's duplicated set (the control)
    control = S.similarity_statistics(matches.assign(dup_set=matches["duplicated"], duplicated=False), 0.5)
    assert control["duplicated"]["n"] == 2 and control["duplicated"]["mean"] == pytest.approx(0.8)
    assert control["not_duplicated"]["mean"] == pytest.approx(0.475)


def test_train_baseline_excludes_self_and_keeps_true_duplicates():
    emb = unit([[1, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0, 1]])  # rows 2 and 3 are duplicates
    table, stats = S.train_baseline(["a", "b", "c", "d"], emb)
    got = dict(zip(table["train_id"], zip(table["match_id"], table["similarity"])))
    assert got["a"][0] == "b" and got["a"][1] == pytest.approx(0.8)
    assert got["b"][0] == "a"
    assert got["c"] == ("d", pytest.approx(1.0)) and got["d"] == ("c", pytest.approx(1.0))
    assert stats["mean"] == pytest.approx(0.9) and stats["n"] == 4 and stats["frac_above"] == 1.0


# ---------------------------------------------------------------- faiss


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    train, queries = unit(rng.normal(size=(200, 16))), unit(rng.normal(size=(30, 16)))
    sims, rows = S.search(S.build_index(train), queries, 5)
    brute = queries @ train.T
    np.testing.assert_array_equal(rows[:, 0], brute.argmax(1))
    np.testing.assert_allclose(sims, -np.sort(-brute, axis=1)[:, :5], atol=1e-5)


def test_index_free_exact_search_equals_the_index_search_without_copying_the_references():
    """websearch's shard search: same top-k as an IndexFlatIP, with ties (duplicated rows) included,
    k capped at the reference count, and float32 references not copied on the Python side (faiss.knn
    itself reads them in place; an IndexFlatIP would hold its own copy)."""
    import tracemalloc

    rng = np.random.default_rng(1)
    refs = unit(rng.normal(size=(300, 16))).astype(np.float32)
    refs[7] = refs[3]  # a tie
    queries = np.vstack([refs[3], unit(rng.normal(size=(40, 16)))]).astype(np.float32)
    expected = S.search(S.build_index(refs), queries, 10)
    got = S.exact_search(refs, queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    assert set(got[1][0, :2]) == {3, 7}
    assert S.exact_search(refs[:4], queries, 10)[1].shape == (41, 4)
    big = unit(rng.normal(size=(20_000, 64))).astype(np.float32)  # 5 MB
    tracemalloc.start()
    S.exact_search(big, queries[:, :1].repeat(64, 1), 5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < big.nbytes / 4, peak
    with pytest.raises(S.SimilarityError, match="non-empty n × d"):
        S.exact_search(np.zeros((0, 16), np.float32), queries, 3)


def test_ivf_recall_against_exact_search():
    """The approximate index finds the exact top-1 for nearly all queries; all of them when every
    cluster is probed."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    train = unit(centres[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 32)))
    queries = unit(train[rng.integers(0, 4000, 300)] + 0.1 * rng.normal(size=(300, 32)))
    _, exact = S.search(S.build_index(train, "exact"), queries, 1)
    _, approx = S.search(S.build_index(train, "ivf", nlist=32, nprobe=4), queries, 1)
    recall = float(np.mean(approx[:, 0] == exact[:, 0]))
    assert recall >= 0.9, recall
    _, full = S.search(S.build_index(train, "ivf", nlist=32, nprobe=32), queries, 1)
    assert np.array_equal(full[:, 0], exact[:, 0])
    with pytest.raises(S.SimilarityError, match="unknown index 'hnsw'"):
        S.build_index(train, "hnsw")


# ---------------------------------------------------------------- planted copies, end to end


def _generations(tmp_path, data, plant):
    """A generation folder: ``plant`` maps generation index -> (image, source id)."""
    gen = tmp_path / "gen"
    gen.mkdir()
    rows = []
    for i, (im, source) in enumerate(plant):
        im.save(gen / f"{i:05d}.png")
        rows.append(
            {
                "index": i,
                "file": f"{i:05d}.png",
                "source_id": source,
                "duplicated": i % 2 == 0,
                "prompt": "p",
                "prompt_used": "p",
                "seed": i,
            }
        )
    pd.DataFrame(rows).to_parquet(gen / "prompts.parquet")
    return gen


def _perturbed(path, rng):
    """Crop 4 px off each side, resize back, add Gaussian noise (σ = 6 grey levels)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    im = im.crop((4, 4, w - 4, h - 4)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("embedder", ["pixel", "sscd"])
def test_planted_copies_are_found_as_top1(tmp_path, embedder):
    data = make_dataset(tmp_path / "data", n=40, seed=3)
    rng = np.random.default_rng(4)
    images = data / "images"
    plant = [
        (Image.open(images / "img007.png").convert("RGB"), "img007"),  # pixel-for-pixel copy
        (_perturbed(images / "img021.png", rng), "img021"),  # cropped and noised copy
        (smooth_image(rng), "img005"),  # a new image
        (_perturbed(images / "img033.png", rng), "img002"),  # a copy of an image that is not its prompt's
    ]
    gen = _generations(tmp_path, data, plant)
    if embedder == "pixel":
        cfg, model = {"type": "pixel", "size": 16}, None
    else:
        cfg, model = (
            {"type": "sscd", "model": "standin", "preprocess": "upstream"},
            make_sscd_standin(tmp_path / "standin"),
        )
    E.embed_to_file(
        cfg,
        tmp_path / "train.npz",
        images_dir=images,
        metadata=data / "metadata.parquet",
        model_dir=model,
        device="cpu",
    )
    E.embed_to_file(cfg, tmp_path / "gen.npz", generations=gen, model_dir=model, device="cpu")
    ident = {"dataset": "shapes", "embedder": embedder, "run": "base", "preset": "default"}
    stats = S.retrieve_files(
        tmp_path / "train.npz",
        tmp_path / "gen.npz",
        gen,
        tmp_path / "m.parquet",
        tmp_path / "s.json",
        {"top_k": 3, "threshold": 0.5, "index": "exact"},
        identity=ident,
    )
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert list(m.columns) == [
        "dataset",
        "embedder",
        "run",
        "preset",
        "generation",
        "rank",
        "train_id",
        "similarity",
        "source_id",
        "duplicated",
        "dup_set",
        "is_source",
    ]
    assert m[list(ident)].drop_duplicates().to_dict("records") == [ident]  # the table says what it is
    assert len(m) == 4 * 3 and list(m["rank"][:3]) == [0, 1, 2]
    top1 = m[m["rank"] == 0].set_index("generation")
    assert top1.loc["00000.png", "train_id"] == "img007"
    assert top1.loc["00000.png", "similarity"] == pytest.approx(1.0, abs=1e-5)
    assert top1.loc["00001.png", "train_id"] == "img021"
    assert top1.loc["00003.png", "train_id"] == "img033"
    assert top1.loc["00001.png", "similarity"] > m[m["generation"] == "00001.png"]["similarity"].iloc[1]
    assert list(top1["is_source"]) == [True, True, False, False]
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert on_disk["source_match_rate"] == pytest.approx(0.5)
    assert on_disk["duplicated"]["n"] == 2 and on_disk["not_duplicated"]["n"] == 2
    assert {k: on_disk[k] for k in ident} == ident
    assert on_disk["embedder_model"] == E.read_embeddings(tmp_path / "gen.npz")["embedder"]
    assert on_disk["preprocess"] == {"pixel": "pixel16", "sscd": "upstream"}[embedder]
    assert on_disk["preprocess_detail"].startswith(
        {"pixel": "Resize 16", "sscd": "Resize 256, CenterCrop 224"}[embedder]
    )
    assert on_disk["top_k"] == 3 and on_disk["n_train"] == 40 and on_disk["index"] == "exact"


def test_train_baseline_files_and_mismatched_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    emb = unit(rng.normal(size=(10, 8)))
    E.write_embeddings(tmp_path / "train.npz", [f"t{i}" for i in range(10)], emb, "pixel(size=8)", "pixel8")
    stats = S.train_baseline_files(
        tmp_path / "train.npz",
        tmp_path / "b.json",
        tmp_path / "b.parquet",
        {"threshold": 0.5},
        identity={"dataset": "shapes", "embedder": "pixel"},
    )
    table = pd.read_parquet(tmp_path / "b.parquet")
    assert (stats["dataset"], stats["embedder"], stats["embedder_model"]) == (
        "shapes",
        "pixel",
        "pixel(size=8)",
    )
    assert S.read_identified(tmp_path / "b.parquet", S.BASELINE_IDENTITY, "train_baseline")[0] == (
        "shapes",
        "pixel",
    )
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(np.sort(table["similarity"]), np.sort(sims.max(1)), atol=1e-5)
    assert stats["n"] == 10 and json.loads((tmp_path / "b.json").read_text())["preprocess"] == "pixel8"
    E.write_embeddings(tmp_path / "gen.npz", ["g0"], emb[:1], "sscd:sscd_disc_large", "upstream")
    with pytest.raises(S.SimilarityError, match="embedder differs.*train.npz.*pixel.*gen.npz.*sscd"):
        S.retrieve_files(
            tmp_path / "train.npz",
            tmp_path / "gen.npz",
            tmp_path,
            tmp_path / "m.parquet",
            tmp_path / "s.json",
            {},
            identity={"dataset": "d", "embedder": "e", "run": "base", "preset": "p"},
        )
    assert not (tmp_path / "m.parquet").exists() and not (tmp_path / "s.json").exists()


# ---------------------------------------------------------------- the rules, on planted inputs


@pytest.mark.slow
def test_metric_rules_run_on_planted_inputs(tmp_path):
    """embed_train / embed_generations / retrieve / train_baseline / fid_reference / weightdiff run
    through Snakemake on a micro workflow copy whose upstream artifacts are planted (the rules that
    make them are not allowed to run); a planted copy is found, shared outputs are made once."""
    import hashlib

    from safetensors.torch import save_file

    from conftest import copy_workflow, snakemake
    from diffrep import fid as F

    wf = copy_workflow(tmp_path)
    data = make_dataset(wf / "resources/data/micro_shapes", n=12, seed=5)
    meta = pd.read_parquet(data / "metadata.parquet")
    (data / "images.sha256").write_text(
        "".join(
            f"{hashlib.sha256((data / 'images' / f).read_bytes()).hexdigest()}  images/{f}\n"
            for f in meta["file"]
        )
    )
    models = wf / "resources/models"
    (models / "fid_inception_micro").mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in F.random_inception_state_dict(0).items()},
        str(models / "fid_inception_micro/inception.safetensors"),
    )
    (models / "fid_inception_micro.sha256").write_text("0  fid_inception_micro/inception.safetensors\n")
    unet = {
        "conv_in.weight": torch.ones(4, 4, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.ones(4, 4),
    }
    for folder in (
        models / "micro_sd",
        wf / "results/micro/micro_shapes/models/dup_both.instancelevel_blip.none",
    ):
        (folder / "unet").mkdir(parents=True)
        save_file(unet, str(folder / "unet/diffusion_pytorch_model.safetensors"))
        unet = {**unet, "conv_in.weight": torch.ones(4, 4, 3, 3) * 1.1}
    rng = np.random.default_rng(6)
    runs = ["base", "dup_both.instancelevel_blip.none"]
    for run in runs:
        gen = wf / f"results/micro/micro_shapes/generations/{run}/default"
        gen.mkdir(parents=True)
        for i in range(4):
            im = Image.open(data / "images/img003.png") if i == 1 else smooth_image(rng)
            im.save(gen / f"{i:05d}.png")
        pd.DataFrame(
            {
                "index": range(4),
                "file": [f"{i:05d}.png" for i in range(4)],
                "source_id": ["img000", "img003", "img005", "img007"],
                "duplicated": [False, True, False, True],
                "prompt": ["p"] * 4,
                "prompt_used": ["p"] * 4,
                "seed": range(4),
            }
        ).to_parquet(gen / "prompts.parquet")
    R = "results/micro/micro_shapes"
    (wf / R / "duplication").mkdir(parents=True)
    for style in ("nodup", "dup_both"):  # img003 and img007 form the duplicated set
        pd.DataFrame(
            {
                "id": meta["id"],
                "duplicated": meta["id"].isin(["img003", "img007"]) & (style != "nodup"),
                "weight": 1.0,
                "dup_set": meta["id"].isin(["img003", "img007"]),
            }
        ).to_parquet(wf / R / f"duplication/{style}.parquet")
    targets = [f"{R}/similarity/pixel/{run}/default.json" for run in runs] + [
        f"{R}/similarity/pixel/train_baseline.json",
        f"{R}/fid/reference.npz",
        f"{R}/weightdiff/dup_both.instancelevel_blip.none.parquet",
    ]
    proc = snakemake(
        [
            "--cores",
            "2",
            "--configfile",
            "tests/micro/config.yaml",
            "--replace-workflow-config",
            "--allowed-rules",
            "embed_train",
            "embed_generations",
            "retrieve",
            "train_baseline",
            "fid_reference",
            "weightdiff",
            "--",
            *targets,
        ],
        cwd=wf,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("rule embed_train:") == 1 and proc.stderr.count("rule fid_reference:") == 1
    for run in runs:
        stats = json.loads((wf / f"{R}/similarity/pixel/{run}/default.json").read_text())
        assert (
            stats["n"] == 4
            and stats["embedder_model"] == "pixel(size=8)"
            and stats["source_match_rate"] >= 0.25
        )
        # the rule wrote what each file is (its wildcards), for readers that never parse paths
        assert [stats[k] for k in S.MATCHES_IDENTITY] == ["micro_shapes", "pixel", run, "default"]
        m = pd.read_parquet(wf / f"{R}/similarity/pixel/{run}/default.parquet")
        assert S.read_identified(
            wf / f"{R}/similarity/pixel/{run}/default.parquet", S.MATCHES_IDENTITY, "retrieve"
        )[0] == ("micro_shapes", "pixel", run, "default")
        top1 = m[(m["generation"] == "00001.png") & (m["rank"] == 0)].iloc[0]
        assert top1["train_id"] == "img003" and top1["similarity"] == pytest.approx(1.0, abs=1e-5)
        assert top1["is_source"] and top1["duplicated"]
        assert stats["dup_set_share"] == pytest.approx(2 / 12) and stats["top1_in_dup_set"] >= 0.25
    ref = F.read_reference(wf / f"{R}/fid/reference.npz")
    assert ref["n"] == 12 and ref["resolution"] == 32
    wd = pd.read_parquet(wf / f"{R}/weightdiff/dup_both.instancelevel_blip.none.parquet")
    assert list(wd.loc[wd["l2"] > 0, "tensor"]) == ["conv_in.weight"]


def test_top1_in_the_duplicated_set_counts_matches_not_prompts():
    matches = pd.DataFrame(
        {
            "generation": ["g0", "g0", "g1", "g2", "g3"],
            "rank": [0, 1, 0, 0, 0],
            "train_id": ["a", "b", "b", "a", "c"],
            "similarity": [0.9, 0.5, 0.8, 0.7, 0.6],
        }
    )
    nodup_plan = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "duplicated": False,
            "weight": 1.0,
            "dup_set": [True, False, False, False],
        }
    )
    s = S.dup_set_statistics(matches, nodup_plan)
    assert s == {"top1_in_dup_set": 0.5, "dup_set_share": 0.25}  # g0 and g2 of 4 matched a
    old_plan = nodup_plan.drop(columns="dup_set").assign(duplicated=[False, True, True, False])
    assert S.dup_set_statistics(matches, old_plan)["top1_in_dup_set"] == 0.5  # b and c
