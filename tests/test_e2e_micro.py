"""The micro study end to end: every artifact kind exists and says what it is."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import MICRO, job_counts, load_yaml, snakemake

pytestmark = pytest.mark.slow


def test_every_artifact_kind_is_written(micro_run):
    r = micro_run / "results/micro/micro_shapes"
    assert (micro_run / "resources/models/micro_sd.sha256").read_text().strip()
    assert pd.read_parquet(micro_run / "resources/data/micro_shapes/metadata.parquet").shape[0] > 0
    for run in ["nodup.instancelevel_blip.none", "dup_both.instancelevel_blip.none"]:
        assert (r / "models" / run / "unet").is_dir()
        assert (r / "weightdiff" / f"{run}.parquet").exists()
    for run in ["base", "nodup.instancelevel_blip.none", "dup_both.instancelevel_blip.none"]:
        gen = r / "generations" / run / "default"
        prompts = pd.read_parquet(gen / "prompts.parquet")
        assert len(list(gen.glob("*.png"))) == len(prompts) == 8
        stats = json.loads((r / "similarity/pixel" / run / "default.json").read_text())
        assert 0 < stats["n"] == 8 and -1 <= stats["mean"] <= 1
        fid = json.loads((r / "fid" / run / "default.json").read_text())
        assert fid["fid"] >= 0 and fid["n_generated"] == 8
    summary = pd.read_csv(micro_run / "results/micro/tables/summary.csv")
    assert set(summary["study"]) == {"micro"}
    assert len(summary) == 3
    assert (micro_run / "results/micro/figures/sim95_by_dup_cond.png").stat().st_size > 0
    # the web lane prompted with 6 captions sampled from its collection (micro_sd's pretraining set)
    own = micro_run / "results/micro/webscale/micro_sd_web_own"
    web = pd.read_parquet(micro_run / "resources/webscale/micro_web/web.parquet")
    prompts = pd.read_parquet(own / "generations/prompts.parquet")
    assert len(prompts) == len(list((own / "generations").glob("*.png"))) == 6
    assert prompts["prompt"].tolist() == web["TEXT"][prompts["source_id"].astype(int)].tolist()
    summary = json.loads((own / "summary.json").read_text())
    assert summary["n"] == 6 and 0 <= summary["own_image_top1"] <= summary["own_image_topk"] <= 1


def test_nothing_to_do_after_a_complete_run(micro_run):
    proc = snakemake(["-n", *MICRO], cwd=micro_run, check=True)
    assert job_counts(proc.stdout) == {}, proc.stdout[-3000:]


def _dry_run_with(micro_run, tmp_path, edit):
    cfg = load_yaml(micro_run / "tests/micro/config.yaml")
    edit(cfg)
    import yaml

    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(
        ["-n", "--configfile", str(path), "--replace-workflow-config"], cwd=micro_run, check=True
    )
    return job_counts(proc.stdout)


def test_generation_setting_reruns_generation_and_downstream_only(micro_run, tmp_path):
    counts = _dry_run_with(
        micro_run, tmp_path, lambda c: c["generation"]["presets"]["default"].update(guidance_scale=5.0)
    )
    assert "finetune" not in counts and "build_model" not in counts and "embed_train" not in counts
    assert counts["generate"] == 3  # base + 2 finetunes, default preset; sweep cells untouched
    assert counts["embed_generations"] == counts["retrieve"] == counts["fid"] == 3
    assert "fid_reference" not in counts and "train_baseline" not in counts


def test_new_matrix_setting_adds_only_its_jobs(micro_run, tmp_path):
    counts = _dry_run_with(
        micro_run,
        tmp_path,
        lambda c: c["experiments"][0].update(duplication=["nodup", "dup_both", "dup_image"]),
    )
    assert counts["finetune"] == 1 and counts["generate"] == 1 and counts["duplication_plan"] == 1
    assert counts["tables"] == 1
    assert "embed_train" not in counts and "fid_reference" not in counts and "build_model" not in counts


def test_search_prompt_count_redraws_its_prompts_and_downloads_or_embeds_no_shard(micro_run, tmp_path):
    counts = _dry_run_with(
        micro_run, tmp_path, lambda c: c["webscale"]["searches"][1]["prompts"].update(n_images=7)
    )
    assert counts == {
        "search_prompts": 1,
        "generate_search": 1,
        "embed_search_generations": 1,
        "search_shard": 4,
        "merge_search": 1,
        "webscale_tables": 1,
        "webscale_figures": 1,
        "all": 1,
    }


def test_figure_option_reruns_only_that_figure(micro_run, tmp_path):
    counts = _dry_run_with(
        micro_run,
        tmp_path,
        lambda c: (
            c.setdefault("figures", {})
            .setdefault("per_figure", {})
            .update(sim95_by_dup_cond={"palette": "colorblind"})
        ),
    )
    assert counts == {"summary_figure": 1, "all": 1}


def test_batch_sizes_rerun_nothing(micro_run, tmp_path):
    counts = _dry_run_with(
        micro_run,
        tmp_path,
        lambda c: c["resources"].update(generate_batch_size=2, fid_batch_size=7, embed_batch_size=3),
    )
    assert counts == {}


def test_report_builds(micro_run):
    snakemake(["--report", "report.html", *MICRO], cwd=micro_run, check=True)
    html = (micro_run / "report.html").read_text(errors="replace")
    assert "sim95_by_dup_cond" in html and "summary.csv" in html


MICRO_REFERENCE = "tests/reference/micro.sha256"


def test_micro_study_is_identical_to_its_reference_digests(micro_run, request):
    """Portable numerics: the micro study's artifacts, from dataset to tables, have the committed
    digests on every machine. A failure names the first artifact of the chain that differs."""
    from diffrep import digests

    reference = Path(__file__).resolve().parents[1] / MICRO_REFERENCE
    if request.config.getoption("--write-micro-reference"):
        n = digests.write(micro_run / "tests/micro/config.yaml", reference, micro_run)
        print(f"wrote {n} digests to {reference}")
    n = digests.check(micro_run / "tests/micro/config.yaml", reference, micro_run)
    stages = [stage for stage, _, _ in digests.read_reference(reference)]
    assert n == len(stages) and set(stages) == {s.name for s in digests.STAGES}  # every link is covered
