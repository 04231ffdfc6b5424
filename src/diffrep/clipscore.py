"""CLIP score between each generation and its prompt (transformers CLIPModel / CLIPProcessor).

For every image: the cosine between CLIP's image embedding and the text embedding of its prompt.
Two conventions (``clipscore.convention``; every JSON records its own):

- ``torchmetrics`` (default): torchmetrics' ``CLIPScore``: images through the model's own
  CLIPProcessor, ``clipscore`` = max(100 · mean(cos), 0) (the clamp after the mean), scored
  against the prompt as drawn (``prompt`` of prompts.parquet: the user's intent); where an
  inference-time mitigation changed prompts, the same numbers against ``prompt_used`` are added
  with the suffix ``_prompt_used``.
- ``upstream``: DCR's ``utils_ret.gen_clipscore``: images through its retrieval transform
  (Resize 256, CenterCrop 224, Normalize(0.5, 0.5); for a model of another input size s,
  Resize round(s · 8 / 7), CenterCrop s), scored against the prompt actually used
  (``prompt_used``), ``clipscore`` = mean(cos) (upstream's logged number, no × 100, no clamp).
  Upstream used OpenAI CLIP ViT-B/16 (``clip_vit_b16`` in config.yaml); any CLIP folder works.

Both record ``clip_cosine_mean`` (the raw mean cosine) and ``clip_cosine_std``; never a zero for
a score that was not computed. The training-set baseline (upstream's ``clipscore_bg``: training
images against their caption [0]) is a once-per-dataset file of the same shape. Prompts longer
than the text model's positions are truncated (end token kept). docs/parity.md lists what still
differs from upstream and torchmetrics.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)


CONVENTIONS = ("torchmetrics", "upstream")
PREPROCESS = {
    "torchmetrics": "the model's CLIPProcessor",
    "upstream": "Resize 256, CenterCrop 224, Normalize(0.5, 0.5) (DCR diff_retrieval.py; scaled to the model's size)",
}
PROMPT_COLUMN = {"torchmetrics": "prompt", "upstream": "prompt_used"}


class ClipScoreError(RuntimeError):
    """CLIP-score inputs that cannot be used; the message names the file or value."""


def load_clip(model_dir: str | os.PathLike, device: str = "cpu"):
    """``(model, processor)`` from a transformers ``save_pretrained`` folder, offline, eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ClipScoreError(f"CLIP model folder {model_dir} has no config.json; fetch the model first")
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
    processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval(), processor


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ClipScoreError(
            f"clipscore.convention {convention!r} unknown; allowed: {', '.join(CONVENTIONS)}"
        )
    return convention


def upstream_transform(image_size: int = 224):
    """DCR's retrieval transform, for a vision tower of ``image_size`` (224: Resize 256, CenterCrop 224)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(round(image_size * 256 / 224)),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize([0.5], [0.5]),
        ]
    )


def pixel_values(model, processor, images: Sequence, convention: str = "torchmetrics"):
    """The vision tower's input for PIL ``images``: the processor's, or upstream's transform."""
    import torch

    if check_convention(convention) == "upstream":
        transform = upstream_transform(model.config.vision_config.image_size)
        return torch.stack([transform(im) for im in images])
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def _as_image(item):
    from diffrep.images import load_rgb

    return item if hasattr(item, "convert") else load_rgb(item)


def cosines(
    model,
    processor,
    images: Sequence,
    texts: Sequence[str],
    batch_size: int = 64,
    device: str = "cpu",
    convention: str = "torchmetrics",
) -> np.ndarray:
    """Cosine between CLIP embeddings of ``images[i]`` (PIL or a path, read per batch) and ``texts[i]``, float64 (n,)."""
    import torch
    from tqdm import tqdm

    if len(images) != len(texts):
        raise ClipScoreError(f"{len(images)} images but {len(texts)} prompts")
    if not len(images):
        raise ClipScoreError("no images to score")
    max_len = getattr(model.config.text_config, "max_position_embeddings", 77)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc="clipscore", unit="batch", mininterval=5):
            imgs = [_as_image(im) for im in images[start : start + batch_size]]
            txts = [str(t) for t in texts[start : start + batch_size]]
            pix = pixel_values(model, processor, imgs, convention).to(device)
            tok = processor(text=txts, return_tensors="pt", padding=True, truncation=True, max_length=max_len)
            img_emb = model.get_image_features(pixel_values=pix)
            txt_emb = model.get_text_features(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            )
            img_emb = getattr(img_emb, "pooler_output", img_emb)
            txt_emb = getattr(txt_emb, "pooler_output", txt_emb)
            img_emb = torch.nn.functional.normalize(img_emb.double(), dim=-1)
            txt_emb = torch.nn.functional.normalize(txt_emb.double(), dim=-1)
            out.append((img_emb * txt_emb).sum(-1).cpu().numpy())
    return np.concatenate(out)


def summarise(cos: np.ndarray, convention: str = "torchmetrics") -> dict:
    """``clipscore`` (the convention's number), ``clip_cosine_mean``, ``clip_cosine_std``, ``n``.

    torchmetrics: max(100 · mean(cos), 0), the clamp after the mean (``CLIPScore.compute``);
    upstream: mean(cos), as ``gen_clipscore`` returns it.
    """
    cos = np.asarray(cos, dtype=np.float64)
    if cos.size == 0 or not np.isfinite(cos).all():
        raise ClipScoreError(f"CLIP cosines must be finite and non-empty, got {cos.size} values")
    mean = float(cos.mean())
    score = mean if check_convention(convention) == "upstream" else max(100.0 * mean, 0.0)
    return {
        "clipscore": score,
        "clip_cosine_mean": mean,
        "clip_cosine_std": float(cos.std()),
        "n": int(cos.size),
    }


def _write(result: dict, out) -> dict:
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("CLIP score %s", result)
    return result


def clipscore_of_generations(
    gen_dir,
    model_dir,
    out,
    model_name: str,
    batch_size: int = 64,
    device: str | None = None,
    convention: str = "torchmetrics",
) -> dict:
    """The clipscore rule: score a generation folder against its prompts.parquet; write the JSON."""
    import pandas as pd

    from diffrep.devices import resolve_device

    device = resolve_device(device)
    prompts_path = Path(gen_dir) / "prompts.parquet"
    if not prompts_path.is_file():
        raise ClipScoreError(f"{prompts_path} missing: CLIP score needs each generation's prompt")
    prompts = pd.read_parquet(prompts_path)
    column = PROMPT_COLUMN[check_convention(convention)]
    for col in ("file", column):
        if col not in prompts:
            raise ClipScoreError(f"{prompts_path}: no column {col!r}")
    model, processor = load_clip(model_dir, device)
    images = [Path(gen_dir) / f for f in prompts["file"]]  # read batch by batch
    texts = list(prompts[column])
    result = summarise(cosines(model, processor, images, texts, batch_size, device, convention), convention)
    result.update(
        model=model_name, convention=convention, preprocess=PREPROCESS[convention], prompt_column=column
    )
    if (
        convention == "torchmetrics"
        and "prompt_used" in prompts
        and (prompts["prompt_used"] != prompts["prompt"]).any()
    ):
        texts = list(prompts["prompt_used"])
        used = summarise(cosines(model, processor, images, texts, batch_size, device, convention), convention)
        result.update({f"{k}_prompt_used": v for k, v in used.items() if k != "n"})
    return _write(result, out)


def clipscore_of_training_set(
    images_dir,
    metadata,
    captions,
    model_dir,
    out,
    model_name: str,
    dataset: str,
    batch_size: int = 64,
    device: str | None = None,
    convention: str = "torchmetrics",
) -> dict:
    """The clipscore_train_baseline rule (upstream's ``clipscore_bg``): every training image against its
    caption [0] (``captions``: the instancelevel_blip caption file), images read batch by batch."""
    from diffrep.captions import read_captions
    from diffrep.devices import resolve_device
    from diffrep.images import train_images

    device = resolve_device(device)
    ids, paths = train_images(images_dir, metadata)
    caps = read_captions(captions)
    missing = [i for i in ids if not caps.get(i)]
    if missing:
        raise ClipScoreError(
            f"{captions}: no caption for {len(missing)} training image(s), e.g. {missing[0]!r}"
        )
    model, processor = load_clip(model_dir, device)
    cos = cosines(model, processor, paths, [caps[i][0] for i in ids], batch_size, device, convention)
    result = summarise(cos, check_convention(convention))
    result.update(
        model=model_name,
        convention=convention,
        preprocess=PREPROCESS[convention],
        prompt_column="caption 0",
        dataset=dataset,
        kind="train_baseline",
    )
    return _write(result, out)
