"""Per-rule time and memory from Snakemake's benchmark files (diffrep.benchtable)."""

from diffrep.benchtable import main, read_benchmarks, summarise

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _write(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{s}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{s}\n" for s, rss in rows))


def test_kinds_peaks_and_reruns(tmp_path, capsys):
    study, models = tmp_path / "benchmarks/rehearsal", tmp_path / "benchmarks/models"
    _write(study / "finetune/laion_like/a.tsv", (60.0, 17000.0))
    _write(study / "finetune/laion_like/b.tsv", (500.0, 9000.0), (120.0, 18432.0))  # re-run: last row counts
    _write(study / "generate/laion_like/base/default.tsv", (30.0, 5000.0))
    (study / "fid").mkdir()
    (study / "fid/running.tsv").write_text("")  # a job still running: skipped
    _write(models / "build_sd21.tsv", (29.0, 6000.0))
    jobs = read_benchmarks(study)
    assert sorted(jobs["job"]) == ["laion_like/a", "laion_like/b", "laion_like/base/default"]
    table = summarise(jobs).set_index("kind")
    assert table.loc["finetune", "jobs"] == 2 and table.loc["finetune", "total_min"] == 3.0
    assert (
        table.loc["finetune", "peak_rss_gb"] == 18.0 and table.loc["finetune", "peak_job"] == "laion_like/b"
    )
    assert read_benchmarks(models)[["kind", "job"]].values.tolist() == [["models", "build_sd21"]]
    main([str(study), str(models)])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines()[2:]}
    assert rows == {"finetune": "2", "generate": "1", "models": "1"} and "build_sd21" in out
