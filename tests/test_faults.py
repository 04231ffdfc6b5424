"""Faults and bad inputs that no step's own tests cover; docs/faults.md lists every case and its guard.

Each case asserts a clear error and that no partial or wrong output is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import HF_TOKEN_SENTINEL, MICRO, REPO, copy_workflow

# ---------------------------------------------------------------- pickles


class _Payload:
    """A pickle that creates `marker` when unpickled by a loader that runs arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"weight": _Payload(marker)}, path)
    # the payload is live: a loader without weights_only runs it (proves the test can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


def test_pickle_fid_weights_refused_unless_weights_only(tmp_path):
    import torch

    from diffrep import fid

    marker = tmp_path / "code-ran"
    bad = _malicious_pickle(tmp_path / "pt_inception-2015-12-05-6726825d.pth", marker)
    with pytest.raises(
        fid.FIDError, match=r"pt_inception-2015-12-05-6726825d.pth: not a weights-only state dict"
    ):
        fid.load_state_dict(bad)
    assert not marker.exists()
    good = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.ones(2, 2)}, good)
    assert torch.equal(fid.load_state_dict(good)["conv.weight"], torch.ones(2, 2))


def test_pickle_training_checkpoint_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from diffrep import training

    marker = tmp_path / "code-ran"
    unet = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(unet.parameters())
    sched = torch.optim.lr_scheduler.ConstantLR(opt)
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(ckpt / "unet.safetensors"))
    _malicious_pickle(ckpt / "optimizer.pt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        training.load_checkpoint(ckpt, unet, opt, sched)
    assert not marker.exists()


def test_pickle_unet_in_a_model_folder_is_not_executed(tmp_path):
    """A model folder whose UNet is a malicious pickle (.bin) fails to load and runs nothing."""
    from diffrep import generation, tinysd

    model = tinysd.build_tiny_pipeline(tmp_path / "model", ["a red circle"], seed=0, resolution=32)
    unet = model / "unet"
    for f in unet.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "code-ran"
    _malicious_pickle(unet / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do: the point is that no code ran)
        generation.load_pipeline(model, "cpu", generation.resolve_dtype("fp32", "cpu"))
    assert not marker.exists()


# ---------------------------------------------------------------- trust_remote_code


@pytest.mark.parametrize(
    "where",
    [
        lambda c: c["models"]["sd21"],
        lambda c: c["models"]["sd21"]["sources"][1],
        lambda c: c["models"]["blip"],
        lambda c: c["embedders"]["sscd_large"],
        lambda c: c["clipscore"],
        lambda c: c,
    ],
    ids=["model", "model_source", "blip_model", "embedder", "clipscore", "top_level"],
)
def test_config_cannot_set_trust_remote_code(paper_config, where):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    where(paper_config)["trust_remote_code"] = True
    with pytest.raises(WorkflowError) as err:
        validate(paper_config, str(REPO / "schemas/config.schema.yaml"))
    assert "'trust_remote_code' was unexpected" in str(err.value)


def test_source_never_sets_trust_remote_code():
    """No loader in the code base passes trust_remote_code (other than False)."""
    files = [
        REPO / "Snakefile",
        *REPO.glob("rules/*.smk"),
        *REPO.glob("scripts/*.py"),
        *REPO.glob("src/diffrep/*.py"),
        *REPO.glob("bench/*.py"),
    ]
    assert len(files) > 20
    bad = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"trust_remote_code\s*[=:]\s*([^,)\s]+)", line):
                if m.group(1) != "False":
                    bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, bad


# ---------------------------------------------------------------- full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (a real full disk); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-ENOSPC test still runs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _writers():
    from diffrep import captions, checksums, duplication, embeddings, fid, similarity

    rng = np.random.default_rng(0)
    ids = [f"img{i:05d}" for i in range(4000)]
    return {
        "embeddings": lambda d: embeddings.write_embeddings(
            d / "train.npz", ids, rng.random((4000, 64)), "x", "y"
        ),
        "fid_reference": lambda d: fid.write_reference(
            d / "reference.npz", np.zeros(2048), np.eye(2048), 10, 32, "w.safetensors"
        ),
        "similarity_table": lambda d: similarity.write_parquet(
            d / "matches.parquet", pd.DataFrame({"similarity": rng.random(40000)})
        ),
        "duplication_plan": lambda d: duplication.write_plan(
            duplication.make_plan([f"img{i:07d}" for i in range(40000)], "dup_both"), d / "dup_both.parquet"
        ),
        "captions": lambda d: captions.write_captions(
            {"conditioning": "nolevel", "dataset": "x", "captions": {i: ["An image " * 20] for i in ids}},
            d / "nolevel.json",
        ),
        "manifest": lambda d: checksums.write_manifest(d / "m.sha256", {f"{i}.png": "0" * 64 for i in ids}),
    }


@pytest.mark.parametrize(
    "writer", ["embeddings", "fid_reference", "similarity_table", "duplication_plan", "captions", "manifest"]
)
def test_full_disk_leaves_no_partial_file(full_disk, writer):
    out = full_disk / "out"
    out.mkdir()
    with pytest.raises(OSError) as err:
        _writers()[writer](out)
    assert err.value.errno == errno.ENOSPC or "No space left on device" in str(err.value)
    assert sorted(os.listdir(out)) == []


def test_full_disk_while_building_a_model_leaves_no_folder(full_disk):
    from diffrep import tinysd

    # safetensors reports it as SafetensorError "I/O error: No space left on device (os error 28)"
    with pytest.raises(Exception, match="No space left on device"):
        tinysd.build_tiny_pipeline(full_disk / "model", ["a red circle"], seed=0, resolution=32)
    assert os.listdir(full_disk) == []


def test_injected_enospc_during_generation_then_rerun_completes(tmp_path, monkeypatch):
    """No space left on the 3rd image: no output folder; the re-run finishes every image once."""
    from PIL import Image

    from diffrep import generation, tinysd

    caps = {f"id{i}": [f"a red circle number {i}"] for i in range(4)}
    model = tinysd.build_tiny_pipeline(
        tmp_path / "model", [c[0] for c in caps.values()], seed=0, resolution=32
    )
    (tmp_path / "captions.json").write_text(
        json.dumps({"conditioning": "instancelevel_blip", "captions": caps})
    )
    pd.DataFrame(
        {"id": list(caps), "duplicated": [True, False, False, False], "weight": [5.0, 1, 1, 1]}
    ).to_parquet(tmp_path / "plan.parquet")
    out = tmp_path / "gen" / "default"
    args = (
        model,
        tmp_path / "captions.json",
        tmp_path / "plan.parquet",
        out,
        {"steps": 2, "guidance_scale": 3.0},
        6,
        32,
        0,
    )
    real_save, calls = Image.Image.save, {"n": 0}

    def save_until_full(self, fp, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(fp).write_bytes(b"\x89PNG\r\n")  # a few bytes made it to disk
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    with pytest.raises(OSError, match="No space left on device"):
        generation.generate(*args, batch_size=2)
    assert not out.exists()
    monkeypatch.setattr(Image.Image, "save", real_save)
    generation.generate(*args, batch_size=2)
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:05d}.png" for i in range(6)] + ["generation_info.json", "prompts.parquet"]
    for i in range(6):
        with Image.open(out / f"{i:05d}.png") as im:
            im.load()
            assert im.size == (32, 32)
    assert list(pd.read_parquet(out / "prompts.parquet")["index"]) == list(range(6))
    assert not list(out.parent.glob(".*partial*"))


# ---------------------------------------------------------------- whole-workflow faults (slow)


@pytest.mark.slow
def test_hf_token_never_written_by_a_micro_run(micro_run):
    """The micro study runs with HF_TOKEN set (conftest); no file it writes contains the token."""
    scanned, leaks = 0, []
    roots = [micro_run / d for d in ("logs", "results", "resources", "benchmarks", ".snakemake")]
    roots += [micro_run / "report.html", REPO / "bench/results.csv"]
    for root in roots:
        for path in [root] if root.is_file() else (root.rglob("*") if root.exists() else []):
            if path.is_file() and not path.is_symlink():
                scanned += 1
                if HF_TOKEN_SENTINEL.encode() in path.read_bytes():
                    leaks.append(str(path))
    assert scanned > 20 and list((micro_run / "logs").rglob("*.log"))
    assert not leaks, leaks


def _interrupt_during_build(cmd, wf):
    """Start the run, send SIGINT to its process group once the model build has started; (code, output)."""
    proc = subprocess.Popen(
        cmd,
        cwd=wf,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # a test run started in the background of a non-interactive shell (`make test &`, some CI
        # runners) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
        # give the run the terminal's default, as a user pressing Ctrl-C has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = wf / "logs/models/build_fid_inception_micro.log"
    deadline = time.time() + 600
    while not (log.exists() and log.stat().st_size > 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the model build started:\n{proc.stdout.read()[-3000:]}"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


@pytest.mark.slow
def test_ctrl_c_of_the_workflow_then_rerun_incomplete_completes(tmp_path):
    """SIGINT to the whole run while a job runs; `--rerun-incomplete` then finishes with verified outputs."""
    from diffrep import checksums

    targets = ["resources/models/fid_inception_micro.sha256", "resources/data/micro_shapes/metadata.parquet"]
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *MICRO, *targets]
    wf = copy_workflow(tmp_path)
    returncode, out = _interrupt_during_build(cmd, wf)
    assert returncode != 0, out[-3000:]
    model = wf / "resources/models/fid_inception_micro"
    assert not (wf / "resources/models/fid_inception_micro.sha256").exists()
    assert not model.exists() or not any(model.iterdir()), "an interrupted build left a model folder"
    rerun = subprocess.run([*cmd, "--rerun-incomplete"], cwd=wf, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    checksums.verify_manifest(wf / "resources/models/fid_inception_micro.sha256", wf / "resources/models")
    leftovers = [p.name for p in (wf / "resources/models").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


# ---------------------------------------------------------------- data inputs nobody else covers


def test_dataset_path_that_does_not_exist_is_named(tmp_path):
    from diffrep import datasets

    with pytest.raises(
        datasets.DatasetError, match=r"dataset folder .*nowhere does not exist \(datasets.\*.source.path\)"
    ):
        datasets.collect_laion(tmp_path / "nowhere", None, "fail")
    with pytest.raises(datasets.DatasetError, match=r"URL table .*urls.csv does not exist"):
        datasets.read_url_table(tmp_path / "urls.csv")
    assert os.listdir(tmp_path) == []


def test_duplicated_image_ids_are_named(tmp_path):
    from diffrep import datasets

    cands = [datasets.Candidate(path=tmp_path / f, source=f, rel=f) for f in ("a.jpg", "a.png", "b.jpg")]
    with pytest.raises(datasets.DatasetError, match="image ids are not unique: a"):
        datasets.assign_ids(cands)
    nested = [datasets.Candidate(path=tmp_path / f, source=f, rel=f) for f in ("x/a.jpg", "y/a.jpg")]
    datasets.assign_ids(nested)  # same stem in two folders: the relative path disambiguates
    assert [c.id for c in nested] == ["x__a", "y__a"]
