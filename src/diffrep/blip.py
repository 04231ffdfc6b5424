"""BLIP captions for datasets with fewer captions than configured (Imagenette in the paper).

Upstream captioned with BLIP (base, CapFilt-large, 384 px) by nucleus sampling: top_p 0.9,
min_length 5, max_length 20, 20 captions per image. Here the same through transformers'
``BlipForConditionalGeneration`` (the ``blip`` model of the config, e.g.
Salesforce/blip-image-captioning-base, a ``save_pretrained`` folder with its processor).

Batching never changes the result: the vision encoder runs on batches of images, and the `n`
captions of one image are sampled in one ``generate`` call (a batch of `n` sequences) from a torch
generator state seeded by ``derive_seed(seed, image id)``; so an image's captions depend only on the
model, the image, the seed and the sampling settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from diffrep.config import derive_seed
from diffrep.devices import resolve_device
from diffrep.images import load_rgb

log = logging.getLogger(__name__)


def load_blip(model_dir: str | Path, device: str = "cpu"):
    """(processor, model) from a transformers ``save_pretrained`` folder, offline, eval mode."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(str(model_dir), local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(
        str(model_dir), local_files_only=True, use_safetensors=True
    )
    return processor, model.to(device).eval()


def caption_images(
    images: list,
    ids: list[str],
    processor,
    model,
    n: int = 20,
    top_p: float = 0.9,
    min_length: int = 5,
    max_length: int = 20,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, list[str]]:
    """{id: `n` sampled captions} for `images` (PIL images or paths, loaded per batch), nucleus sampling as upstream."""
    import torch
    from PIL import Image
    from tqdm import tqdm

    device = next(model.parameters()).device
    out: dict[str, list[str]] = {}
    for start in tqdm(range(0, len(images), batch_size), desc="BLIP captions", mininterval=10):
        batch = [
            im if isinstance(im, Image.Image) else load_rgb(im) for im in images[start : start + batch_size]
        ]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        with torch.no_grad():
            for j, image_id in enumerate(ids[start : start + batch_size]):
                torch.manual_seed(derive_seed(seed, "blip", image_id))
                tokens = model.generate(
                    pixel_values=pixels[j : j + 1].repeat(n, 1, 1, 1),
                    do_sample=True,
                    top_p=top_p,
                    top_k=0,
                    min_length=min_length,
                    max_length=max_length,
                    num_beams=1,
                )
                texts = processor.batch_decode(tokens, skip_special_tokens=True)
                out[image_id] = [t.strip() for t in texts]
    return out


def blip_table(captions: dict[str, list[str]]) -> pd.DataFrame:
    """blip.parquet's table: columns id (str), captions (list[str])."""
    return pd.DataFrame({"id": list(captions), "captions": [list(c) for c in captions.values()]})


def caption_dataset(
    images_dir: str | Path,
    metadata: pd.DataFrame,
    model_dir: str | Path,
    settings: dict,
    seed: int,
    batch_size: int = 16,
    device: str | None = None,
) -> pd.DataFrame:
    """BLIP captions of every image of a prepared dataset, as blip.parquet's table.

    `settings`: the config's ``captions.blip`` (n, top_p, min_length, max_length, image_size).
    """
    device = resolve_device(device)
    processor, model = load_blip(model_dir, device)
    size = processor.image_processor.size
    if settings.get("image_size") and settings["image_size"] not in (
        size.get("height"),
        size.get("shortest_edge"),
    ):
        log.warning(
            "captions.blip.image_size %s differs from the model's processor size %s; the model's is used",
            settings["image_size"],
            size,
        )
    ids = [str(i) for i in metadata["id"]]
    images = [Path(images_dir) / f for f in metadata["file"]]
    caps = caption_images(
        images,
        ids,
        processor,
        model,
        n=settings.get("n", 20),
        top_p=settings.get("top_p", 0.9),
        min_length=settings.get("min_length", 5),
        max_length=settings.get("max_length", 20),
        seed=seed,
        batch_size=batch_size,
    )
    return blip_table(caps)
