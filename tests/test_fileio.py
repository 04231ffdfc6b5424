"""Atomic outputs: a failing writer leaves the target as it was and no temporary behind."""

import os
import stat

import pytest

from diffrep.fileio import atomic_path, resumable_dir, staged_dir


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_atomic_path_publishes_readable_file_only_on_success(tmp_path):
    target = tmp_path / "sub/out.json"
    with atomic_path(target, suffix=".json") as tmp:
        tmp.write_text("new")
        assert not target.exists() and tmp.parent == target.parent and tmp.name.startswith(".out.json.")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "new" and listing(tmp_path) == ["sub", "sub/out.json"]


def test_staged_dir_refuses_a_non_empty_target_unless_replacing(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with (
        pytest.raises(FileExistsError, match="model: output folder exists and is not empty"),
        staged_dir(out),
    ):
        pass
    with pytest.raises(RuntimeError), staged_dir(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert listing(tmp_path) == ["model", "model/old.txt"]  # the old folder is kept on failure
    with staged_dir(out, replace=True) as tmp:
        (tmp / "a/new.txt").parent.mkdir()
        (tmp / "a/new.txt").write_text("new")
    assert listing(tmp_path) == ["model", "model/a", "model/a/new.txt"]
    assert (
        stat.S_IMODE(out.stat().st_mode) == 0o755
        and stat.S_IMODE((out / "a/new.txt").stat().st_mode) == 0o644
    )


def test_resumable_dir_keeps_finished_files_across_a_failure(tmp_path):
    out = tmp_path / "gen"
    with pytest.raises(KeyboardInterrupt), resumable_dir(out, "settings-1") as staging:
        (staging / "00000.png").write_text("done")
        (staging / ".00001.png.x7.png").write_text("half")  # an interrupted atomic_path write
        raise KeyboardInterrupt
    assert not out.exists() and staging == tmp_path / ".gen.partial"
    with resumable_dir(out, "settings-1") as staging:
        assert sorted(p.name for p in staging.iterdir()) == [".fingerprint", "00000.png"]
        (staging / "00001.png").write_text("done")
    assert listing(tmp_path) == ["gen", "gen/00000.png", "gen/00001.png"]


def test_resumable_dir_discards_files_of_other_settings_and_replaces_the_target(tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "stale.png").write_text("old run")
    with pytest.raises(KeyboardInterrupt), resumable_dir(out, "settings-1") as staging:
        (staging / "00000.png").write_text("settings 1")
        raise KeyboardInterrupt
    with resumable_dir(out, "settings-2") as staging:
        assert not (staging / "00000.png").exists()
        (staging / "00000.png").write_text("settings 2")
    assert listing(tmp_path) == ["gen", "gen/00000.png"] and (out / "00000.png").read_text() == "settings 2"


# ---------------------------------------------------------------- training's outputs


def _training_state():
    import torch

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def test_checkpoints_replace_older_ones_and_a_failed_save_keeps_the_last(tmp_path, monkeypatch):
    from diffrep import training as T

    model, optimizer, scheduler = _training_state()
    ckpt = tmp_path / "checkpoints"
    rows = [{"step": 1, "loss": 0.5, "lr": 1e-3, "steps_per_s": 2.0}]
    first = T.save_checkpoint(ckpt, 2, model, optimizer, scheduler, {"settings_hash": "h"}, rows)
    assert first == ckpt / "checkpoint-2" and T.last_checkpoint(ckpt) == first
    assert sorted(p.name for p in first.iterdir()) == [
        "lr_scheduler.pt",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "train_metrics.csv",
        "unet.safetensors",
    ]
    T.save_checkpoint(ckpt, 4, model, optimizer, scheduler, {"settings_hash": "h"}, rows)
    assert os.listdir(ckpt) == ["checkpoint-4"]

    def full_disk(rows, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T, "write_metrics", full_disk)
    with pytest.raises(OSError, match="No space left"):
        T.save_checkpoint(ckpt, 6, model, optimizer, scheduler, {"settings_hash": "h"}, rows)
    assert os.listdir(ckpt) == ["checkpoint-4"]  # the last good checkpoint survives, no temporary left
    state, metrics = T.load_checkpoint(ckpt / "checkpoint-4", *_training_state())
    assert state == {"settings_hash": "h", "step": 4} and metrics == rows


def test_link_tree_links_the_named_parts_and_copies_across_devices(tmp_path, monkeypatch):
    from diffrep.fileio import link_tree

    src = tmp_path / "base"
    for rel in (
        "vae/w.safetensors",
        "vae/config.json",
        "unet/w.safetensors",
        "model_index.json",
        "notes.txt",
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    assert link_tree(src, tmp_path / "a", {"vae", "model_index.json"}) == sum(
        len(r) for r in ("vae/w.safetensors", "vae/config.json", "model_index.json")
    )
    got = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert got == ["model_index.json", "vae/config.json", "vae/w.safetensors"]
    assert (tmp_path / "a/vae/w.safetensors").stat().st_ino == (src / "vae/w.safetensors").stat().st_ino

    def no_link(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("diffrep.fileio.os.link", no_link)
    assert link_tree(src, tmp_path / "b", {"vae"}) == 0  # copied, not linked
    assert (tmp_path / "b/vae/w.safetensors").read_text() == "vae/w.safetensors"
    assert (tmp_path / "b/vae/w.safetensors").stat().st_ino != (src / "vae/w.safetensors").stat().st_ino
