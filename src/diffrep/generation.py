"""Generating images from a run's model with a preset (upstream diff_inference.py, sd_mitigation.py).

Prompts: caption [0] of training images drawn uniformly with replacement by
``numpy.random.default_rng(seed).choice(N, n)`` (upstream: ``np.random.seed(seed);
np.random.choice(okprompts, n)`` over the caption-[0] list), from the caption file of the run's
conditioning; each row records the source image and whether it is duplicated in the run's plan.
The prompt mitigation (rand_numb_add / rand_word_add / rand_word_repeat, ``repeats`` times) is applied
to each prompt with a generator seeded by (seed, index). Image ``i`` is generated with a torch
generator seeded ``derive_seed(seed, "image", i)`` (upstream left finetuned models unseeded), and
the gaussnoise mitigation adds λ·N(0, 1) to both classifier-free-guidance halves of the prompt
embedding from a generator seeded by (seed, "embedding", i). The memorisation mitigations
published after DCR (prompt_optimization, guidance_transition, attention_rescale:
:mod:`diffrep.memmitigation`) act on the embeddings or around the pipeline call. Images therefore depend only on their
index, never on the batch size or on which images were made before.

Prompt embeddings are computed once per batch (``pipe.encode_prompt``) and passed to the pipeline.
A killed job leaves its finished images in ``.{name}.partial/`` next to the output folder
(:func:`diffrep.fileio.resumable_dir`); the next run with the same settings keeps them and makes
the rest, then renames the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep import families, memmitigation, pipelines
from diffrep.captions import read_caption_file
from diffrep.config import derive_seed
from diffrep.devices import device_precision, resolve_device
from diffrep.duplication import in_dup_set
from diffrep.families import scheduler_class
from diffrep.fileio import atomic_path, resumable_dir
from diffrep.mitigations import INFERENCE_MITIGATIONS, augment_prompt

log = logging.getLogger("diffrep.generation")

SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image `index`."""
    return derive_seed(seed, "image", index)


def draw_prompts(captions: dict[str, list[str]], plan: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n prompts: caption [0] of images drawn with replacement.

    Columns index, source_id, duplicated (in this run's plan), dup_set (in the study's duplicated
    set, for nodup and the base model too), prompt, seed.

    `plan` is the run's duplication plan (id, duplicated, weight in metadata order); its order is
    the order images are drawn from.
    """
    ids = [str(i) for i in plan["id"]]
    missing = [i for i in ids if not captions.get(i)]
    if missing:
        raise ValueError(f"captions: no caption for {len(missing)} image(s) of the plan, e.g. {missing[:3]}")
    chosen = np.random.default_rng(seed).choice(len(ids), size=n, replace=True)
    dup = plan["duplicated"].to_numpy(dtype=bool)
    dup_set = in_dup_set(plan).to_numpy()
    return pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "source_id": [ids[j] for j in chosen],
            "duplicated": dup[chosen],
            "dup_set": dup_set[chosen],
            "prompt": [str(captions[ids[j]][0]) for j in chosen],
            "seed": [image_seed(seed, i) for i in range(n)],
        }
    )


def mitigate_prompts(prompts: pd.DataFrame, preset: dict, seed: int, tokenizer=None) -> list[str]:
    """``prompt_used`` of every row: the preset's prompt mitigation, seeded per index."""
    style = preset.get("mitigation", "none")
    if style not in INFERENCE_MITIGATIONS:
        raise ValueError(f"preset mitigation {style!r}; allowed: {', '.join(INFERENCE_MITIGATIONS)}")
    return [
        augment_prompt(
            p,
            style,
            int(preset.get("repeats", 4)),
            np.random.default_rng(derive_seed(seed, "prompt", i)),
            tokenizer,
        )
        for i, p in zip(prompts["index"], prompts["prompt"])
    ]


def set_scheduler(pipe, name: str) -> None:
    """Replace the pipeline's scheduler by a named one built from the same config (``default`` keeps it)."""
    if name == "default":
        return
    cls, extra = scheduler_class(name, SCHEDULERS)
    import diffusers

    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **extra)


DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_dtype(dtype: str, device: str):
    """The torch dtype of a generation: ``auto`` is fp16 on a GPU and fp32 on a CPU; fp16 asked for on
    a CPU runs as bf16, with a warning (:func:`diffrep.devices.device_precision`)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"generation dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    dtype = device_precision(dtype, device, "generation.dtype")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def load_pipeline(model_dir, device: str, dtype, family: str | None = None):
    """The model's pipeline, of its family's class (:func:`diffrep.pipelines.load_pipeline`)."""
    return pipelines.load_pipeline(model_dir, device, dtype, family)


def generate_batch(
    pipe, prompts: list[str], seeds: list[int], preset: dict, resolution: int, device: str, family: str = "sd"
):
    """PIL images of one batch; each image depends only on its prompt and seed.

    The same for every family: the family's prompt embeddings (pooled ones included) are computed,
    perturbed by the gaussnoise mitigation, and passed to the pipeline.
    """
    import torch

    cfg = float(preset.get("guidance_scale", 7.5))
    do_cfg = cfg > 1.0
    with torch.no_grad():
        embeds = pipelines.encode_prompts(
            pipe, family, prompts, device, do_cfg, preset.get("negative_prompt") or None
        )
        if preset.get("mitigation") == "gaussnoise":
            gens = [torch.Generator().manual_seed(derive_seed(s, "embedding")) for s in seeds]
            embeds = pipelines.noisy_embeddings(embeds, float(preset.get("lam", 0.1)), gens)
    if preset.get("mitigation") == "prompt_optimization":
        embeds = memmitigation.optimize_prompt_embeds(pipe, family, embeds, seeds, preset, resolution)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad(), memmitigation.applied(pipe, preset, prompts) as callback:
        out = pipe(
            **embeds,
            guidance_scale=cfg,
            num_inference_steps=int(preset.get("steps", 50)),
            height=resolution,
            width=resolution,
            generator=gens,
            output_type="pil",
            callback_on_step_end=callback,
        )
    return out.images


def platform_ids(model_dir) -> dict:
    """``platform_id`` of this generation job and ``model_platform_id`` of the job that trained or
    built the model (its ``train_info.json`` or ``.build_report.json``; None for a downloaded
    model): the numerics a generation's numbers come from (diffrep.provenance)."""
    from diffrep.provenance import BUILD_REPORT_FILE, platform_fingerprint, platform_id

    model_id = None
    for name in ("train_info.json", BUILD_REPORT_FILE):
        path = Path(model_dir) / name
        if path.exists():
            record = json.loads(path.read_text())
            platform = record.get("platform")
            model_id = record.get("platform_id") or (platform_id(platform) if platform else None)
            break
    return {"platform_id": platform_id(platform_fingerprint()), "model_platform_id": model_id}


def _write_info(folder: Path, info: dict, model_dir, duration_s: float) -> None:
    """generation_info.json: the settings, the duration and the platforms (:func:`platform_ids`)."""
    info = {**info, "duration_s": duration_s, **platform_ids(model_dir)}
    (folder / "generation_info.json").write_text(json.dumps(info, indent=1, default=str))


def fingerprint(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PromptError(ValueError):
    """A prompts table or source that cannot give the prompts asked for; the message names the file."""


# the columns of a prompts table (one row per image; diffrep.webprompts adds its own after these)
PROMPT_COLUMNS = ["index", "source_id", "duplicated", "dup_set", "prompt", "seed"]


def read_prompt_table(path) -> pd.DataFrame:
    """A prompts table, checked for the columns generation needs (a clear error naming the file)."""
    table = pd.read_parquet(path)
    missing = [c for c in PROMPT_COLUMNS if c not in table]
    if missing:
        raise PromptError(f"prompts table {path} lacks column(s) {', '.join(missing)}")
    if list(table["index"]) != list(range(len(table))):
        raise PromptError(f"prompts table {path}: 'index' must be 0, 1, ... in order")
    return table


def _prompts(
    captions_file, plan_file, prompts_file, n_images: int, seed: int
) -> tuple[pd.DataFrame, str | None]:
    """The prompts of a generate job and their caption conditioning: drawn from a caption file and a
    plan, or the rows of a prompts table (diffrep.webprompts: one per image, its prompt and seed;
    `n_images` must equal its rows)."""
    if prompts_file is not None:
        prompts = read_prompt_table(prompts_file)
        if len(prompts) != n_images:
            raise PromptError(f"{prompts_file}: {len(prompts)} prompts, but n_images is {n_images}")
        return prompts, None
    caps = read_caption_file(captions_file)
    return draw_prompts(caps["captions"], pd.read_parquet(plan_file), n_images, seed), caps.get(
        "conditioning"
    )


def _partial_key(info: dict, model_dir, prompts: pd.DataFrame) -> str:
    """What kept partial images must have been made with: the settings, the model, the prompts."""
    drawn = json.dumps([list(prompts["prompt_used"]), [int(s) for s in prompts["seed"]]])
    model = Path(model_dir).resolve().as_posix()
    return fingerprint({**info, "model": model, "prompts": hashlib.sha256(drawn.encode()).hexdigest()})


def _write_prompts(prompts: pd.DataFrame, path) -> None:
    cols = ["index", "file", "source_id", "duplicated", "dup_set", "prompt", "prompt_used", "seed"]
    cols += [c for c in prompts if c not in cols]  # a prompts table's own columns (url, shard, label)
    prompts[cols].to_parquet(path, index=False)


def generate(
    model_dir,
    captions_file,
    plan_file,
    out_dir,
    preset: dict,
    n_images: int,
    resolution: int,
    seed: int,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "auto",
    run: str | None = None,
    prompts_file=None,
) -> Path:
    """Write ``{index:05d}.png``, prompts.parquet and generation_info.json into `out_dir` (docs/formats.md).

    Prompts: drawn from `captions_file` and `plan_file`, or the rows of `prompts_file` (:func:`_prompts`).
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    device = resolve_device(device)
    family = families.family_of(model_dir)
    if dtype == "auto" and device.startswith("cuda"):
        dtype = families.FAMILIES[family].cuda_dtype
    torch_dtype = resolve_dtype(dtype, device)
    prompts, conditioning = _prompts(captions_file, plan_file, prompts_file, n_images, seed)
    pipe = load_pipeline(model_dir, device, torch_dtype, family)
    set_scheduler(pipe, preset.get("scheduler", "default"))
    prompts["prompt_used"] = mitigate_prompts(prompts, preset, seed, pipe.tokenizer)
    prompts["file"] = [f"{i:05d}.png" for i in prompts["index"]]
    info = {
        "preset": {k: v for k, v in preset.items()},
        "model": str(model_dir),
        "run": run,
        "conditioning": conditioning,
        "resolution": int(resolution),
        "n_images": int(n_images),
        "seed": int(seed),
        "scheduler": type(pipe.scheduler).__name__,
        "family": family,
        "dtype": str(torch_dtype).replace("torch.", ""),
    }
    out_dir = Path(out_dir)
    with resumable_dir(out_dir, _partial_key(info, model_dir, prompts)) as staging:
        todo = [i for i in range(n_images) if not (staging / f"{i:05d}.png").exists()]
        if len(todo) < n_images:
            log.info("resuming: %d of %d images already made", n_images - len(todo), n_images)
        log.info(
            "%d images, batch %d, %s %s, scheduler %s, preset %s",
            len(todo),
            batch_size,
            device,
            info["dtype"],
            info["scheduler"],
            preset,
        )
        bar = tqdm(total=n_images, initial=n_images - len(todo), desc="generate", mininterval=5)
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            images = generate_batch(
                pipe,
                [prompts["prompt_used"][i] for i in idx],
                [int(prompts["seed"][i]) for i in idx],
                preset,
                resolution,
                device,
                family,
            )
            for i, im in zip(idx, images):
                with atomic_path(staging / f"{i:05d}.png", suffix=".png") as tmp:
                    im.save(tmp, format="PNG")
            bar.update(len(idx))
        bar.close()
        _write_prompts(prompts, staging / "prompts.parquet")
        _write_info(staging, info, model_dir, time.time() - t0)
    log.info("wrote %d images to %s", n_images, out_dir)
    return out_dir
