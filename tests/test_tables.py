"""summary.csv, weightdiff.csv, baselines.csv from synthetic inputs in the formats of docs/formats.md."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffrep.config import PRESET_DEFAULTS
from diffrep.tables import SKIPPED, TableError, summary_table, weightdiff_table, write_tables

STUDY = "mini"
DS, EMB = "shapes", "pixel"
RUNS = [
    "base",
    "nodup.instancelevel_blip.none",
    "dup_both.instancelevel_blip.none",
    "dup_both.instancelevel_blip.allcaps",
]
PRESETS = {
    "default": {**PRESET_DEFAULTS, "steps": 20, "guidance_scale": 3.0, "scheduler": "ddim"},
    "rand_word_add": {
        **PRESET_DEFAULTS,
        "mitigation": "rand_word_add",
        "steps": 20,
        "guidance_scale": 3.0,
        "scheduler": "ddim",
    },
}
TRAIN_IDS = [f"img{i:03d}" for i in range(20)]
DUPLICATED = set(TRAIN_IDS[:4])


def _stats(values, dup_values, nodup_values):
    def s(x):
        x = np.asarray(x, float)
        if not x.size:
            return {
                "n": 0,
                "mean": None,
                "std": None,
                "p75": None,
                "p90": None,
                "p95": None,
                "frac_above": None,
                "source_match_rate": None,
            }
        return {
            "n": int(x.size),
            "mean": float(x.mean()),
            "std": float(x.std()),
            "p75": float(np.percentile(x, 75)),
            "p90": float(np.percentile(x, 90)),
            "p95": float(np.percentile(x, 95)),
            "frac_above": float((x > 0.5).mean()),
            "source_match_rate": 0.25,
        }

    return {
        **s(values),
        "threshold": 0.5,
        "duplicated": s(dup_values),
        "not_duplicated": s(nodup_values),
        "embedder": EMB,
        "preprocess": "pixel16",
        "preprocess_detail": "16 px",
        "index": "exact",
        "top_k": 3,
        "n_train": len(TRAIN_IDS),
    }


def _png(path, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def make_study(
    root: Path,
    runs=RUNS,
    presets=("default",),
    fid=True,
    clip=False,
    images=False,
    mitigated_presets=("rand_word_add",),
) -> dict:
    """Synthetic inputs of the tables and figure rules (similarity JSON + parquet, baselines, FID, CLIP
    score, weightdiff, plans, manifests), the rule's inputs / params pointing at them, and ``plan_ids``
    (the summary_figure rule's params). The files lie flat under opaque names (``files/003.json``):
    what a file is comes from the file or from the ids in params, never from its path."""
    r = root / "results" / STUDY
    flat = r / "files"
    flat.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10_000))

    def opaque(suffix):
        return flat / f"{next(counter):03d}{suffix}"

    rng = np.random.default_rng(0)
    inputs = {
        k: []
        for k in (
            "similarity",
            "matches",
            "baselines",
            "baseline_matches",
            "fid",
            "clipscore",
            "weightdiff",
            "model_manifests",
            "dataset_manifests",
            "plans",
        )
    }
    ids = {k: [] for k in ("fid", "clipscore", "weightdiff", "model_manifests", "dataset_manifests")}
    gens = []
    for run in runs:
        for gen in presets:
            if gen in mitigated_presets and not run.startswith("dup_both.instancelevel_blip.none"):
                continue
            gens.append((run, gen))
    for i, (run, gen) in enumerate(gens):
        n = 12
        dup = np.array([j < 3 for j in range(n)]) if run.startswith("dup") else np.zeros(n, bool)
        source = [TRAIN_IDS[j % 4] if d else TRAIN_IDS[4 + j] for j, d in enumerate(dup)]
        rows = []
        for j in range(n):
            top = [source[j], *rng.choice(TRAIN_IDS, 2, replace=False)]
            sims = sorted(rng.uniform(0.2, 0.9, 3), reverse=True)
            for k in range(3):
                rows.append(
                    {
                        "generation": f"{j:05d}.png",
                        "rank": k,
                        "train_id": top[k],
                        "similarity": np.float32(sims[k]),
                        "source_id": source[j],
                        "duplicated": bool(dup[j]),
                        "is_source": top[k] == source[j],
                    }
                )
        ident = {"dataset": DS, "embedder": EMB, "run": run, "preset": gen}
        m = pd.DataFrame(rows)
        top1 = m[m["rank"] == 0]
        matches, stats = opaque(".parquet"), opaque(".json")
        m.assign(**ident).to_parquet(matches)
        stats.write_text(
            json.dumps(
                {
                    **ident,
                    **_stats(
                        top1["similarity"],
                        top1[top1["duplicated"]]["similarity"],
                        top1[~top1["duplicated"]]["similarity"],
                    ),
                }
            )
        )
        inputs["similarity"].append(str(stats))
        inputs["matches"].append(str(matches))
        key = {"dataset": DS, "run": run, "preset": gen}
        if fid:
            p = opaque(".json")
            p.write_text(
                json.dumps({"fid": 100.0 + 10 * i, "n_generated": n, "n_reference": 20, "resolution": 32})
            )
            inputs["fid"].append(str(p))
            ids["fid"].append(key)
        if clip:
            p = opaque(".json")
            p.write_text(
                json.dumps({"clip_cosine_mean": 0.3, "clipscore": 30.0 - i, "n": n, "model": "clip_tiny"})
            )
            inputs["clipscore"].append(str(p))
            ids["clipscore"].append(key)
        if images:
            for j in range(n):
                _png(r / DS / "generations" / run / gen / f"{j:05d}.png", seed=100 * i + j)
    bl_matches, bl_stats = opaque(".parquet"), opaque(".json")
    bl_sims = rng.uniform(0.3, 0.6, len(TRAIN_IDS))
    pd.DataFrame(
        {
            "dataset": DS,
            "embedder": EMB,
            "train_id": TRAIN_IDS,
            "match_id": TRAIN_IDS[1:] + TRAIN_IDS[:1],
            "similarity": bl_sims,
        }
    ).to_parquet(bl_matches)
    bl_stats.write_text(
        json.dumps({"dataset": DS, "embedder": EMB, **_stats(bl_sims, [], []), "n": len(TRAIN_IDS)})
    )
    inputs["baselines"].append(str(bl_stats))
    inputs["baseline_matches"].append(str(bl_matches))
    for run in runs:
        if run == "base":
            continue
        p = opaque(".parquet")
        names = [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "mid_block.resnets.0.conv1.weight",
            "conv_in.weight",
            "up_blocks.1.attentions.0.proj_in.weight",
        ]
        comp = ["attn1", "attn2", "other", "other", "other"]
        blk = ["down_blocks.0", "down_blocks.0", "mid_block", "conv_in", "up_blocks.1"]
        l2 = [0.1, 0.3, 0.2, 0.05, None]
        pd.DataFrame(
            {
                "tensor": names,
                "component": comp,
                "block": blk,
                "shape": ["32x32"] * 5,
                "base_shape": ["32x32"] * 4 + ["16x32"],
                "numel": [1024] * 5,
                "l1": [x * 10 if x else None for x in l2],
                "l1_mean": [x / 100 if x else None for x in l2],
                "l2": l2,
                "rel_l2": [x / 2 if x else None for x in l2],
                "cosine": [0.99, 0.95, 0.98, 1.0, None],
                "shape_mismatch": [False] * 4 + [True],
                "status": ["ok"] * 4 + ["shape_mismatch"],
            }
        ).to_parquet(p)
        inputs["weightdiff"].append(str(p))
        ids["weightdiff"].append({"dataset": DS, "run": run})
    plan_ids = []
    for plan in sorted({"nodup" if run == "base" else run.split(".")[0] for run in runs}):
        p = opaque(".parquet")
        dup = [plan != "nodup" and t in DUPLICATED for t in TRAIN_IDS]
        pd.DataFrame(
            {"id": TRAIN_IDS, "duplicated": dup, "weight": [5.0 if d else 1.0 for d in dup]}
        ).to_parquet(p)
        inputs["plans"].append(str(p))
        plan_ids.append(
            {
                "dataset": DS,
                "plan": plan,
                "runs": [run for run in runs if ("nodup" if run == "base" else run.split(".")[0]) == plan],
            }
        )
    model_manifest, dataset_manifest = opaque(".sha256"), opaque(".sha256")
    model_manifest.write_text("ab" * 32 + "  mini_sd/unet/x.safetensors\n")
    dataset_manifest.write_text("cd" * 32 + "  images/img000.png\n")
    inputs["model_manifests"], ids["model_manifests"] = [str(model_manifest)], ["mini_sd"]
    inputs["dataset_manifests"], ids["dataset_manifests"] = [str(dataset_manifest)], [DS]
    if images:
        for j, t in enumerate(TRAIN_IDS):
            _png(root / f"resources/data/{DS}/images/{t}.png", seed=10_000 + j)
        pd.DataFrame({"id": TRAIN_IDS, "file": [f"{t}.png" for t in TRAIN_IDS]}).to_parquet(
            root / f"resources/data/{DS}/metadata.parquet"
        )
    params = {
        "study": STUDY,
        "presets": {g: PRESETS[g] for g in presets},
        "base_model": "mini_sd",
        "fid": fid,
        "clipscore": clip,
        "ids": ids,
    }
    outputs = {k: str(r / "tables" / f"{k}.csv") for k in ("summary", "weightdiff", "baselines")}
    return {
        "root": root,
        "R": r,
        "inputs": inputs,
        "params": params,
        "outputs": outputs,
        "plan_ids": plan_ids,
    }


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path, presets=("default", "rand_word_add"))


def test_summary_has_one_row_per_setting_with_settings_and_provenance(study):
    write_tables(study["inputs"], study["outputs"], study["params"])
    s = pd.read_csv(study["outputs"]["summary"])
    assert len(s) == len(RUNS) + 1  # + the rand_word_add preset on dup_both.instancelevel_blip.none
    assert set(s["study"]) == {"mini"}
    row = s[(s["run"] == "dup_both.instancelevel_blip.allcaps") & (s["preset"] == "default")].iloc[0]
    assert (row["duplication"], row["conditioning"], row["train_mitigation"]) == (
        "dup_both",
        "instancelevel_blip",
        "allcaps",
    )
    assert (row["inference_mitigation"], row["scheduler"], row["guidance_scale"], row["steps"]) == (
        "none",
        "ddim",
        3.0,
        20,
    )
    mit = s[s["preset"] == "rand_word_add"].iloc[0]
    assert mit["inference_mitigation"] == "rand_word_add" and mit["train_mitigation"] == "none"
    base = s[s["run"] == "base"].iloc[0]
    assert base["duplication"] == "base" and base["conditioning"] == "base"
    # the statistics are the JSON's, split columns included
    js = json.loads(Path(study["inputs"]["similarity"][1]).read_text())
    r = s[(s["run"] == js["run"]) & (s["preset"] == js["preset"])].iloc[0]
    assert r["p95"] == pytest.approx(js["p95"]) and r["n_generations"] == 12
    assert r["not_duplicated_mean"] == pytest.approx(js["not_duplicated"]["mean"])
    assert pd.isna(base["duplicated_mean"])  # empty split: empty, never 0
    # provenance: embedder, preprocessing, short manifest hashes
    assert row["embedder"] == "pixel" and row["preprocess"] == "pixel16"
    want = hashlib.sha256(Path(study["inputs"]["model_manifests"][0]).read_bytes()).hexdigest()[:12]
    assert row["model_manifest_sha256"] == want and len(row["dataset_manifest_sha256"]) == 12
    assert row["train_baseline_p95"] > 0
    fids = sorted(s["fid"].astype(float))
    assert fids[0] == 100.0
    # each FID file is its id's: the i-th generation set's FID is 100 + 10 i
    order = [(i["run"], i["preset"]) for i in study["params"]["ids"]["fid"]]
    by_setting = s.set_index(["run", "preset"])["fid"].astype(float)
    assert [by_setting[k] for k in order] == [100.0 + 10 * i for i in range(len(order))]


def test_disabled_clipscore_says_skipped(study):
    write_tables(study["inputs"], study["outputs"], study["params"])
    s = pd.read_csv(study["outputs"]["summary"])
    assert set(s["clipscore"]) == {SKIPPED} and set(s["clip_model"]) == {SKIPPED}


def test_enabled_metric_without_its_file_is_an_error(tmp_path):
    st = make_study(tmp_path, clip=False)
    with pytest.raises(
        TableError, match="clipscore is enabled but no CLIP-score file for dataset shapes, run base"
    ):
        summary_table(
            st["inputs"]["similarity"],
            {},
            {},
            st["inputs"]["baselines"],
            fid_enabled=False,
            clipscore_enabled=True,
        )


def test_clipscore_values_when_enabled(tmp_path):
    st = make_study(tmp_path, clip=True)
    write_tables(st["inputs"], st["outputs"], {**st["params"], "clipscore": True})
    s = pd.read_csv(st["outputs"]["summary"])
    assert pd.api.types.is_numeric_dtype(s["clipscore"]) and s["clipscore"].max() == 30.0


def test_weightdiff_aggregates_per_run_component_block(study):
    write_tables(study["inputs"], study["outputs"], study["params"])
    w = pd.read_csv(study["outputs"]["weightdiff"])
    runs = [r for r in RUNS if r != "base"]
    assert sorted(set(w["run"])) == sorted(runs)
    one = w[w["run"] == runs[0]]
    d0 = one[(one["block"] == "down_blocks.0")]
    assert set(d0["component"]) == {"attn1", "attn2"}
    assert d0.set_index("component").loc["attn2", "l2"] == pytest.approx(0.3)
    up = one[one["block"] == "up_blocks.1"].iloc[0]
    assert up["n_tensors"] == 0 and up["n_not_compared"] == 1  # shape mismatch counted, not crashed on
    assert set(w["duplication"]) <= {"nodup", "dup_both"}


def test_weightdiff_block_l2_is_the_norm_of_the_whole_difference(tmp_path):
    p = tmp_path / "any_name.parquet"
    pd.DataFrame(
        {
            "tensor": ["a", "b"],
            "component": ["other"] * 2,
            "block": ["mid_block"] * 2,
            "l1": [3.0, 4.0],
            "l2": [3.0, 4.0],
            "cosine": [1.0, 0.5],
            "numel": [1, 1],
            "rel_l2": [0.1, 0.2],
        }
    ).to_parquet(p)
    w = weightdiff_table({("shapes", "nodup.nolevel.none"): p}, "mini")
    assert (w.iloc[0]["dataset"], w.iloc[0]["run"], w.iloc[0]["duplication"]) == (
        "shapes",
        "nodup.nolevel.none",
        "nodup",
    )
    assert w.iloc[0]["l2"] == pytest.approx(5.0) and w.iloc[0]["l1"] == pytest.approx(7.0)
    assert w.iloc[0]["cosine_min"] == pytest.approx(0.5)


def test_baselines_table(study):
    write_tables(study["inputs"], study["outputs"], study["params"])
    b = pd.read_csv(study["outputs"]["baselines"])
    assert list(b[["dataset", "embedder"]].iloc[0]) == [DS, EMB] and b.iloc[0]["n"] == len(TRAIN_IDS)


def test_a_bad_statistics_file_is_named(study):
    bad = Path(study["inputs"]["similarity"][0])
    ident = {k: json.loads(bad.read_text())[k] for k in ("dataset", "embedder", "run", "preset")}
    bad.write_text(json.dumps({**ident, "n": 3}))
    with pytest.raises(TableError, match=f"{bad}: key 'mean' missing"):
        write_tables(study["inputs"], study["outputs"], study["params"])
    assert not Path(study["outputs"]["summary"]).exists()


def test_metric_conventions_and_clipscore_bg_reach_the_summary(tmp_path):
    """Each FID / CLIP-score number carries the convention its file records; the CLIP-score training-set
    baseline (clipscore_bg) is matched by the dataset its file names."""
    st = make_study(tmp_path, clip=True)
    for p in st["inputs"]["fid"]:
        Path(p).write_text(json.dumps({**json.loads(Path(p).read_text()), "convention": "upstream"}))
    for p in st["inputs"]["clipscore"]:
        Path(p).write_text(json.dumps({**json.loads(Path(p).read_text()), "convention": "upstream"}))
    bg = st["R"] / "files" / "clip_bg.json"
    bg.write_text(
        json.dumps({"clipscore": 0.31, "clip_cosine_mean": 0.31, "dataset": DS, "convention": "upstream"})
    )
    write_tables(
        {**st["inputs"], "clipscore_bg": [str(bg)]}, st["outputs"], {**st["params"], "clipscore": True}
    )
    s = pd.read_csv(st["outputs"]["summary"])
    assert set(s["fid_convention"]) == {"upstream"} and set(s["clipscore_convention"]) == {"upstream"}
    assert set(s["clipscore_bg"]) == {0.31}
    st = make_study(tmp_path / "off", clip=False)
    write_tables(st["inputs"], st["outputs"], st["params"])
    s = pd.read_csv(st["outputs"]["summary"])
    assert set(s["fid_convention"]) == {"pytorch-fid"}  # files written before conventions existed
    assert set(s["clipscore_convention"]) == {SKIPPED} and set(s["clipscore_bg"]) == {SKIPPED}


def test_statistics_written_before_they_said_what_they_are_ask_for_a_rerun(study):
    old = Path(study["inputs"]["similarity"][0])
    stats = json.loads(old.read_text())
    old.write_text(json.dumps({k: v for k, v in stats.items() if k not in ("dataset", "run", "preset")}))
    with pytest.raises(
        TableError, match=f"{old} does not say its dataset, run, preset.*snakemake --forcerun retrieve"
    ):
        write_tables(study["inputs"], study["outputs"], study["params"])


def test_inputs_and_their_ids_must_pair_up(study):
    study["params"]["ids"]["fid"].pop()
    with pytest.raises(TableError, match="input 'fid': 5 file.s. but 4 id.s. in params.ids.fid"):
        write_tables(study["inputs"], study["outputs"], study["params"])
    study["params"]["ids"]["fid"].append({"run": "base", "preset": "default"})
    with pytest.raises(TableError, match=r"params.ids.fid: .* lacks one of \['dataset', 'run', 'preset'\]"):
        write_tables(study["inputs"], study["outputs"], study["params"])


def test_a_pretrained_run_is_a_row_labelled_pretrained_with_its_own_model(tmp_path):
    """A pretrained-<model> run's row: duplication, conditioning, train_mitigation 'pretrained'; its
    model and that model's manifest hash in the provenance columns (not the base model's)."""
    paths, manifests = [], {}
    for run in ("base", "pretrained-mini_sdxl_turbo"):
        ident = {"dataset": DS, "embedder": EMB, "run": run, "preset": "default"}
        p = tmp_path / f"{run}.json"
        p.write_text(json.dumps({**ident, **_stats([0.5, 0.6], [], [0.5, 0.6])}))
        paths.append(p)
    for model, text in (("mini_sd", "ab"), ("mini_sdxl_turbo", "ef")):
        manifests[model] = tmp_path / f"{model}.sha256"
        manifests[model].write_text(text * 32 + "  x\n")
    s = summary_table(
        paths,
        manifests={"models": manifests, "datasets": {}},
        presets=PRESETS,
        base_model="mini_sd",
        fid_enabled=False,
        clipscore_enabled=False,
    )
    rows = s.set_index("run")
    turbo, base = rows.loc["pretrained-mini_sdxl_turbo"], rows.loc["base"]
    assert (turbo["duplication"], turbo["conditioning"], turbo["train_mitigation"]) == ("pretrained",) * 3
    assert (base["duplication"], base["base_model"]) == ("base", "mini_sd")
    assert turbo["base_model"] == "mini_sdxl_turbo"
    assert (
        turbo["model_manifest_sha256"]
        == hashlib.sha256(manifests["mini_sdxl_turbo"].read_bytes()).hexdigest()[:12]
    )
    assert base["model_manifest_sha256"] != turbo["model_manifest_sha256"]
