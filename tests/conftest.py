"""Shared helpers: run Snakemake on a copy of the workflow, load the study configs."""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from diffrep import numerics

# The tests compute with the portable kernels, as the workflow's CPU studies do (diffrep.numerics):
# set before any test module loads torch, numpy or faiss, so results are the same on every machine.
os.environ.update(numerics.environment({"mode": "portable"}))

REPO = Path(__file__).resolve().parents[1]
IGNORED = {".venv", ".git", "results", "resources", "logs", "benchmarks", ".snakemake", ".pytest_cache"}


def load_yaml(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def snakemake(args, cwd, check=False, timeout=600, env=None):
    """Run `python -m snakemake` (the one of this venv); return the CompletedProcess."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_workflow(dest: Path) -> Path:
    """A fresh-clone-like copy of the workflow (tracked files only: no results, data or weights)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if files.returncode == 0 and files.stdout.strip():
        for rel in files.stdout.splitlines():
            src = REPO / rel
            if src.is_file() and not (set(Path(rel).parts) & IGNORED):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # pragma: no cover - not a git checkout
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*IGNORED))
    return dest


def job_counts(dryrun_stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    counts, in_table = {}, False
    for line in dryrun_stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0].startswith("-"):
                continue
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="session")
def workflow_copy(tmp_path_factory) -> Path:
    """One read-only fresh copy of the workflow per session, for dry runs."""
    return copy_workflow(tmp_path_factory.mktemp("clone"))


@pytest.fixture
def one_thread():
    """One torch thread (the machine is shared) and torch's RNG seeded with 0, both restored
    afterwards; test modules take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from diffrep.tinysd import _seeded

    with _seeded(0, threads=1):
        yield


@pytest.fixture
def paper_config() -> dict:
    return copy.deepcopy(load_yaml(REPO / "config.yaml"))


@pytest.fixture
def mini_config() -> dict:
    return copy.deepcopy(load_yaml(REPO / "profiles/mini/study.yaml"))


MICRO = ["--configfile", "tests/micro/config.yaml", "--replace-workflow-config"]
# The micro run gets this as HF_TOKEN; tests/test_faults.py checks no file it writes contains it.
HF_TOKEN_SENTINEL = "hf_diffrepFaultSuiteSentinel0123456789abcdef"


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """The whole micro study, run once per test session in a fresh copy (2 cores)."""
    wf = copy_workflow(tmp_path_factory.mktemp("micro"))
    env = {**os.environ, "HF_TOKEN": HF_TOKEN_SENTINEL}
    proc = snakemake(["--cores", "2", *MICRO], cwd=wf, timeout=1500, env=env)
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((wf / "logs").rglob("*.log")))
        raise AssertionError(f"micro study failed:\n{proc.stderr[-5000:]}\n{logs[-8000:]}")
    return wf


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_folder(root: Path):
    """A static HTTP server on 127.0.0.1 over `root` (which may appear later): yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def web(tmp_path):
    """A static HTTP server on 127.0.0.1 over a fresh folder: yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as base:
        yield root, base


def pytest_addoption(parser):
    parser.addoption(
        "--write-micro-reference",
        action="store_true",
        help="rewrite tests/reference/micro.sha256 from this run's micro study (after a change meant to "
        "change results; the commit says why)",
    )
