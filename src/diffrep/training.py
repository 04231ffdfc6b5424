"""Finetuning a Stable Diffusion UNet on one setting of the study (upstream diff_train.py).

Run as ``accelerate launch [--num_processes N] [--mixed_precision fp16] -m diffrep.training ...``
(diffrep.launch builds the command); the flags and the shape of :func:`train` follow diffusers'
examples/text_to_image/train_text_to_image.py. Only the UNet trains; VAE and text encoder are frozen.

Deviation from upstream: determinism. Every random choice of a training example (which image: a
WeightedRandomSampler draw per epoch, or a permutation for ``nodup`` like upstream's
``shuffle=True``; its caption and mitigation, crop, flip, VAE posterior sample, timestep, noise,
gaussnoise) comes from generators seeded by (seed, draw number), draw number = step x
train_batch_size + position in the batch. A step's examples therefore do not depend on the number
of processes, workers or accumulation steps, and a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffrep import numerics
from diffrep.captions import read_captions
from diffrep.config import CONDITIONINGS, DUPLICATIONS, TRAIN_MITIGATIONS, derive_seed
from diffrep.devices import device_precision
from diffrep.mitigations import add_embedding_noise, train_caption
from diffrep.provenance import platform_fingerprint

log = logging.getLogger("diffrep.training")

KILL_ENV = "DIFFREP_TRAIN_KILL_AFTER_STEP"  # test hook: SIGKILL this process after that step
METRIC_COLUMNS = ("step", "loss", "lr", "steps_per_s")
# Settings that do not change the trained weights (a checkpoint made with other values still resumes).
NOT_RESULT_CHANGING = {
    "output_dir",
    "checkpoints_dir",
    "checkpointing_steps",
    "keep_checkpoints",
    "dataloader_num_workers",
    "log_every",
}


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffrep.training", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--pretrained_model_name_or_path", required=True, help="Base diffusers pipeline folder.")
    add("--train_data_dir", required=True, help="The dataset's images/ folder.")
    add("--metadata", required=True, help="The dataset's metadata.parquet.")
    add("--captions", required=True, help="Caption JSON of the conditioning.")
    add("--plan", required=True, help="Duplication plan parquet.")
    add("--output_dir", required=True, help="Model folder to write (written atomically at the end).")
    add("--checkpoints_dir", required=True, help="Checkpoints folder (outside output_dir).")
    add("--duplication", required=True, choices=DUPLICATIONS)
    add("--conditioning", required=True, choices=CONDITIONINGS)
    add("--train_mitigation", default="none", choices=TRAIN_MITIGATIONS)
    add("--trainspecial_prob", type=float, default=0.1, help="p of randrepl / randwordadd / wordrepeat.")
    add("--rand_noise_lam", type=float, default=0.1, help="gaussnoise: std of the text-embedding noise.")
    add(
        "--mem_threshold",
        type=float,
        default=None,
        help="memthreshold: drop samples whose metric exceeds it.",
    )
    add("--resolution", type=int, default=256)
    add("--center_crop", type=_bool, default=True)
    add("--random_flip", type=_bool, default=True)
    add("--train_batch_size", type=int, default=16, help="Total batch per optimizer step.")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--learning_rate", type=float, default=5e-6)
    add("--lr_scheduler", default="constant_with_warmup")
    add("--lr_warmup_steps", type=int, default=5000)
    add("--max_train_steps", type=int, default=100000)
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0)
    add("--mixed_precision", default="no", choices=("no", "fp16", "bf16"))
    add("--gradient_checkpointing", type=_bool, default=False)
    add("--checkpointing_steps", type=int, default=20000)
    add("--keep_checkpoints", type=_bool, default=False)
    add("--seed", type=int, default=0)
    add("--dataloader_num_workers", type=int, default=0)
    add("--log_every", type=int, default=0, help="Log a line every this many steps (0: about 200 lines).")
    add(
        "--numerics",
        type=json.loads,
        default=None,
        help='The study\'s numerics section as JSON (e.g. \'{"mode": "portable", "threads": 1}\'); checked at start.',
    )
    args = parser.parse_args(argv)
    if not 0 <= args.trainspecial_prob <= 1:
        parser.error(f"--trainspecial_prob {args.trainspecial_prob}: must be in [0, 1]")
    if args.train_mitigation == "memthreshold" and args.mem_threshold is None:
        parser.error("--train_mitigation memthreshold needs --mem_threshold")
    return args


def settings_hash(args: argparse.Namespace) -> str:
    """A hash of the result-changing settings: a checkpoint resumes only a run with the same hash."""
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_RESULT_CHANGING}
    if keep.get("mem_threshold") is None:  # absent before memthreshold existed: old checkpoints still resume
        keep.pop("mem_threshold", None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def micro_batch_size(total: int, processes: int, accumulation: int) -> int:
    """Images per process and micro-step so that one optimizer step sees `total` images.

    ``train_batch_size`` is the *total* batch of one optimizer step: each of P processes computes A
    micro-batches of ``total / (P * A)`` images. DDP averages the gradients over processes and each
    micro-batch loss is divided by A, so the gradient is the mean over the whole batch and the
    learning rate needs no scaling: 2 processes x 8 = 1 x 16 = 1 x 8 x 2 accumulation steps.
    """
    if total % (processes * accumulation):
        raise ValueError(
            f"training.train_batch_size = {total} is not divisible by processes ({processes}) x "
            f"gradient_accumulation_steps ({accumulation}); the total batch is split evenly"
        )
    return total // (processes * accumulation)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The training images of one run, in metadata order."""

    ids: list[str]
    paths: list[Path]
    captions: list[list[str]]
    duplicated: np.ndarray  # bool, N
    weights: np.ndarray  # float64, N

    def __len__(self) -> int:
        return len(self.ids)


def load_train_data(images_dir, metadata, captions, plan) -> TrainData:
    """Read metadata.parquet, a caption JSON and a plan parquet (docs/formats.md); check they agree."""
    import pandas as pd

    meta = pd.read_parquet(metadata)
    caps = read_captions(captions)
    plan_table = pd.read_parquet(plan)
    ids = [str(i) for i in meta["id"]]
    if [str(i) for i in plan_table["id"]] != ids:
        raise ValueError(f"{plan}: ids differ from {metadata} (a plan lists every image, in metadata order)")
    missing = [i for i in ids if not caps.get(i)]
    if missing:
        raise ValueError(f"{captions}: no captions for {len(missing)} image(s), e.g. {missing[:3]}")
    weights = plan_table["weight"].to_numpy(dtype=np.float64)
    if not len(ids) or (weights <= 0).any():
        raise ValueError(f"{plan}: needs at least one image and positive weights")
    return TrainData(
        ids=ids,
        paths=[Path(images_dir) / f for f in meta["file"]],
        captions=[list(caps[i]) for i in ids],
        duplicated=plan_table["duplicated"].to_numpy(dtype=bool),
        weights=weights,
    )


class DrawStream:
    """Image index of every draw: epochs of N draws, weighted with replacement or a permutation."""

    def __init__(self, weights: np.ndarray, uniform: bool, seed: int):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.uniform = uniform
        self.seed = seed

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one stream per training run, a few epochs cached)
    def epoch(self, epoch: int) -> np.ndarray:
        import torch

        n = len(self.weights)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        if self.uniform:  # upstream nodup: DataLoader(shuffle=True)
            return torch.randperm(n, generator=generator).numpy()
        # what WeightedRandomSampler(weights, n, replacement=True) draws
        return torch.multinomial(torch.tensor(self.weights), n, True, generator=generator).numpy()

    def index(self, draw: int) -> int:
        n = len(self.weights)
        return int(self.epoch(draw // n)[draw % n])


def draw_seed(seed: int, what: str, draw: int) -> int:
    """The seed of one kind (`what`: "example", "noise") of random choice of draw number `draw`."""
    return derive_seed(seed, what, draw)


def preprocess(image, resolution: int, center_crop: bool, random_flip: bool, rng: np.random.Generator):
    """Resize (shorter side, bilinear) → center or random crop → optional flip → tensor in [-1, 1], 3 x H x W."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = TF.resize(image.convert("RGB"), resolution, interpolation=InterpolationMode.BILINEAR)
    w, h = image.size
    if center_crop:
        image = TF.center_crop(image, [resolution, resolution])
    else:
        top = int(rng.integers(0, h - resolution + 1))
        left = int(rng.integers(0, w - resolution + 1))
        image = TF.crop(image, top, left, resolution, resolution)
    if random_flip and rng.random() < 0.5:
        image = TF.hflip(image)
    return TF.normalize(TF.to_tensor(image), [0.5], [0.5])


class DrawDataset:
    """``dataset[draw]``: the training example of a draw number (image, caption ids), deterministic."""

    def __init__(self, data: TrainData, stream: DrawStream, tokenizer, args):
        self.data, self.stream, self.tokenizer = data, stream, tokenizer
        self.resolution, self.center_crop, self.random_flip = (
            args.resolution,
            args.center_crop,
            args.random_flip,
        )
        self.duplication, self.mitigation, self.p = (
            args.duplication,
            args.train_mitigation,
            args.trainspecial_prob,
        )
        self.seed = args.seed

    def example(self, draw: int) -> dict:
        from PIL import Image

        i = self.stream.index(draw)
        rng = np.random.default_rng(draw_seed(self.seed, "example", draw))
        caption = train_caption(
            self.data.captions[i],
            duplication=self.duplication,
            weight=float(self.data.weights[i]),
            mitigation=self.mitigation,
            p=self.p,
            tokenizer=self.tokenizer,
            rng=rng,
        )
        with Image.open(self.data.paths[i]) as im:
            pixels = preprocess(im, self.resolution, self.center_crop, self.random_flip, rng)
        return {"draw": draw, "index": i, "caption": caption, "pixel_values": pixels}

    def __getitem__(self, draw: int) -> dict:
        ex = self.example(draw)
        ex["input_ids"] = self.tokenizer(
            ex["caption"],
            truncation=True,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids[0]
        return ex


def collate(examples: list[dict]) -> dict:
    import torch

    return {
        "draws": [e["draw"] for e in examples],
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    }


def step_draws(
    step: int, total: int, accumulation: int, processes: int, rank: int, micro: int
) -> list[list[int]]:
    """The draw numbers of each of this process's micro-batches at an optimizer step.

    Micro-step m of process r takes positions ``(m * processes + r) * micro + [0, micro)`` of the
    step's ``total`` draws, so the processes and micro-steps of a step cover them exactly once.
    """
    first = step * total
    return [
        [first + (micro_step * processes + rank) * micro + j for j in range(micro)]
        for micro_step in range(accumulation)
    ]


class StepBatches:
    """Batch sampler: micro-batches of draw numbers of steps start..stop-1 for one process."""

    def __init__(self, start: int, stop: int, total: int, accumulation: int, processes: int, rank: int):
        self.start, self.stop, self.total = start, stop, total
        self.accumulation, self.processes, self.rank = accumulation, processes, rank
        self.micro = micro_batch_size(total, processes, accumulation)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield from step_draws(step, self.total, self.accumulation, self.processes, self.rank, self.micro)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accumulation


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def diffusion_loss(
    unet,
    vae,
    text_encoder,
    noise_scheduler,
    batch: dict,
    seed: int,
    rand_noise_lam: float = 0.0,
    weight_dtype=None,
    mem_threshold: float | None = None,
    empty_ids=None,
):
    """Mean-squared error of the UNet's prediction against ε or the velocity, for one micro-batch.

    Latents = VAE posterior sample x ``vae.config.scaling_factor``; per image a timestep uniform in
    [0, num_train_timesteps), Gaussian noise, and (gaussnoise) λ·N(0, 1) on the text-encoder hidden
    states, all from a generator seeded by the image's draw number. With `mem_threshold`
    (memthreshold, Wen et al.), the unconditional prediction (`empty_ids`: the empty prompt's
    tokens) is computed too, and the samples whose text-conditional noise norm exceeds the threshold
    are left out of the mean (:func:`diffrep.memorization.threshold_mask`).
    """
    import torch
    import torch.nn.functional as F

    device = batch["pixel_values"].device
    weight_dtype = weight_dtype or torch.float32
    generators = [torch.Generator().manual_seed(draw_seed(seed, "noise", draw)) for draw in batch["draws"]]
    with torch.no_grad():
        dist = vae.encode(batch["pixel_values"].to(device, weight_dtype)).latent_dist
        shape = dist.mean.shape[1:]
        eps = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, dist.mean.dtype)
        latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor
        n_t = noise_scheduler.config.num_train_timesteps
        timesteps = (
            torch.cat([torch.randint(0, n_t, (1,), generator=g) for g in generators]).to(device).long()
        )
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, latents.dtype)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(batch["input_ids"].to(device))[0]
        if rand_noise_lam > 0:
            hidden = add_embedding_noise(hidden, rand_noise_lam, generators)
    pred = unet(noisy, timesteps, hidden).sample
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"scheduler prediction_type {kind!r}: expected 'epsilon' or 'v_prediction'")
    if mem_threshold is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffrep.memorization import threshold_mask

    with torch.no_grad():
        empty = text_encoder(empty_ids.to(device).expand(len(timesteps), -1))[0]
        pred_u = unet(noisy, timesteps, empty).sample
        ab = noise_scheduler.alphas_cumprod.to(device)[timesteps].view(-1, 1, 1, 1)
        keep = threshold_mask(pred.detach(), pred_u, noisy, ab, kind, mem_threshold)
    per_sample = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return (per_sample * keep).sum() / len(keep)


def backward_micro_batch(
    accelerator,
    unet,
    vae,
    text_encoder,
    noise_scheduler,
    batch: dict,
    *,
    last: bool,
    accumulation: int,
    seed: int,
    rand_noise_lam: float = 0.0,
    weight_dtype=None,
    mem_threshold: float | None = None,
    empty_ids=None,
):
    """Loss and backward of one micro-batch (loss / accumulation); DDP syncs gradients only on the `last`.

    Returns the detached micro-batch loss (mean over its images).
    """
    batch = {**batch, "pixel_values": batch["pixel_values"].to(accelerator.device)}
    sync = contextlib.nullcontext() if last else accelerator.no_sync(unet)
    with sync, accelerator.autocast():
        loss = diffusion_loss(
            unet,
            vae,
            text_encoder,
            noise_scheduler,
            batch,
            seed,
            rand_noise_lam,
            weight_dtype,
            mem_threshold=mem_threshold,
            empty_ids=empty_ids,
        )
        accelerator.backward(loss / accumulation)
    return loss.detach()


# --------------------------------------------------------------------------------------------
# Components and checkpoints
# --------------------------------------------------------------------------------------------


def load_components(base: str):
    """Tokenizer, text encoder, VAE, UNet and the DDPM training scheduler of a pipeline folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    kw = dict(local_files_only=True)
    return dict(
        tokenizer=AutoTokenizer.from_pretrained(base, subfolder="tokenizer", **kw),
        text_encoder=CLIPTextModel.from_pretrained(
            base, subfolder="text_encoder", use_safetensors=True, **kw
        ),
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae", use_safetensors=True, **kw),
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True, **kw),
        noise_scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw),
    )


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    found = []
    for p in Path(ckpt_dir).glob("checkpoint-*"):
        if p.is_dir() and p.name.split("-")[1].isdigit() and (p / "state.json").exists():
            found.append((int(p.name.split("-")[1]), p))
    return max(found)[1] if found else None


def save_checkpoint(
    ckpt_dir: Path, step: int, unet, optimizer, lr_scheduler, state: dict, metrics: list[dict]
) -> Path:
    """Write checkpoint-{step} atomically (temp folder renamed), then delete older ones."""
    import torch
    from safetensors.torch import save_file

    from diffrep.fileio import staged_dir

    final = Path(ckpt_dir) / f"checkpoint-{step}"
    with staged_dir(final, replace=True) as tmp:
        sd = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
        save_file(sd, tmp / "unet.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        write_metrics(metrics, tmp / "train_metrics.csv")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    for p in final.parent.glob("checkpoint-*"):
        if p != final:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, unet, optimizer, lr_scheduler) -> tuple[dict, list[dict]]:
    """Restore UNet, AdamW, lr scheduler and RNG states; return (state.json, metrics rows)."""
    import torch
    from safetensors.torch import load_file

    current = path / "unet.safetensors"
    try:
        unet.load_state_dict(load_file(current))
        current = path / "optimizer.pt"
        optimizer.load_state_dict(torch.load(current, weights_only=True))
        current = path / "lr_scheduler.pt"
        lr_scheduler.load_state_dict(torch.load(current, weights_only=True))
        current = path / "rng.pt"
        rng = torch.load(current, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        current = path / "train_metrics.csv"
        return json.loads((path / "state.json").read_text()), read_metrics(current)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(
            f"cannot resume from checkpoint {path}: {current.name} does not load ({first_line}). "
            f"Delete {path} to resume from an earlier checkpoint, or the whole folder to start over."
        ) from exc


def write_metrics(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [
            {
                "step": int(r["step"]),
                "loss": float(r["loss"]),
                "lr": float(r["lr"]),
                "steps_per_s": float(r["steps_per_s"]),
            }
            for r in csv.DictReader(f)
        ]


def save_model(base: str, unet, output_dir: Path, metrics: list[dict], info: dict) -> None:
    """The base pipeline's folder with the trained UNet, train_metrics.csv and train_info.json, written
    atomically. Everything but the UNet is the base's own files, hard-linked (copied across devices):
    the frozen VAE and text encoder take no second copy of disk (1.7 GB per SD 2.1 finetune, found
    by the rehearsal: 24 finetunes would have written 41 GB of copies)."""
    from diffrep.fileio import link_tree, staged_dir

    with staged_dir(output_dir, replace=True) as tmp:
        index = json.loads((Path(base) / "model_index.json").read_text())
        parts = {"model_index.json", *(k for k in index if not k.startswith("_") and k != "unet")}
        linked = link_tree(base, tmp, parts)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        log.info("UNet written; %.2f GB of the base's other files linked, not copied", linked / 1e9)
        write_metrics(metrics, tmp / "train_metrics.csv")
        (tmp / "train_info.json").write_text(json.dumps(info, indent=1))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def make_accelerator(mixed_precision: str):
    """(Accelerator, mixed precision in use): the GPU when there is one and ACCELERATE_USE_CPU is not
    set, with `mixed_precision`; otherwise the CPU, where fp16 runs as bf16 autocast with a warning
    (:func:`diffrep.devices.device_precision`) and ``no`` / ``bf16`` stand."""
    import torch
    from accelerate import Accelerator

    on_gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in (
        "1",
        "true",
    )
    mixed = device_precision(mixed_precision, "cuda" if on_gpu else "cpu", "training.mixed_precision")
    return Accelerator(mixed_precision=mixed, cpu=not on_gpu), mixed


def prepare_models(components: dict, accelerator, mixed_precision: str, gradient_checkpointing: bool):
    """Freeze the VAE and the text encoder (eval mode, on the device, in the mixed-precision dtype) and
    put the UNet in train mode, with gradient checkpointing if asked (on any device); return the
    frozen models' dtype. The UNet keeps its fp32 weights (the master copy autocast works from)."""
    import torch

    vae, text_encoder, unet = components["vae"], components["text_encoder"], components["unet"]
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    for frozen in (vae, text_encoder):
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
        frozen.eval()
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return weight_dtype


def make_optimizer(unet, args: argparse.Namespace):
    """AdamW over the UNet's parameters and its learning-rate schedule, as (optimizer, lr_scheduler).

    The schedule is stepped once per optimizer step; it does not go through ``accelerator.prepare``,
    which would step it once per process.
    """
    import torch
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=args.max_train_steps,
    )
    return optimizer, lr_scheduler


def resume(args: argparse.Namespace, fingerprint: str, unet, optimizer, lr_scheduler, accelerator):
    """(first step, metrics so far, checkpoint path or None): the state of the newest checkpoint in
    ``args.checkpoints_dir`` if it was made with the same result-changing settings, else a fresh start.

    Checkpoints live outside the output folder (Snakemake deletes a failed job's outputs):
    ``checkpoint-{step}/`` holds the UNet (safetensors), the AdamW and lr-scheduler states
    (``torch.save``, loaded with ``weights_only=True``), the torch RNG states, the sampler state and
    the metrics so far. Only the newest is kept; all are deleted once the model is written unless
    ``--keep_checkpoints``.
    """
    start, metrics, resumed_from = 0, [], None
    checkpoint = last_checkpoint(Path(args.checkpoints_dir))
    if checkpoint is not None:
        state = json.loads((checkpoint / "state.json").read_text())
        if state.get("settings_hash") != fingerprint:
            if accelerator.is_main_process:
                log.warning(
                    "%s was made with other settings (hash %s, now %s): starting over",
                    checkpoint,
                    state.get("settings_hash"),
                    fingerprint,
                )
        else:
            state, metrics = load_checkpoint(checkpoint, unet, optimizer, lr_scheduler)
            start, resumed_from = state["step"], str(checkpoint)
            if accelerator.is_main_process:
                log.info("resumed from %s (step %d of %d)", checkpoint, start, args.max_train_steps)
    accelerator.wait_for_everyone()
    return start, metrics, resumed_from


def _empty_ids(tokenizer):
    """Token ids (1 x max length) of the empty prompt: the unconditional input of memthreshold."""
    return tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def optimizer_step(
    accelerator,
    components: dict,
    optimizer,
    lr_scheduler,
    batches,
    args: argparse.Namespace,
    step: int,
    weight_dtype,
) -> dict:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches taken from `batches`.

    Returns the metrics row without its speed: step (1-based), loss (mean over the step's images and
    processes) and the learning rate the step used.
    """
    import torch

    accumulation = args.gradient_accumulation_steps
    lam = args.rand_noise_lam if args.train_mitigation == "gaussnoise" else 0.0
    mem = args.mem_threshold if args.train_mitigation == "memthreshold" else None
    empty_ids = _empty_ids(components["tokenizer"]) if mem is not None else None
    unet = components["unet"]
    step_loss = torch.zeros((), device=accelerator.device)
    for micro_step in range(accumulation):
        batch = next(batches)
        step_loss += (
            backward_micro_batch(
                accelerator,
                unet,
                components["vae"],
                components["text_encoder"],
                components["noise_scheduler"],
                batch,
                last=micro_step == accumulation - 1,
                accumulation=accumulation,
                seed=args.seed,
                rand_noise_lam=lam,
                weight_dtype=weight_dtype,
                mem_threshold=mem,
                empty_ids=empty_ids,
            )
            / accumulation
        )
    step_loss = accelerator.reduce(step_loss, "mean")
    if not torch.isfinite(step_loss):
        raise FloatingPointError(
            f"training loss is {step_loss.item()} at step {step + 1} "
            f"(lr {lr_scheduler.get_last_lr()[0]:.3g}); stopped without writing {args.output_dir}. "
            "Lower training.learning_rate, or use mixed_precision bf16/no."
        )
    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
    optimizer.step()
    lr_now = lr_scheduler.get_last_lr()[0]
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step + 1, "loss": float(step_loss.item()), "lr": float(lr_now)}


def checkpoint_step(
    accelerator,
    args: argparse.Namespace,
    step: int,
    unet,
    optimizer,
    lr_scheduler,
    fingerprint: str,
    metrics: list[dict],
) -> None:
    """Write checkpoint-{step} from the main process while the others wait."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            "settings_hash": fingerprint,
            "sampler": {"seed": args.seed, "draws": step * args.train_batch_size},
        }
        path = save_checkpoint(
            Path(args.checkpoints_dir),
            step,
            accelerator.unwrap_model(unet),
            optimizer,
            lr_scheduler,
            state,
            metrics,
        )
        log.info("checkpoint %s", path)
    accelerator.wait_for_everyone()


def train_steps(
    accelerator,
    components: dict,
    optimizer,
    lr_scheduler,
    loader,
    args: argparse.Namespace,
    *,
    start: int,
    metrics: list[dict],
    weight_dtype,
    fingerprint: str,
) -> list[dict]:
    """Optimizer steps ``start .. max_train_steps - 1``, with a log line every ``log_every`` steps and a
    checkpoint every ``checkpointing_steps``; returns the metrics rows of all steps so far."""
    from tqdm.auto import tqdm

    log_every = args.log_every or max(1, args.max_train_steps // 200)
    kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
    progress = tqdm(
        total=args.max_train_steps,
        initial=start,
        disable=not accelerator.is_main_process,
        desc="finetune",
        mininterval=5,
        file=sys.stderr,
    )
    batches = iter(loader)
    previous = time.time()
    for step in range(start, args.max_train_steps):
        row = optimizer_step(
            accelerator, components, optimizer, lr_scheduler, batches, args, step, weight_dtype
        )
        now = time.time()
        row["steps_per_s"] = 1.0 / max(now - previous, 1e-9)
        previous = now
        metrics.append(row)
        progress.update(1)
        done = row["step"]
        if accelerator.is_main_process and (done % log_every == 0 or done == args.max_train_steps):
            log.info(
                "step %d/%d loss %.5f lr %.3g %.2f steps/s",
                done,
                args.max_train_steps,
                row["loss"],
                row["lr"],
                row["steps_per_s"],
            )
        if done % args.checkpointing_steps == 0 and done < args.max_train_steps:
            checkpoint_step(
                accelerator, args, done, components["unet"], optimizer, lr_scheduler, fingerprint, metrics
            )
        if kill_after and done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    return metrics


def train_info(args: argparse.Namespace, fingerprint: str, metrics: list[dict], **facts) -> dict:
    """train_info.json: the settings (paths left out), their hash, `facts` of the run, the final loss."""
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "checkpoints_dir")},
        "settings_hash": fingerprint,
        "steps": args.max_train_steps,
        "seed": args.seed,
        **facts,
        "final_loss": metrics[-1]["loss"] if metrics else None,
    }


def log_batch_layout(accelerator, mixed_precision: str, args: argparse.Namespace, micro: int) -> None:
    """Main process: the device, and how a step's batch splits into processes × accumulation × images."""
    if accelerator.is_main_process:
        log.info(
            "device %s, %d process(es), mixed precision %s",
            accelerator.device,
            accelerator.num_processes,
            mixed_precision,
        )
        log.info(
            "batch: %d per step = %d process(es) x %d accumulation x %d images",
            args.train_batch_size,
            accelerator.num_processes,
            args.gradient_accumulation_steps,
            micro,
        )


def make_loader(dataset: DrawDataset, args: argparse.Namespace, start: int, accelerator):
    """The DataLoader of steps ``start .. max_train_steps - 1``: :class:`StepBatches` gives this process
    its share of each step's draws."""
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepBatches(
            start,
            args.max_train_steps,
            args.train_batch_size,
            args.gradient_accumulation_steps,
            accelerator.num_processes,
            accelerator.process_index,
        ),
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
    )


def log_train_data(accelerator, data: TrainData, args: argparse.Namespace, start: int) -> None:
    """Main process: the training set, the run's settings and the steps still to do."""
    if accelerator.is_main_process:
        log.info(
            "%d images (%d duplicated), %s, %s, mitigation %s; steps %d..%d",
            len(data),
            int(data.duplicated.sum()),
            args.duplication,
            args.conditioning,
            args.train_mitigation,
            start,
            args.max_train_steps,
        )


def save_trained(
    accelerator,
    args: argparse.Namespace,
    components: dict,
    fingerprint: str,
    metrics: list[dict],
    started: float,
    **facts,
) -> None:
    """After the last step, on the main process: write the pipeline, its metrics and train_info.json
    (:func:`train_info` with the duration since ``started``, ``facts`` and the platform), and remove
    the checkpoints unless ``args.keep_checkpoints``; then end training on every process."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = train_info(
            args,
            fingerprint,
            metrics,
            duration_s=time.time() - started,
            **facts,
            platform=platform_fingerprint(args.numerics),  # what can change the weights' last bits
        )
        unet = accelerator.unwrap_model(components["unet"])
        save_model(args.pretrained_model_name_or_path, unet, Path(args.output_dir), metrics, info)
        log.info("model written to %s", args.output_dir)
        if not args.keep_checkpoints and Path(args.checkpoints_dir).exists():
            shutil.rmtree(args.checkpoints_dir)
            log.info("checkpoints removed (%s)", args.checkpoints_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def train(args: argparse.Namespace) -> Path:
    """Finetune the UNet of ``args.pretrained_model_name_or_path``; write the pipeline to ``args.output_dir``.

    Setup (accelerator, components, data, optimizer, resume from the last checkpoint), the loop
    (:func:`train_steps`), then :func:`save_trained`."""
    started = time.time()
    if args.numerics is not None:  # the kernels and threads of the study's numerics mode (diffrep.numerics)
        numerics.enter(args.numerics, int(os.environ.get("OMP_NUM_THREADS", "1")))
    accelerator, mixed_precision = make_accelerator(args.mixed_precision)
    micro = micro_batch_size(
        args.train_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    log_batch_layout(accelerator, mixed_precision, args, micro)

    components = load_components(args.pretrained_model_name_or_path)
    weight_dtype = prepare_models(components, accelerator, mixed_precision, args.gradient_checkpointing)
    data = load_train_data(args.train_data_dir, args.metadata, args.captions, args.plan)
    uniform = not data.duplicated.any() and bool((data.weights == data.weights[0]).all())
    stream = DrawStream(data.weights, uniform=uniform, seed=args.seed)
    dataset = DrawDataset(data, stream, components["tokenizer"], args)
    optimizer, lr_scheduler = make_optimizer(components["unet"], args)
    fingerprint = settings_hash(args)
    start, metrics, resumed_from = resume(
        args, fingerprint, components["unet"], optimizer, lr_scheduler, accelerator
    )
    components["unet"], optimizer = accelerator.prepare(components["unet"], optimizer)
    loader = make_loader(dataset, args, start, accelerator)
    log_train_data(accelerator, data, args, start)

    metrics = train_steps(
        accelerator,
        components,
        optimizer,
        lr_scheduler,
        loader,
        args,
        start=start,
        metrics=metrics,
        weight_dtype=weight_dtype,
        fingerprint=fingerprint,
    )

    save_trained(
        accelerator,
        args,
        components,
        fingerprint,
        metrics,
        started,
        device=str(accelerator.device),
        processes=accelerator.num_processes,
        micro_batch_size=micro,
        mixed_precision=mixed_precision,
        n_images=len(data),
        n_duplicated=int(data.duplicated.sum()),
        sampling="permutation per epoch" if uniform else "weighted with replacement",
        prediction_type=components["noise_scheduler"].config.prediction_type,
        unet_trainable_parameters=sum(p.numel() for p in components["unet"].parameters() if p.requires_grad),
        resumed_from=resumed_from,
    )
    return Path(args.output_dir)


def main(argv=None) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    train(parse_args(argv))


if __name__ == "__main__":
    main()
