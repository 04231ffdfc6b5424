"""Descriptor calibration: ROC numbers against scikit-learn, the chosen threshold, augmentations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from diffrep import calibration as cal


def labelled(pos, neg):
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.normal(0.8, 0.2, 300)
    neg = rng.normal(0.4, 0.2, 500)
    assert cal.roc_auc(pos, neg) == pytest.approx(roc_auc_score(*labelled(pos, neg)), abs=1e-12)
    pos_t, neg_t = np.round(pos, 1), np.round(neg, 1)  # many ties
    assert cal.roc_auc(pos_t, neg_t) == pytest.approx(roc_auc_score(*labelled(pos_t, neg_t)), abs=1e-12)


def test_roc_curve_area_is_the_auc_and_ends_at_the_corners():
    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.7, 0.2, 200), 2), np.round(rng.normal(0.5, 0.2, 150), 2)
    fpr, tpr, thr = cal.roc_curve(pos, neg)
    assert thr[0] == np.inf and np.all(np.diff(thr) < 0)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc_score(*labelled(pos, neg)), abs=1e-12)


def test_threshold_is_the_lowest_with_at_most_max_fpr_strictly_above():
    neg = np.arange(200) / 200  # 0.000 ... 0.995
    pos = np.array([0.5, 0.99, 0.995, 1.0])
    chosen = cal.threshold_at_fpr(pos, neg, max_fpr=0.01)
    # 1 % of 200 = 2 negatives may lie strictly above: the third largest, 0.985
    assert chosen["threshold"] == pytest.approx(0.985)
    assert chosen["fpr"] == pytest.approx(0.01)
    assert chosen["tpr"] == pytest.approx(0.75)
    lower = chosen["threshold"] - 0.005  # any lower threshold lets a third negative above
    assert (neg > lower).mean() > 0.01
    assert cal.threshold_at_fpr(pos, neg, max_fpr=0.0)["threshold"] == pytest.approx(0.995)


def test_bad_max_fpr_and_empty_scores_are_named():
    with pytest.raises(cal.CalibrationError, match="max_fpr"):
        cal.threshold_at_fpr([1.0], [0.0], max_fpr=1.5)
    with pytest.raises(cal.CalibrationError, match="positives and negatives"):
        cal.roc_auc([], [0.1])


def test_pair_scores_take_the_own_source_and_the_best_other_picture():
    train = np.eye(4, dtype=np.float32)
    q = np.array([[0.8, 0.6, 0, 0], [0, 0.6, 0, 0.8]], dtype=np.float32)
    pos, neg = cal.pair_scores(q, train, sources=[0, 3], chunk=1)
    np.testing.assert_allclose(pos, [0.8, 0.8], rtol=1e-6)
    np.testing.assert_allclose(neg, [0.6, 0.6], rtol=1e-6)


def test_calibration_table_has_a_row_per_augmentation_and_all():
    scores = pd.DataFrame(
        {
            "augmentation": ["crop"] * 100 + ["flip"] * 100,
            "positive": np.r_[np.full(100, 0.9), np.linspace(0, 1, 100)],
            "negative": np.r_[np.linspace(0, 0.5, 100), np.linspace(0, 0.5, 100)],
        }
    )
    table = cal.calibration_table(scores, max_fpr=0.01).set_index("augmentation")
    assert list(table.index) == ["crop", "flip", "all"]
    assert table.loc["crop", "auc"] == 1.0 and table.loc["crop", "tpr_at_fpr"] == 1.0
    assert table.loc["flip", "auc"] < 1.0
    assert table.loc["all", "n_positive"] == 200


@pytest.mark.parametrize("kind", cal.AUGMENTATIONS)
def test_augmentations_keep_size_change_pixels_and_are_seeded(kind):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), mode="RGB")
    a = cal.augment(image, kind, np.random.default_rng(1))
    b = cal.augment(image, kind, np.random.default_rng(1))
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))
    with pytest.raises(cal.CalibrationError, match="unknown augmentation 'rotate'"):
        cal.augment(image, "rotate", rng)


def test_calibrate_files_rejects_unknown_augmentations_and_stale_embeddings(tmp_path):
    from diffrep.embeddings import write_embeddings
    from diffrep.showcasedata import build_showcase_dataset

    images = build_showcase_dataset(tmp_path / "images", seed=0, n_images=4)
    files = sorted(p.name for p in images.glob("*.png"))
    pd.DataFrame({"id": [f[:-4] for f in files], "file": files}).to_parquet(tmp_path / "metadata.parquet")
    write_embeddings(tmp_path / "train.npz", ["a", "b", "c", "d"], np.eye(4), "pixel(size=16)", "pixel16")
    outs = [tmp_path / "s.parquet", tmp_path / "t.csv", tmp_path / "s.json"]
    common = {"n_images": 4, "max_fpr": 0.01, "seed": 0}
    with pytest.raises(cal.CalibrationError, match="allowed crop, flip"):
        cal.calibrate_files(
            images,
            tmp_path / "metadata.parquet",
            tmp_path / "train.npz",
            {"type": "pixel", "size": 16},
            *outs,
            augmentations=["rotate"],
            **common,
        )
    with pytest.raises(cal.CalibrationError, match="re-run embed_train"):
        cal.calibrate_files(
            images,
            tmp_path / "metadata.parquet",
            tmp_path / "train.npz",
            {"type": "pixel", "size": 16},
            *outs,
            augmentations=["blur"],
            **common,
        )
    assert not any(p.exists() for p in outs)


def _summary(path, threshold, embedder="pixel"):
    path.write_text(
        json.dumps(
            {"threshold": threshold, "auc": 0.99, "tpr_at_fpr": 0.8, "max_fpr": 0.01, "embedder": embedder}
        )
    )
    return path


def test_study_threshold_is_the_largest_calibrated_one_and_resolves(tmp_path):
    summaries = [_summary(tmp_path / f"{i}.json", t) for i, t in enumerate((0.345, 0.433, 0.377))]
    out = tmp_path / "threshold.json"
    result = cal.study_threshold(summaries, ["tex100", "tex300", "tex1000"], out)
    assert result["threshold"] == 0.433 and result["from_dataset"] == "tex300"
    assert json.loads(out.read_text())["datasets"]["tex1000"]["threshold"] == 0.377
    assert cal.resolve_threshold("calibrated", out) == 0.433
    assert cal.resolve_threshold(0.5, None) == 0.5  # a number stays itself, no file needed


def test_study_threshold_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"auc": 1.0}')
    with pytest.raises(cal.CalibrationError, match=r"broken\.json: not a calibration summary"):
        cal.study_threshold([broken], ["tex100"], tmp_path / "t.json")
    mixed = [_summary(tmp_path / "a.json", 0.4), _summary(tmp_path / "b.json", 0.4, embedder="sscd")]
    with pytest.raises(cal.CalibrationError, match="several embedders"):
        cal.study_threshold(mixed, ["a", "b"], tmp_path / "t.json")
    with pytest.raises(cal.CalibrationError, match=r"'calibrated' but no calibrated threshold file"):
        cal.resolve_threshold("calibrated", None)
    with pytest.raises(cal.CalibrationError, match=r"missing\.json: no calibrated threshold"):
        cal.resolve_threshold("calibrated", tmp_path / "missing.json")
