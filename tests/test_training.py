"""Finetuning: sampler, caption choice, batch split, a few-step finetune, resume after a kill, NaN stop."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffrep import launch
from diffrep import training as T

N_IMAGES = 8


def build_inputs(root: Path, pipeline: bool = True) -> dict:
    """A tiny dataset (8 images, 3 captions each, image 0 duplicated) and a tiny SD pipeline."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(N_IMAGES)]
    (root / "images").mkdir(exist_ok=True)
    caps = {}
    for i, id_ in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            root / "images" / f"{id_}.png"
        )
        caps[id_] = [f"a red circle number {i}", f"circle {i} variant", f"shape {i} other"]
    pd.DataFrame(
        {
            "id": ids,
            "file": [f"{i}.png" for i in ids],
            "class": ["c"] * N_IMAGES,
            "captions": [caps[i] for i in ids],
        }
    ).to_parquet(root / "metadata.parquet")
    (root / "captions.json").write_text(
        json.dumps({"conditioning": "instancelevel_blip", "dataset": "t", "captions": caps})
    )
    dup = np.arange(N_IMAGES) == 0
    for name, d in (("dup_both", dup), ("nodup", np.zeros(N_IMAGES, bool))):
        pd.DataFrame({"id": ids, "duplicated": d, "weight": np.where(d, 5.0, 1.0)}).to_parquet(
            root / f"{name}.parquet"
        )
    if pipeline and not (root / "base").exists():
        from diffrep.tinysd import build_tiny_pipeline

        build_tiny_pipeline(root / "base", [c for v in caps.values() for c in v], seed=0, resolution=32)
    return {"root": root, "ids": ids, "captions": caps}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("train_inputs"))


def argv(root: Path, out: str, ckpt: str, **over) -> list[str]:
    args = dict(
        pretrained_model_name_or_path=root / "base",
        train_data_dir=root / "images",
        metadata=root / "metadata.parquet",
        captions=root / "captions.json",
        plan=root / "dup_both.parquet",
        output_dir=root / out,
        checkpoints_dir=root / ckpt,
        duplication="dup_both",
        conditioning="instancelevel_blip",
        train_mitigation="wordrepeat",
        trainspecial_prob=0.5,
        resolution=32,
        train_batch_size=4,
        max_train_steps=5,
        checkpointing_steps=2,
        lr_warmup_steps=1,
        learning_rate=1e-3,
        center_crop="false",
    )
    args.update(over)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def run_training(args, env_extra=None):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "diffrep.training", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# ------------------------------------------------------------------ pure logic


def test_weighted_stream_matches_plan_weights():
    w = np.ones(20)
    w[:2] = 5.0
    stream = T.DrawStream(w, uniform=False, seed=0)
    counts = Counter(stream.index(d) for d in range(20 * 500))
    p_dup = 5 / (5 * 2 + 18)
    assert abs(counts[0] / 10000 - p_dup) < 5 * np.sqrt(p_dup * (1 - p_dup) / 10000)
    assert abs(counts[5] / 10000 - 1 / 28) < 0.01
    # deterministic, and epochs differ
    assert list(T.DrawStream(w, False, 0).epoch(3)) == list(stream.epoch(3))
    assert list(stream.epoch(0)) != list(stream.epoch(1))


def test_uniform_stream_is_a_permutation_per_epoch():
    stream = T.DrawStream(np.ones(10), uniform=True, seed=1)
    for e in range(3):
        assert sorted(stream.epoch(e)) == list(range(10))


@pytest.mark.parametrize("processes,accum", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 4)])
def test_step_draws_cover_the_total_batch_once(processes, accum):
    micro = T.micro_batch_size(16, processes, accum)
    got = sorted(
        d
        for r in range(processes)
        for batch in T.step_draws(3, 16, accum, processes, r, micro)
        for d in batch
    )
    assert got == list(range(48, 64))  # step 3's draws, whatever the split


def test_batch_split_error_names_the_values():
    with pytest.raises(ValueError, match="train_batch_size = 16 is not divisible by processes \\(3\\)"):
        T.micro_batch_size(16, 3, 1)


def test_captions_per_duplication_style(inputs):
    """dup_both: the duplicated image always caption [0]; dup_image: a random caption of its own."""
    root = inputs["root"]
    tok = type("Tok", (), {"__len__": lambda s: 10, "decode": lambda s, ids, **k: "x"})()
    for style, expect_varied in (("dup_both", False), ("dup_image", True)):
        data = T.load_train_data(
            root / "images", root / "metadata.parquet", root / "captions.json", root / "dup_both.parquet"
        )
        args = T.parse_args(argv(root, "o", "c", duplication=style, train_mitigation="none"))
        ds = T.DrawDataset(data, T.DrawStream(data.weights, False, 0), tok, args)
        seen = {}
        for d in range(400):
            ex = ds.example(d)
            seen.setdefault(ex["index"], set()).add(ex["caption"])
        assert seen[0] == (
            set(inputs["captions"]["img0"]) if expect_varied else {inputs["captions"]["img0"][0]}
        )
        assert all(len(v) == 1 for i, v in seen.items() if i != 0)  # not duplicated: caption [0]
        assert ds.example(17)["caption"] == ds.example(17)["caption"]  # a draw is deterministic
        assert np.array_equal(ds.example(17)["pixel_values"].numpy(), ds.example(17)["pixel_values"].numpy())


def test_plan_must_match_metadata(inputs, tmp_path):
    root = inputs["root"]
    pd.read_parquet(root / "dup_both.parquet").iloc[::-1].to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="ids differ from"):
        T.load_train_data(
            root / "images", root / "metadata.parquet", root / "captions.json", tmp_path / "bad.parquet"
        )


def test_preprocess_crop_flip_range():
    rng = np.random.default_rng(0)
    im = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (40, 1, 3)) * 4)
    x = T.preprocess(im, 32, center_crop=True, random_flip=False, rng=rng)
    assert tuple(x.shape) == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    flipped = [T.preprocess(im, 32, True, True, np.random.default_rng(s))[0, 0, 0].item() for s in range(200)]
    assert 60 < sum(v > 0 for v in flipped) < 140  # about half of the draws are flipped


def test_launch_command_per_device():
    cmd, env = launch.launch_command(["--x"], processes=2, cuda=False)
    assert (
        "torch.distributed.run" in cmd and "--nproc_per_node=2" in cmd and env["ACCELERATE_USE_CPU"] == "true"
    )
    cmd, env = launch.launch_command(["--x"], processes=1, cuda=False)
    assert "accelerate.commands.launch" in cmd and "--cpu" in cmd
    cmd, _ = launch.launch_command(["--x"], processes=4, mixed_precision="bf16", cuda=True)
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16" and cmd[-2:] == ["diffrep.training", "--x"]


def test_training_argv_reaches_every_training_flag(inputs):
    """Each training config key that diffrep.launch passes is a flag of the training CLI, value intact."""
    root = inputs["root"]
    training = {
        "resolution": 48,
        "center_crop": False,
        "random_flip": False,
        "train_batch_size": 6,
        "gradient_accumulation_steps": 3,
        "learning_rate": 2e-4,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 7,
        "max_train_steps": 11,
        "adam_beta1": 0.8,
        "adam_beta2": 0.99,
        "adam_weight_decay": 0.03,
        "adam_epsilon": 1e-6,
        "max_grad_norm": 0.5,
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "checkpointing_steps": 5,
        "keep_checkpoints": True,
        "seed": 9,
    }
    assert set(training) == set(launch.TRAINING_FLAGS)
    args = T.parse_args(
        launch.training_argv(
            base=root / "base",
            images=root / "images",
            metadata=root / "metadata.parquet",
            captions=root / "captions.json",
            plan=root / "dup_both.parquet",
            output_dir=root / "o",
            checkpoints_dir=root / "c",
            duplication="dup_image",
            conditioning="instancelevel_blip",
            mitigation={"name": "randwordadd", "p": 0.3, "rand_noise_lam": 0.2},
            training=training,
            workers=2,
        )
    )
    assert {k: getattr(args, k) for k in training} == training
    assert (args.duplication, args.train_mitigation, args.trainspecial_prob, args.rand_noise_lam) == (
        "dup_image",
        "randwordadd",
        0.3,
        0.2,
    )
    assert args.dataloader_num_workers == 2


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_finetune_few_steps_through_accelerate_launch(inputs):
    """scripts/finetune.py's path: training_argv + launch_command (accelerate launch --cpu), with the
    paper's fp16 (bf16 on this CPU) and gradient checkpointing."""
    root = inputs["root"]
    train_argv = launch.training_argv(
        base=root / "base",
        images=root / "images",
        metadata=root / "metadata.parquet",
        captions=root / "captions.json",
        plan=root / "dup_both.parquet",
        output_dir=root / "e2e",
        checkpoints_dir=root / "e2e_ckpt",
        duplication="dup_both",
        conditioning="instancelevel_blip",
        mitigation={"name": "gaussnoise", "p": 0.1, "rand_noise_lam": 0.1},
        training={
            "resolution": 32,
            "train_batch_size": 4,
            "max_train_steps": 3,
            "checkpointing_steps": 2,
            "lr_warmup_steps": 1,
            "learning_rate": 1e-3,
            "center_crop": True,
            "random_flip": True,
            "mixed_precision": "fp16",  # the paper's GPU setting: bf16 autocast on this CPU
            "gradient_checkpointing": True,  # on any device
            "keep_checkpoints": False,
        },
    )
    cmd, env = launch.launch_command(train_argv, processes=1, cuda=False)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "e2e"
    metrics = pd.read_csv(out / "train_metrics.csv")
    assert list(metrics.columns) == ["step", "loss", "lr", "steps_per_s"]
    assert metrics["step"].tolist() == [1, 2, 3] and metrics["loss"].notna().all()
    assert metrics["lr"].tolist() == [0.0, 1e-3, 1e-3]  # constant_with_warmup, 1 warm-up step
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 3 and info["processes"] == 1 and info["mixed_precision"] == "bf16"
    assert "training.mixed_precision: fp16 requested on the CPU, running bf16 instead" in proc.stderr
    assert info["settings"]["train_mitigation"] == "gaussnoise"
    from safetensors.torch import load_file

    base_unet = load_file(root / "base/unet/diffusion_pytorch_model.safetensors")
    assert info["unet_trainable_parameters"] == sum(t.numel() for t in base_unet.values())  # all of it
    assert not (root / "e2e_ckpt").exists()  # removed after the model was written
    assert "step 3/3 loss" in proc.stderr

    new = load_file(out / "unet/diffusion_pytorch_model.safetensors")
    base = load_file(root / "base/unet/diffusion_pytorch_model.safetensors")
    assert set(new) == set(base) and any(not (new[k] == base[k]).all() for k in new)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):  # frozen: the base's own files, linked
        for f in (root / "base" / part).iterdir():
            assert (out / part / f.name).stat().st_ino == f.stat().st_ino, f
    assert (out / "unet/diffusion_pytorch_model.safetensors").stat().st_ino != (
        root / "base/unet/diffusion_pytorch_model.safetensors"
    ).stat().st_ino
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(inputs):
    """SIGKILL after step 3 (checkpoint at step 2), re-run: weights byte-equal to an uninterrupted run."""
    root = inputs["root"]
    full = run_training(argv(root, "full", "ck_full"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_training(argv(root, "res", "ck_res"), {T.KILL_ENV: "3"})
    assert killed.returncode == -9
    assert not (root / "res").exists() and (root / "ck_res/checkpoint-2/unet.safetensors").exists()
    resumed = run_training(argv(root, "res", "ck_res"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "(step 2 of 5)" in resumed.stderr
    a = (root / "full/unet/diffusion_pytorch_model.safetensors").read_bytes()
    b = (root / "res/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b  # exact: every random choice is seeded by the draw number
    m_full, m_res = pd.read_csv(root / "full/train_metrics.csv"), pd.read_csv(root / "res/train_metrics.csv")
    assert m_full["loss"].tolist() == m_res["loss"].tolist() and m_res["step"].tolist() == [1, 2, 3, 4, 5]
    assert json.loads((root / "res/train_info.json").read_text())["resumed_from"].endswith("checkpoint-2")


def test_checkpoint_resumes_only_with_the_same_result_changing_settings(inputs):
    root = inputs["root"]
    h = T.settings_hash(T.parse_args(argv(root, "o", "c")))
    assert h == T.settings_hash(
        T.parse_args(argv(root, "o2", "c2", checkpointing_steps=7, dataloader_num_workers=2))
    )
    assert h != T.settings_hash(T.parse_args(argv(root, "o", "c", learning_rate=2e-3)))
    assert h != T.settings_hash(T.parse_args(argv(root, "o", "c", plan=root / "nodup.parquet")))


def test_nan_loss_stops_with_a_clear_error(inputs):
    root = inputs["root"]
    proc = run_training(argv(root, "nan", "ck_nan", learning_rate=1e30, max_train_steps=4, lr_warmup_steps=0))
    assert proc.returncode != 0
    assert "FloatingPointError: training loss is" in proc.stderr and "stopped without writing" in proc.stderr
    assert not (root / "nan").exists()


def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path):
    import torch
    from safetensors.torch import save_file

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt = tmp_path / "checkpoint-200"
    ckpt.mkdir()
    save_file(model.state_dict(), str(ckpt / "unet.safetensors"))
    (ckpt / "optimizer.pt").write_bytes(b"\x00truncated")
    with pytest.raises(
        RuntimeError, match=r"checkpoint-200: optimizer\.pt does not load .* Delete .*checkpoint-200"
    ):
        T.load_checkpoint(ckpt, model, optimizer, scheduler)
