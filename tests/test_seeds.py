"""Summary over seeds and machines (diffrep.seeds)."""

import pandas as pd
import pytest

from diffrep import seeds


def summary(tmp_path, seed, p95s, name=None, machine=None):
    rows = [
        {
            "study": "mini",
            "seed": seed,
            "dataset": "shapes",
            "run": run,
            "preset": "default",
            "embedder": "pixel",
            "p95": p95,
            "fid": "skipped",
        }
        for run, p95 in p95s.items()
    ]
    df = pd.DataFrame(rows)
    if machine:
        df = df.assign(platform_id=machine, platform=f"CPU {machine} | AVX2 | 2 threads | torch 2.14.1")
    path = tmp_path / (name or f"s{seed}{machine or ''}.csv")
    df.to_csv(path, index=False)
    return path


def test_mean_sd_min_max_per_setting(tmp_path):
    files = [
        summary(tmp_path, 0, {"nodup": 0.5, "dup_both": 0.8}),
        summary(tmp_path, 1, {"nodup": 0.7, "dup_both": 0.9}),
    ]
    table = seeds.spread(seeds.read_summaries(files)).set_index("run")
    assert table.loc["nodup", "p95_mean"] == pytest.approx(0.6)
    assert table.loc["nodup", "p95_sd"] == pytest.approx(0.1414213, rel=1e-5)  # ddof 1
    assert (table.loc["dup_both", "p95_min"], table.loc["dup_both", "p95_max"]) == (0.8, 0.9)
    assert table.loc["nodup", "seeds"] == "0 1" and table.loc["nodup", "n_seeds"] == 2
    assert table.loc["nodup", "machines"] == "unknown" and "p95_machine_range" not in table
    assert "fid_mean" not in table  # 'skipped' is not a number
    assert "| dup_both | default | 0.850 ± 0.071 |" in seeds.markdown(table.reset_index())


def test_machines_combined_give_a_machine_range_and_a_within_machine_seed_spread(tmp_path):
    files = [
        summary(tmp_path, 0, {"nodup": 0.50}, machine="aaa"),
        summary(tmp_path, 1, {"nodup": 0.70}, machine="aaa"),
        summary(tmp_path, 0, {"nodup": 0.53}, machine="bbb"),  # the same seed on another machine
        summary(tmp_path, 2, {"nodup": 0.90}, machine="bbb"),
    ]
    summaries = seeds.read_summaries(files)
    row = seeds.spread(summaries).iloc[0]
    assert row["n_seeds"] == 3 and row["n_machines"] == 2 and row["machines"] == "aaa bbb"
    assert row["p95_machine_range"] == pytest.approx(0.03)  # seed 0: 0.53 on bbb vs 0.50 on aaa
    # pooled within machines: aaa 0.5/0.7 and bbb 0.53/0.9, one degree of freedom each
    assert row["p95_sd"] == pytest.approx(((0.02 + 0.0684500) / 2) ** 0.5, rel=1e-4)
    assert row["p95_mean"] == pytest.approx(0.6575)
    text = seeds.markdown(seeds.spread(summaries), machine_table=seeds.machines(summaries))
    assert "- aaa (seeds 0 1): CPU aaa | AVX2 | 2 threads | torch 2.14.1" in text
    assert "(machines Δ 0.030)" in text


def test_the_same_seed_twice_on_one_machine_is_refused_naming_both_files(tmp_path):
    a = summary(tmp_path, 0, {"nodup": 0.5}, "a.csv")
    b = summary(tmp_path, 0, {"nodup": 0.6}, "b.csv")
    with pytest.raises(
        seeds.SeedSummaryError, match=r"b\.csv and .*a\.csv both have seed 0 on machine unknown"
    ):
        seeds.read_summaries([a, b])
    c = summary(tmp_path, 0, {"nodup": 0.6}, "c.csv", machine="aaa")
    d = summary(tmp_path, 0, {"nodup": 0.6}, "d.csv", machine="aaa")
    with pytest.raises(seeds.SeedSummaryError, match=r"both have seed 0 on machine aaa"):
        seeds.read_summaries([c, d])
    assert len(seeds.read_summaries([a, c])) == 2  # seed 0 on two machines is fine


def test_a_setting_missing_for_one_seed_is_named(tmp_path):
    files = [summary(tmp_path, 0, {"nodup": 0.5, "dup_both": 0.8}), summary(tmp_path, 1, {"nodup": 0.7})]
    with pytest.raises(seeds.SeedSummaryError, match=r"shapes/dup_both/default/pixel"):
        seeds.spread(seeds.read_summaries(files))


def test_command_line_writes_the_csv_and_fails_clearly(tmp_path, capsys):
    files = [summary(tmp_path, 0, {"nodup": 0.5}), summary(tmp_path, 3, {"nodup": 0.7})]
    assert seeds.main([*map(str, files), "--out", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv")["seeds"].tolist() == ["0 3"]
    old = tmp_path / "old.csv"
    pd.DataFrame({"study": ["mini"], "dataset": ["shapes"], "run": ["nodup"]}).to_csv(old, index=False)
    assert seeds.main([str(old), str(files[0])]) == 2
    assert "old.csv: columns ['embedder', 'preset', 'seed'] missing" in capsys.readouterr().err
