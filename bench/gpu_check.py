"""GPU smoke check: the micro study on one CUDA device in its paper precision, twice in deterministic
mode and once without, in fresh copies of the workflow.

Reports whether the two deterministic runs are bit-identical (python -m diffrep.digests over their
artifacts), how long each mode took, and how the GPU's numbers compare with the CPU reference
(tests/reference/micro.sha256 and the p95 of each run). Without a CUDA device it says so and exits 0.

    make gpu-check            # or: .venv/bin/python bench/gpu_check.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest.copy_workflow: a fresh-clone-like copy
MICRO = REPO / "tests/micro/config.yaml"
REFERENCE = REPO / "tests/reference/micro.sha256"


def gpu_config(deterministic: bool) -> dict:
    """The micro study in the paper's GPU settings: native kernels, fp16 finetuning, and generation
    in each family's GPU precision (dtype auto: fp16, bf16 for SD 3.5)."""
    with open(MICRO) as f:
        config = yaml.safe_load(f)
    config["numerics"] = {"mode": "native", "deterministic": deterministic}
    config["training"]["mixed_precision"] = "fp16"
    config.setdefault("generation", {})["dtype"] = "auto"
    return config


def run_micro(dest: Path, deterministic: bool) -> float:
    """Run the GPU micro study in `dest`; return its wall time in seconds."""
    from conftest import copy_workflow
    from diffrep import numerics

    copy_workflow(dest)
    config = dest / "gpu_micro.yaml"
    config.write_text(yaml.safe_dump(gpu_config(deterministic)))
    t0 = time.time()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        "--configfile",
        str(config),
        "--replace-workflow-config",
    ]
    # native numerics: none of the portable pins that conftest (imported above) put into this process
    env = numerics.process_environment({"mode": "native", "deterministic": deterministic})
    proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the micro study failed in {dest}:\n{proc.stderr[-4000:]}")
    return time.time() - t0


def p95(dest: Path) -> dict:
    import pandas as pd

    df = pd.read_csv(dest / "results/micro/tables/summary.csv")
    return {f"{r.run}/{r.preset}": round(float(r.p95), 4) for r in df.itertuples()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible (torch.cuda.is_available() is False): skipped")
        return 0
    from diffrep import digests

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="diffrep-gpu-check-"))
    names = digests.study_names(MICRO)
    print(f"gpu-check on {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), in {root}")
    runs = {}
    for name, deterministic in (("deterministic-1", True), ("deterministic-2", True), ("default", False)):
        dest = root / name
        dest.mkdir(parents=True, exist_ok=True)
        seconds = run_micro(dest, deterministic)
        runs[name] = (dest, seconds, digests.collect(names, dest))
        print(f"  {name}: {seconds:.0f} s, p95 {p95(dest)}")
    a, b = runs["deterministic-1"][2], runs["deterministic-2"][2]
    problem = digests.compare(a, b)
    print("deterministic runs: " + ("bit-identical" if problem is None else f"differ — {problem}"))
    ratio = runs["deterministic-1"][1] / runs["default"][1]
    print(f"deterministic / default time: {ratio:.2f}")
    cpu = digests.compare(digests.read_reference(REFERENCE), a)
    print("against the CPU reference: " + ("identical" if cpu is None else cpu))
    if not args.keep:
        shutil.rmtree(root)
    return 0 if problem is None else 1


if __name__ == "__main__":
    sys.exit(main())
