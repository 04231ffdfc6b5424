"""The memorization benchmark in the workflow: config checks, dry runs, tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, job_counts, snakemake
from diffrep import config as dconf
from diffrep import membench
from diffrep.config import ConfigError


def validated(cfg: dict) -> dict:
    """Validate like the workflow does (schema with defaults, then the derived defaults)."""
    from snakemake.utils import validate

    validate(cfg, str(REPO / "schemas/config.schema.yaml"))
    return dconf.fill_defaults(cfg)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["memorization"]["benchmarks"]["sd21_membench"].update(model="sd35_medium"),
            "model 'sd35_medium' is of family 'sd3'",
        ),
        (
            lambda c: c["memorization"]["benchmarks"]["sd21_membench"].update(prompt_files=["nope"]),
            "memorization.benchmarks.sd21_membench.prompt_files: 'nope' is not defined",
        ),
        (
            lambda c: c["memorization"]["benchmarks"]["sd21_membench"].update(presets=["fast"]),
            "memorization.benchmarks.sd21_membench.presets: 'fast' is not defined",
        ),
        (
            lambda c: c["memorization"]["prompt_files"]["coco_captions"]["source"].pop("url"),
            "memorization.prompt_files.coco_captions.source: type 'url' needs 'url'",
        ),
        (
            lambda c: c["memorization"]["prompt_files"].update(
                mine={"source": {"type": "dataset", "dataset": "laion_5k", "rows": [0, 4]}}
            ),
            "memorization.prompt_files.mine.source.dataset: 'laion_5k' is not defined",
        ),
        (
            lambda c: c["memorization"]["prompt_files"].update(
                mine={"source": {"type": "dataset", "dataset": "laion10k"}}
            ),
            "memorization.prompt_files.mine.source: type 'dataset' needs 'rows'",
        ),
        (
            lambda c: c["experiments"][3].update(train_mitigation=["memthreshold"]),
            "train_mitigation memthreshold needs train_mitigations.mem_threshold",
        ),
    ],
)
def test_memorization_config_errors_name_the_key(paper_config, edit, message):
    edit(paper_config)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dconf.check(validated(paper_config))


def test_paper_memorization_blocks_dry_run(workflow_copy):
    proc = snakemake(["-n", "memorization"], cwd=workflow_copy, check=True)
    counts = job_counts(proc.stdout)
    assert counts["memorization_prompts"] == 4 and counts["memorization_detect"] == 2
    assert counts["memorization_generate"] == counts["memorization_replication"] == 14
    assert (
        "resources/models/sd14" in proc.stdout and "results/paper/memorization/sd21_membench" in proc.stdout
    )


def test_mini_memorization_dry_run(workflow_copy):
    counts = job_counts(
        snakemake(["-n", "--profile", "profiles/mini", "memorization"], cwd=workflow_copy, check=True).stdout
    )
    assert counts["memorization_detect"] == 1 and counts["memorization_generate"] == 7
    assert counts["memorization_quality"] == 7 and counts["fid_reference"] == 1


def test_replication_rates_per_prompt_and_label(tmp_path):
    from PIL import Image

    truth = tmp_path / "truth.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(truth)
    sims = pd.DataFrame(
        {
            "prompt_id": [0, 0, 0, 1, 1, 2],
            "prompt": ["a", "a", "a", "b", "b", "c"],
            "label": ["VM", "VM", "VM", "TM", "TM", "TM"],
            "similarity": [0.9, 0.6, 0.4, 0.8, 0.2, float("nan")],
        }
    )
    per = membench.per_prompt(sims, [0.5, 0.7]).set_index("prompt_id")
    assert per.loc[0, "frac_above_0.5"] == pytest.approx(2 / 3) and per.loc[
        0, "frac_above_0.7"
    ] == pytest.approx(1 / 3)
    assert per.loc[0, "sim_max"] == 0.9 and not per.loc[2, "available"]
    rates = membench.rates(per.reset_index(), [0.5, 0.7])
    assert rates["VM"]["frac_above_0.5"] == pytest.approx(2 / 3)
    assert rates["TM"] == {
        "n_prompts": 2,
        "n_unavailable": 1,
        "frac_above_0.5": 0.5,
        "frac_above_0.7": 0.5,
        "sim_mean": 0.5,
    }
    assert rates["all"]["n_prompts"] == 3 and rates["all"]["frac_above_0.5"] == pytest.approx(
        (2 / 3 + 0.5) / 2
    )


def test_generation_plans_seed_memorised_prompts_with_images_only():
    prompts = pd.DataFrame(
        {
            "prompt_id": [0, 1, 2, 3, 4],
            "prompt": ["m1", "m2", "n1", "n2", "n3"],
            "label": ["VM", "TM", "none", "none", "none"],
            "images": [["x.png"], [], [], [], []],
        }
    )
    plans = membench.generation_plans(prompts, {"n_seeds": 3, "n_general": 2, "general_seeds": 2}, seed=0)
    mem, gen = plans["memorized"], plans["general"]
    assert list(mem["prompt"]) == ["m1"] * 3 and len(set(mem["seed"])) == 3
    assert (
        len(gen) == 4
        and set(gen["label"]) == {"none"}
        and list(gen["file"])[:2] == ["00000.png", "00001.png"]
    )
    settings = {"n_seeds": 3, "n_general": 2, "general_seeds": 2}
    again = membench.generation_plans(prompts, settings, seed=0)
    assert again["memorized"]["seed"].tolist() == mem["seed"].tolist()  # seeded
    assert again["general"]["prompt"].tolist() == gen["prompt"].tolist()


def test_unavailable_ground_truth_is_kept_for_detection_and_counted(tmp_path):
    from PIL import Image

    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    truth = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype="uint8")).save(truth)
    Image.open(truth).save(gen_dir / "00000.png")
    Image.open(truth).save(gen_dir / "00001.png")
    plan = pd.DataFrame(
        {
            "index": [0, 1],
            "file": ["00000.png", "00001.png"],
            "prompt_id": [0, 1],
            "prompt": ["a", "b"],
            "label": ["VM", "TM"],
            "seed": [1, 2],
            "images": [[str(truth)], ["https://example.invalid/gone.jpg"]],
        }
    )
    plan.to_parquet(gen_dir / "prompts.parquet")
    summary = membench.replication_files(
        gen_dir, {"type": "pixel", "size": 8}, tmp_path / "t.parquet", tmp_path / "s.json", [0.5]
    )
    assert summary["rates"]["VM"]["frac_above_0.5"] == 1.0  # an exact copy
    assert summary["rates"]["TM"] == {
        "n_prompts": 1,
        "n_unavailable": 1,
        "frac_above_0.5": None,
        "sim_mean": None,
    }
    assert json.loads((tmp_path / "s.json").read_text())["rates"] == summary["rates"]


def prepared_dataset(root, captions):
    """A prepared dataset's images/ and metadata.parquet (docs/formats.md) with these caption lists."""
    from PIL import Image

    from diffrep.datasets import METADATA_COLUMNS

    (root / "images").mkdir(parents=True)
    files = [f"{i:03d}.jpg" for i in range(len(captions))]
    for i, f in enumerate(files):
        Image.new("RGB", (20 + i, 16), (10 * i, 0, 0)).save(root / "images" / f)
    meta = pd.DataFrame(
        {"id": [f"{i:03d}" for i in range(len(files))], "file": files, "class": "", "captions": captions}
    )
    meta = meta.assign(width=16, height=16, sha256="0" * 64, source="test")[list(METADATA_COLUMNS)]
    meta.to_parquet(root / "metadata.parquet")
    return root / "metadata.parquet", root / "images"


def test_a_prompt_file_of_dataset_rows_is_grounded_in_its_pictures(tmp_path, monkeypatch):
    """source type dataset (the rehearsal's prompts): rows [start, stop) of a prepared dataset, each
    picture's first caption the prompt and the picture its ground truth, found from the workdir."""
    monkeypatch.chdir(tmp_path)
    meta, images = prepared_dataset(
        tmp_path / "resources/data/ds", [["a cat", "x"], ["a dog"], ["a cow"], []]
    )
    source = {"type": "dataset", "dataset": "ds", "rows": [1, 3]}
    source.update(metadata="resources/data/ds/metadata.parquet", images="resources/data/ds/images")
    raw = membench.fetch_prompt_file(source, "resources/prompts/.raw")
    assert raw.as_posix() == "resources/prompts/.raw/ds_1-3.csv"
    table = membench.normalise_prompt_file(raw, "p.parquet", "mine", default_label="VM")
    assert table["prompt"].tolist() == ["a dog", "a cow"] and set(table["label"]) == {"VM"}
    assert table["images"].tolist() == [
        ["resources/data/ds/images/001.jpg"],
        ["resources/data/ds/images/002.jpg"],
    ]
    assert all(membench.image_available(i[0]) for i in table["images"])
    with pytest.raises(
        membench.MemorizationError, match=r"rows \[2, 9\) of .*metadata.parquet: the dataset has 4"
    ):
        membench.dataset_prompt_file(meta, images, (2, 9), tmp_path / "x.csv")
    with pytest.raises(
        membench.MemorizationError, match=r"metadata.parquet: picture\(s\) 003 have no caption"
    ):
        membench.dataset_prompt_file(meta, images, (2, 4), tmp_path / "x.csv")


def test_benchmark_needs_both_kinds_of_prompt():
    with pytest.raises(membench.MemorizationError, match="benchmark x: the prompt files hold labels"):
        membench.check_prompts(pd.DataFrame({"label": ["VM", "TM"]}), "benchmark x")


def test_ground_truth_urls_are_fetched_and_dead_ones_listed(tmp_path, web):
    from PIL import Image

    root, base = web
    Image.new("RGB", (8, 8), (10, 200, 30)).save(root / "a.png")
    src = tmp_path / "nemo.csv"
    src.write_text(
        f";Caption;URL;type\n0;alive;{base}/a.png;VM\n1;dead;{base}/gone.png;TM\n2;control;;none\n"
    )
    table = membench.normalise_prompt_file(
        src,
        tmp_path / "out.parquet",
        "nemo",
        columns={"prompt": "Caption", "label": "type", "images": "URL"},
        sep=";",
        image_cache=tmp_path / "cache",
    )
    assert membench.image_available(table["images"][0][0]) and table["image_failures"][0] == []
    assert table["images"][1] == [] and table["image_failures"][1] == [
        f"{base}/gone.png: HTTP 404 File not found"
    ]
    prompts = membench.benchmark_prompts([tmp_path / "out.parquet"])
    plans = membench.generation_plans(prompts, {"n_seeds": 2, "n_general": 1, "general_seeds": 1}, 0)
    assert plans["memorized"]["prompt"].tolist() == ["alive", "alive"]  # the dead one: detection only
    assert plans["unavailable"]["prompt"].tolist() == ["dead"]  # ... and counted in the rates
    assert list(prompts["label"]) == ["VM", "TM", "none"]


def test_tables_take_the_detection_statistics_the_detect_rule_wrote(tmp_path):
    """memorization_tables concatenates each benchmark's detection_sets.csv (one computation of the
    subset statistics: a recomputation with another subset seed gave another AUC, 0.819 vs 0.806)."""
    from diffrep.memorization import set_statistics

    rng = np.random.default_rng(0)
    det = pd.DataFrame(
        {
            "metric": np.concatenate([rng.normal(1.4, 0.1, 8), rng.normal(1.1, 0.3, 32)]),
            "label": ["VM"] * 8 + ["none"] * 32,
        }
    )
    det["memorized"] = det["label"] != "none"
    sets = set_statistics(det, n_subsets=5, seed=12345)
    sets.insert(0, "benchmark", "planted")
    sets.to_csv(tmp_path / "sets.csv", index=False)
    rep = {"mitigation": "none", "rates": {"all": {"n_prompts": 8, "frac_above_0.5": 0.875}}}
    (tmp_path / "rep.json").write_text(json.dumps(rep))
    (tmp_path / "quality.json").write_text(json.dumps({"fid": 334.0, "n_generated": 40}))
    pd.DataFrame({"prompt_id": [0], "frac_above_0.5": [0.9]}).to_parquet(tmp_path / "per.parquet")
    outputs = {k: tmp_path / f"{k}.csv" for k in ("detection", "mitigations", "prompts")}
    inputs = {
        "sets": [tmp_path / "sets.csv"],
        "replication": [tmp_path / "rep.json"],
        "quality": [tmp_path / "quality.json"],
        "per_prompt": [tmp_path / "per.parquet"],
    }
    membench.write_tables(inputs, {"runs": [("planted", "default")], "study": "mini"}, outputs)
    table = pd.read_csv(outputs["detection"])
    assert table["study"].tolist() == ["mini"] * len(sets)
    assert table["auc"].tolist() == pytest.approx(sets["auc"].tolist())
    mitigations = pd.read_csv(outputs["mitigations"]).iloc[0]
    assert (mitigations["all_frac_above_0.5"], mitigations["fid"], mitigations["clipscore"]) == (
        0.875,
        334.0,
        "skipped",
    )


def test_tradeoff_figure_has_one_legend_entry_per_preset(tmp_path, monkeypatch):
    """Presets that agree (default, delayed and opposite guidance at 0.875 and FID ~336) are told
    apart by their legend entry, not by labels written on top of each other."""
    from diffrep import memfigures

    drawn = {}
    monkeypatch.setattr(memfigures, "save_figure", lambda fig, png: drawn.update(fig=fig))
    table = pd.DataFrame(
        {
            "benchmark": ["planted"] * 3,
            "preset": ["default", "delayed_guidance", "rand_word_add"],
            "all_frac_above_0.5": [0.875, 0.8375, 0.2375],
            "fid": [337.5, 334.8, "skipped"],
        }
    )
    memfigures.tradeoff_figure(table, 0.5, "mini", tmp_path / "t.png")
    ax = drawn["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["planted: default", "planted: delayed_guidance", "planted: rand_word_add"]
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert len(points) == 3 and points[:2] == [(337.5, 0.875), (334.8, 0.8375)]  # no FID: not drawn
    assert ax.get_xlabel() == "FID of general prompts (lower is better)"


MICRO_MEMORIZATION = """
models:
  micro_sd_planted:
    kind: diffusers
    sources:
      - {type: build, builder: mini_sd, options: {micro: true, planted: 3, planted_controls: 4, planted_fraction: 0.25}}
generation:
  presets:
    prompt_optimization: {mitigation: prompt_optimization, optim_steps: 2, steps: 4, guidance_scale: 3.0, scheduler: ddim}
    attention_rescale: {mitigation: attention_rescale, attention_scale: 1.25, steps: 4, guidance_scale: 3.0, scheduler: ddim}
memorization:
  detection: {steps: 4, first_steps: 1, n_generations: 2, guidance_scale: 3.0, n_subsets: 2}
  replication: {n_seeds: 2, thresholds: [0.5], embedder: pixel, n_general: 4, general_seeds: 1}
  prompt_files:
    planted:
      description: the planted micro model's prompts
      source: {type: model, model: micro_sd_planted, path: memorization/prompts.csv}
  benchmarks:
    planted:
      model: micro_sd_planted
      prompt_files: [planted]
      presets: [default, prompt_optimization, attention_rescale]
      fid_dataset: micro_shapes
"""


def test_memorization_lane_runs_on_a_planted_micro_model(tmp_path):
    """Every memorization rule, from a planted micro model's build to its tables and figures: the
    detection table holds the rule's statistics, one mitigation row per preset, one per-prompt row
    per planted prompt and preset."""
    from conftest import copy_workflow

    wf = copy_workflow(tmp_path / "wf")
    (wf / "memorization.yaml").write_text(MICRO_MEMORIZATION)
    config = ["--configfile", "tests/micro/config.yaml", "memorization.yaml", "--replace-workflow-config"]
    snakemake([*config, "-c", "2", "memorization"], cwd=wf, check=True, timeout=1200)
    results = wf / "results/micro"
    detection = pd.read_csv(results / "tables/memorization_detection.csv")
    sets = pd.read_csv(results / "memorization/planted/detection_sets.csv")
    assert detection["positives"].tolist() == ["memorized", "VM"] == sets["positives"].tolist()
    assert detection["auc"].tolist() == pytest.approx(sets["auc"].tolist())
    assert (detection["n_memorized"] == 3).all() and detection["auc"].between(0, 1).all()
    mitigations = pd.read_csv(results / "tables/memorization_mitigations.csv")
    assert mitigations["preset"].tolist() == ["default", "prompt_optimization", "attention_rescale"]
    assert (
        mitigations["all_frac_above_0.5"].between(0, 1).all()
        and (mitigations["clipscore"] == "skipped").all()
    )
    assert pd.to_numeric(mitigations["fid"]).gt(0).all()
    prompts = pd.read_csv(results / "tables/memorization_prompts.csv")
    assert len(prompts) == 3 * 3 and set(prompts["label"]) == {"VM"}
    for png in ("roc.png", "tradeoff.png"):
        assert (results / "figures/memorization" / png).stat().st_size > 1000
