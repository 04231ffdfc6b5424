"""The rehearsal study's datasets: real-size pictures of mixed sizes and modes (builder ``rehearsal_dataset``).

The paper's data (LAION-10k, Imagenette) is large and offline here; what the full-size rehearsal
needs is its *shape*: pictures of a few hundred px with varied aspect ratios (so the training
transform's resize and crop, and the embedders' and FID's resizing, see what they see on real
data), JPEG and PNG files, a grayscale and a CMYK JPEG among them (Imagenette has both; the config's
``non_rgb: convert`` handles them), 21 captions per picture in upstream's LAION caption JSON
with class labels (``kind: laion``), or Imagenette's own layout (``kind: imagenette``): one
sub-folder per class named by its WordNet id (``n01440764/``, ...), no caption at all, so that BLIP
writes every caption (the dataset entry sets ``blip_captions: true``), as for the paper's Imagenette. The pictures are the showcase textures
(:func:`diffrep.showcasedata.render`), drawn at the largest side and resized to each picture's size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

# (width, height) cycled over the pictures: landscape, portrait, square, LAION-like and Imagenette-like
SIZES = [(512, 384), (384, 512), (640, 480), (500, 375), (768, 768), (300, 450), (1024, 683), (256, 256)]
KINDS = ("laion", "imagenette")
# the imagenette kind's class folders, one per texture family (showcasedata.FAMILIES): Imagenette's
# first WordNet ids, so that the ingest names them as upstream does (tench, English springer, ...)
WORDNET_IDS = ("n01440764", "n02102040", "n02979186", "n03000684")
CAPTION_TEMPLATES = [
    "a {color} {family} picture",
    "{family} in {color}",
    "an abstract {color} texture",
    "a close-up of {family}",
    "a {color} background with {family}",
    "wallpaper of {color} {family}",
    "a photo of a {color} pattern",
    "a painting of {family}",
    "{color} {family}, high resolution",
    "a texture of {family} in shades of {color}",
]


def _captions(i: int, family: str, color: str, n: int) -> list[str]:
    """Caption [0] names the picture (as a LAION caption identifies its image); the rest vary."""
    first = f"{color} {family}, picture {i}"
    rest = [CAPTION_TEMPLATES[(i + k) % len(CAPTION_TEMPLATES)] for k in range(n - 1)]
    return [first] + [
        t.format(color=color, family=family) + (f" ({k})" if k >= 10 else "") for k, t in enumerate(rest)
    ]


def _save(img, tmp: Path, i: int) -> str:
    """Picture `i` as PNG, JPEG, grayscale JPEG (i == 1) or CMYK JPEG (i == 2)."""
    if i == 1:
        name = f"img_{i:04d}.jpg"
        img.convert("L").save(tmp / name, format="JPEG", quality=90)
    elif i == 2:
        name = f"img_{i:04d}.jpg"
        img.convert("CMYK").save(tmp / name, format="JPEG", quality=90)
    elif i % 2:
        name = f"img_{i:04d}.jpg"
        img.save(tmp / name, format="JPEG", quality=90)
    else:
        name = f"img_{i:04d}.png"
        img.save(tmp / name, format="PNG")
    return name


def build_rehearsal_dataset(
    staging_dir: str | os.PathLike, seed: int, n_images: int = 40, n_captions: int = 21, kind: str = "laion"
) -> Path:
    """Builder ``rehearsal_dataset``: `n_images` pictures (sizes cycle through :data:`SIZES`).

    ``kind: laion``: ``captions.json`` with `n_captions` captions each and ``classes.json`` (the
    texture family); ``kind: imagenette``: the imagefolder layout, a WordNet-id folder per texture
    family and no caption (`n_captions` unused). The kinds use separate RNG streams (no picture in
    common)."""
    from PIL import Image

    from diffrep.fileio import staged_dir
    from diffrep.showcasedata import FAMILIES, color_name, render

    if kind not in KINDS:
        raise ValueError(f"rehearsal_dataset: kind {kind!r} unknown; allowed: {', '.join(KINDS)}")
    if n_images < 3 or n_captions < 1:
        raise ValueError(f"rehearsal_dataset: n_images={n_images} (>= 3) and n_captions={n_captions} (>= 1)")
    stream = seed * 2 + KINDS.index(kind)
    captions, classes = {}, {}
    with staged_dir(staging_dir) as tmp:
        for i in range(n_images):
            w, h = SIZES[i % len(SIZES)]
            img, family, mean = render(stream, i, max(w, h))
            img = img.resize((w, h), Image.Resampling.BICUBIC)
            if kind == "imagenette":  # n01440764/img_0000.png ...: the class is the folder
                folder = tmp / WORDNET_IDS[FAMILIES.index(family)]
                folder.mkdir(exist_ok=True)
                _save(img, folder, i)
                continue
            name = _save(img, tmp, i)
            captions[name] = _captions(
                i, family, color_name(tuple(int(v) for v in np.asarray(mean))), n_captions
            )
            classes[name] = family
        if kind == "laion":
            (tmp / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
            (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    return Path(staging_dir)
