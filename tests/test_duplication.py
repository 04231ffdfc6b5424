"""Duplication plans: upstream's fraction and weights, seeded, shared by dup_both and dup_image."""

import re

import pandas as pd
import pytest

from diffrep.duplication import make_plan, n_duplicated, write_plan

IDS = [f"img_{i:03d}" for i in range(200)]


def test_same_seed_same_plan_and_file(tmp_path):
    a = make_plan(IDS, "dup_both", weight_pc=0.05, dup_weight=5, seed=3)
    b = make_plan(IDS, "dup_both", weight_pc=0.05, dup_weight=5, seed=3)
    pd.testing.assert_frame_equal(a, b)
    write_plan(a, tmp_path / "a.parquet")
    write_plan(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    c = make_plan(IDS, "dup_both", weight_pc=0.05, dup_weight=5, seed=4)
    assert set(c["id"][c["duplicated"]]) != set(a["id"][a["duplicated"]])


def test_fraction_weights_and_columns():
    plan = make_plan(IDS, "dup_image", weight_pc=0.05, dup_weight=5, seed=0)
    assert list(plan.columns) == ["id", "duplicated", "weight", "dup_set"]
    assert list(plan["id"]) == IDS  # metadata order
    assert plan["duplicated"].sum() == 10  # int(0.05 * 200), as upstream
    assert set(plan["weight"][plan["duplicated"]]) == {5.0}
    assert set(plan["weight"][~plan["duplicated"]]) == {1.0}
    assert plan["weight"].dtype == "float64" and plan["duplicated"].dtype == bool


def test_dup_both_and_dup_image_share_the_set_nodup_is_uniform():
    both = make_plan(IDS, "dup_both", 0.1, 5, seed=0)
    image = make_plan(IDS, "dup_image", 0.1, 5, seed=0)
    pd.testing.assert_frame_equal(both, image)
    nodup = make_plan(IDS, "nodup", 0.1, 5, seed=0)
    assert not nodup["duplicated"].any() and (nodup["weight"] == 1.0).all()
    # nodup marks the same set, not duplicated: the control for the duplicated runs
    assert nodup["dup_set"].tolist() == both["duplicated"].tolist() == both["dup_set"].tolist()


def upstream_sampling_weights(n: int, weight_pc: float, dup_weight: int, chosen) -> list:
    """Transcription of upstream datasets.py (dup_both / dup_image), with the random choice passed in:

    samplingweights = [1]*len(self.samples)
    ow_samples = np.random.choice(len(self.samples), int(args.weight_pc*len(self.samples)), replace=False)
    for i in ow_samples: samplingweights[i] = samplingweights[i]*args.dup_weight//1
    """
    samplingweights = [1] * n
    ow_samples = list(chosen)[: int(weight_pc * n)]
    for i in ow_samples:
        samplingweights[i] = samplingweights[i] * dup_weight // 1
    return samplingweights


@pytest.mark.parametrize("n", [7, 99, 100, 200, 1000])
@pytest.mark.parametrize("weight_pc", [0.01, 0.05, 0.1, 0.2, 0.29, 0.57, 0.7, 1.0])
def test_count_and_weights_equal_upstreams(n, weight_pc):
    ids = [f"i{k}" for k in range(n)]
    if int(weight_pc * n) == 0:  # 7 images at 1, 5, 10 %, 99 at 1 %: nothing to duplicate, refused
        with pytest.raises(ValueError, match=rf"int\({weight_pc} x {n}\) = 0 of the dataset's {n} images"):
            make_plan(ids, "dup_image", weight_pc=weight_pc, dup_weight=5, seed=1)
        return
    plan = make_plan(ids, "dup_image", weight_pc=weight_pc, dup_weight=5, seed=1)
    chosen = [k for k in range(n) if plan["dup_set"][k]]
    assert n_duplicated(n, weight_pc) == len(chosen) == int(weight_pc * n)
    assert plan["weight"].tolist() == upstream_sampling_weights(n, weight_pc, 5, chosen)


def test_rounding_and_errors():
    assert n_duplicated(100, 0.29) == 28 and n_duplicated(100, 0.57) == 56  # 28.999..., 56.999... as upstream
    assert n_duplicated(99, 0.05) == 4  # floor, as upstream's int()
    with pytest.raises(ValueError, match="duplication style 'dup'"):
        make_plan(IDS, "dup")
    with pytest.raises(ValueError, match="not unique"):
        make_plan(["a", "a"], "nodup")


def test_dup_weight_up_to_1_is_allowed_with_a_warning(caplog):
    """dup_weight 1 is upstream's no-op duplication (weights 1, no random captions): a warning, no error."""
    with caplog.at_level("WARNING", logger="diffrep.duplication"):
        plan = make_plan(IDS, "dup_image", weight_pc=0.05, dup_weight=1, seed=0)
    assert plan["dup_set"].sum() == 10 and (plan["weight"] == 1.0).all()
    assert "dup_weight = 1: dup_image samples the duplicated images no more often" in caplog.text
    assert "no random captions" in caplog.text


@pytest.mark.parametrize("style", ["dup_both", "dup_image"])
@pytest.mark.parametrize("n, weight_pc", [(7, 0.1), (19, 0.05), (99, 0.01)])
def test_a_duplicating_style_that_duplicates_no_image_is_refused(style, n, weight_pc):
    """int(weight_pc * N) = 0: upstream would sample every image with weight 1, with replacement, under
    a duplicating style's name; refused with the setting and the dataset size named."""
    ids = [f"i{k}" for k in range(n)]
    message = (
        f"duplication.weight_pc = {weight_pc} duplicates int({weight_pc} x {n}) = 0 of the dataset's {n} "
        f"images, so {style} would duplicate nothing"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        make_plan(ids, style, weight_pc=weight_pc, dup_weight=5, seed=0)
    nodup = make_plan(ids, "nodup", weight_pc=weight_pc, seed=0)  # nodup needs no duplicated image
    assert len(nodup) == n and not nodup["dup_set"].any() and (nodup["weight"] == 1.0).all()
    smallest = [f"i{k}" for k in range(round(1 / weight_pc))]  # weight_pc x N = 1: one image duplicated
    assert make_plan(smallest, style, weight_pc=weight_pc, dup_weight=5, seed=0)["duplicated"].sum() == 1


def test_the_nodup_plan_does_not_depend_on_dup_weight(tmp_path):
    """nodup's file is the same bytes whatever dup_weight (the workflow does not even pass it); its
    duplicated set (the control) follows weight_pc and the seed."""
    files = []
    for k, dup_weight in enumerate((5, 4, 0.5)):
        write_plan(
            make_plan(IDS, "nodup", weight_pc=0.05, dup_weight=dup_weight, seed=3), tmp_path / f"{k}.parquet"
        )
        files.append((tmp_path / f"{k}.parquet").read_bytes())
    write_plan(make_plan(IDS, "nodup", weight_pc=0.05, seed=3), tmp_path / "default.parquet")
    assert files[0] == files[1] == files[2] == (tmp_path / "default.parquet").read_bytes()
    both = make_plan(IDS, "dup_both", weight_pc=0.05, dup_weight=5, seed=3)
    assert pd.read_parquet(tmp_path / "0.parquet")["dup_set"].tolist() == both["dup_set"].tolist()
    assert make_plan(IDS, "nodup", weight_pc=0.1, seed=3)["dup_set"].sum() == 20
