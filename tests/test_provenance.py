"""The platform fingerprint (diffrep.provenance) and progress lines of long loops (diffrep.progress)."""

import logging

import pandas as pd
import torch

from diffrep import progress, provenance


def test_fingerprint_records_what_changes_float_results():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = provenance.platform_fingerprint()
    finally:
        torch.set_num_threads(old)
    assert one["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert one["torch_version"] == torch.__version__ and one["numpy_version"]
    assert one["torch_threads"] == 1 and one["deterministic_algorithms"] is False
    assert one["cpu_model"] and "cuda_device" in one
    two = {**one, "torch_threads": 2}
    assert provenance.platform_id(one) != provenance.platform_id(two)  # threads change sums: another id
    assert provenance.platform_id(one) == provenance.platform_id(dict(reversed(one.items())))
    assert "| 1 threads | torch " in provenance.describe(one)


def test_tables_get_the_platform_columns_and_the_log_the_full_fingerprint(caplog):
    fp = provenance.platform_fingerprint()
    tables = {"summary": pd.DataFrame({"run": ["nodup", "dup_both"]}), "empty": pd.DataFrame(columns=["run"])}
    with caplog.at_level(logging.INFO):
        out = provenance.with_platform(tables, logging.getLogger("t"), fp)
    assert list(out["summary"]["platform_id"]) == [provenance.platform_id(fp)] * 2
    assert out["summary"]["platform"].iloc[0] == provenance.describe(fp)
    assert list(out["empty"].columns) == ["run", "platform_id", "platform"]
    assert f'"cpu_capability": "{fp["cpu_capability"]}"' in caplog.text


def test_build_report_carries_measurements_and_platform():
    fp = provenance.platform_fingerprint()
    report = provenance.build_report({"mse": 0.1}, fp, durations_s={"total": 3.0})
    assert report == {
        "metrics": {"mse": 0.1},
        "durations_s": {"total": 3.0},
        "platform_id": provenance.platform_id(fp),
        "platform": fp,
    }


def test_progress_lines_show_rate_and_eta_every_interval(caplog):
    now = [0.0]
    with caplog.at_level(logging.INFO):
        p = progress.ProgressLog("VAE", 100, logging.getLogger("t"), every_s=10, clock=lambda: now[0])
        for step in range(1, 101):
            now[0] = step * 0.5  # 2 steps/s
            p.update(step, loss=1 / step)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "VAE: 100 steps"
    assert lines[1] == "VAE: 20/100 steps (20 %), loss 0.05, 2.00 steps/s, ETA 40 s"
    assert len(lines) == 1 + 5  # every 10 s (20 steps), the last one included
    assert lines[-1] == "VAE: 100/100 steps (100 %), loss 0.01, 2.00 steps/s, done in 50 s"


def test_durations_read_naturally():
    assert [progress.format_duration(s) for s in (42, 185, 3720)] == ["42 s", "3 min 05 s", "1 h 02 min"]
