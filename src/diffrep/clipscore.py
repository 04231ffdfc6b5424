"""CLIP score between each generation and its prompt (transformers CLIPModel / CLIPProcessor).

For every generation: the cosine between CLIP's image embedding and the text embedding of its
prompt. Two numbers are recorded, never a zero for a score that was not computed:

- ``clip_cosine_mean``: the mean raw cosine (what upstream DCR's ``gen_clipscore`` logs);
- ``clipscore``: the mean of ``100 · max(cos, 0)`` (torchmetrics' CLIPScore).

The prompt is the caption as drawn (``prompt`` of prompts.parquet: the user's intent); where an
inference-time mitigation changed it, the same two numbers against the prompt actually used
(``prompt_used``; upstream scored those) are added with the suffix ``_prompt_used``. Prompts longer
than the text model's positions are truncated. Images go through the model's own CLIPProcessor
(upstream fed CLIP its retrieval transform instead). When ``clipscore.enabled`` is false the rule
does not run and the tables show 'skipped'.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)


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


def cosines(
    model, processor, images: Sequence, texts: Sequence[str], batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """Cosine between CLIP embeddings of ``images[i]`` (PIL) and ``texts[i]``, float64 (n,)."""
    import torch
    from tqdm import tqdm

    if len(images) != len(texts):
        raise ClipScoreError(f"{len(images)} images but {len(texts)} prompts")
    if not images:
        raise ClipScoreError("no generations to score")
    max_len = getattr(model.config.text_config, "max_position_embeddings", 77)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc="clipscore", unit="batch", mininterval=5):
            imgs = list(images[start:start + batch_size])
            txts = [str(t) for t in texts[start:start + batch_size]]
            pix = processor(images=imgs, return_tensors="pt")["pixel_values"].to(device)
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


def summarise(cos: np.ndarray) -> dict:
    """``clip_cosine_mean``, ``clip_cosine_std`` and ``clipscore`` = mean(100·max(cos, 0)), ``n``."""
    cos = np.asarray(cos, dtype=np.float64)
    if cos.size == 0 or not np.isfinite(cos).all():
        raise ClipScoreError(f"CLIP cosines must be finite and non-empty, got {cos.size} values")
    return {
        "clip_cosine_mean": float(cos.mean()),
        "clip_cosine_std": float(cos.std()),
        "clipscore": float(np.mean(100.0 * np.maximum(cos, 0.0))),
        "n": int(cos.size),
    }


def clipscore_of_generations(gen_dir, model_dir, out, model_name: str, batch_size: int = 64, device: str | None = None) -> dict:
    """The clipscore rule: score a generation folder against its prompts.parquet; write the JSON."""
    import pandas as pd

    from diffrep.devices import resolve_device
    from diffrep.images import load_rgb

    device = resolve_device(device)
    prompts_path = Path(gen_dir) / "prompts.parquet"
    if not prompts_path.is_file():
        raise ClipScoreError(f"{prompts_path} missing: CLIP score needs each generation's prompt")
    prompts = pd.read_parquet(prompts_path)
    for col in ("file", "prompt"):
        if col not in prompts:
            raise ClipScoreError(f"{prompts_path}: no column {col!r}")
    model, processor = load_clip(model_dir, device)
    images = [load_rgb(Path(gen_dir) / f) for f in prompts["file"]]
    result = summarise(cosines(model, processor, images, list(prompts["prompt"]), batch_size, device))
    result.update(model=model_name, prompt_column="prompt")
    if "prompt_used" in prompts and (prompts["prompt_used"] != prompts["prompt"]).any():
        used = summarise(cosines(model, processor, images, list(prompts["prompt_used"]), batch_size, device))
        result.update({f"{k}_prompt_used": v for k, v in used.items() if k != "n"})
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("CLIP score %s", result)
    return result
