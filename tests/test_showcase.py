"""The showcase study: its profile dry-runs from a fresh clone, and its special rules run (micro)."""

import json

import pandas as pd
import pytest

from conftest import copy_workflow, job_counts, snakemake

MICRO = ["--configfile", "tests/microshowcase/config.yaml", "--replace-workflow-config"]


def test_showcase_profile_dry_run_on_a_fresh_clone(workflow_copy):
    assert not (workflow_copy / "resources").exists()
    proc = snakemake(["-n", "--profile", "profiles/showcase"], cwd=workflow_copy, check=True)
    counts = job_counts(proc.stdout)
    # 3 duplication styles + 2 class + 2 train-mitigation + 2 larger subsets (dup_both random on tex100 is shared)
    assert counts["finetune"] == 9
    assert counts["prepare_dataset"] == 3 and counts["build_model"] == 2 and "fetch_model" not in counts
    assert counts["calibrate"] == counts["calibration_figure"] == counts["embed_train"] == 3
    assert counts["generate"] == counts["retrieve"] == 11  # 9 finetunes + base + rand_word_add
    assert counts["study_threshold"] == 1  # threshold: calibrated, one per embedder
    assert "results/showcase/tex1000/calibration/pixel/table.csv" in proc.stdout
    assert "results/mini/" not in proc.stdout and "results/paper/" not in proc.stdout


def test_micro_showcase_dry_run_has_the_showcase_matrix(workflow_copy):
    counts = job_counts(snakemake(["-n", *MICRO], cwd=workflow_copy, check=True).stdout)
    assert counts["finetune"] == 8 and counts["calibrate"] == 2  # two subset sizes, not three


def test_calibration_is_off_unless_enabled(workflow_copy):
    proc = snakemake(["-n", "--profile", "profiles/mini"], cwd=workflow_copy, check=True)
    assert "calibrate" not in job_counts(proc.stdout)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The micro showcase's calibration of its 12-picture dataset, run for real (seconds, no model)."""
    root = copy_workflow(tmp_path_factory.mktemp("showcase"))
    targets = [
        "results/microshowcase/micro_tex12/calibration/pixel/table.csv",
        "results/microshowcase/figures/calibration/micro_tex12/pixel.png",
        "results/microshowcase/micro_tex12/similarity/pixel/train_baseline.json",
    ]
    snakemake(["-c1", *MICRO, *targets], cwd=root, check=True)
    return root / "results/microshowcase"


def test_calibration_rule_writes_table_summary_and_figure(calibrated):
    table = pd.read_csv(calibrated / "micro_tex12/calibration/pixel/table.csv")
    assert list(table["augmentation"]) == ["crop", "flip", "blur", "jpeg", "color", "all"]
    assert (table["n_positive"].iloc[:5] == 8).all() and table["n_positive"].iloc[-1] == 40
    rows = table.set_index("augmentation")
    # the pixel descriptor finds blurred, re-encoded and recoloured copies, but not mirrored ones
    assert rows.loc[["blur", "jpeg", "color"], "auc"].min() > 0.99
    assert rows.loc["flip", "auc"] < rows.loc["blur", "auc"]
    summary = json.loads((calibrated / "micro_tex12/calibration/pixel/summary.json").read_text())
    assert summary["threshold"] == pytest.approx(rows.loc["all", "threshold"])
    assert summary["embedder"] == "pixel(size=16)" and summary["n_images"] == 8
    scores = pd.read_parquet(calibrated / "micro_tex12/calibration/pixel/scores.parquet")
    assert len(scores) == 40 and (scores["positive"] <= 1 + 1e-6).all()
    assert (calibrated / "figures/calibration/micro_tex12/pixel.png").stat().st_size > 10_000


def test_calibrated_threshold_is_the_largest_over_the_datasets_and_is_used(calibrated):
    """similarity.threshold: calibrated - the study's threshold is the largest calibrated one over
    its measured datasets, and the similarity statistics count above it."""
    study = json.loads((calibrated / "calibration/pixel/threshold.json").read_text())
    per = {
        ds: json.loads((calibrated / ds / "calibration/pixel/summary.json").read_text())["threshold"]
        for ds in study["datasets"]
    }
    assert len(per) == 2 and study["threshold"] == max(per.values())
    baseline = json.loads((calibrated / "micro_tex12/similarity/pixel/train_baseline.json").read_text())
    assert baseline["threshold"] == study["threshold"] != 0.5
