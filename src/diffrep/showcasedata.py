"""The showcase study's dataset: textures that differ at the scale the copy descriptor sees.

Why textures: the mini dataset's flat shapes on flat backgrounds look alike to a pixel descriptor
(train-vs-train top-2 similarity 0.93, README mini section), so no threshold can tell a copy from a
look-alike. Here every picture is a random smooth colour field (a coarse grid of random colours,
upsampled bicubically; each colour channel independent) with a family-specific overlay drawn from
its own random numbers. Two pictures therefore share nothing but their family's kind of structure,
and their mean-centred pixel correlation is near 0 (``docs/showcase.md`` has the measured
train-vs-train baseline).

Families (the class labels, for classlevel conditioning), interleaved by id:
- ``clouds`` — the colour field alone, with a finer octave added;
- ``stripes`` — the field crossed by a coloured sine grating (random angle, period, phase);
- ``spots`` — the field under a few coloured disks;
- ``strokes`` — the field under a few thick coloured lines.

Captions, per picture: caption [0] describes it (family and main colour) and names it
(``picture 17``), as a LAION caption identifies its image; captions [1:] are generic variants
without the name. Identifying-only captions come from the workflow's ``instancelevel_random``
conditioning (random tokens), not from this builder.

Nested subsets: picture ``i`` depends only on ``(seed, i)``, so the first N pictures of a
1000-picture build are byte-identical to an N-picture build — the dataset-size experiment uses
separate dataset entries with ``n_images: 100 / 300 / 1000``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

FAMILIES = ("clouds", "stripes", "spots", "strokes")
COLOR_NAMES = {
    "red": (200, 50, 50),
    "orange": (220, 140, 40),
    "yellow": (210, 200, 60),
    "green": (60, 160, 70),
    "teal": (40, 150, 150),
    "blue": (50, 80, 200),
    "purple": (130, 60, 170),
    "pink": (220, 130, 180),
    "grey": (128, 128, 128),
    "brown": (120, 80, 50),
}
VARIANT_TEMPLATES = (
    "a {family} texture",
    "an abstract {family} pattern",
    "a {color} {family} image",
    "a colourful {family} design",
    "a {family} pattern with {color} tones",
    "an abstract drawing of {family}",
    "a noisy {family} background",
    "a {color} texture",
)
GRID = 8  # control points per side of the colour field (the descriptor's 16 px sees each of them)
SUPERSAMPLE = 4  # overlays are drawn at 4x and box-filtered down: smooth edges, deterministic


def _field(rng: np.random.Generator, size: int, grid: int, amplitude: float) -> np.ndarray:
    """A smooth random colour field, float size x size x 3, values around 0 (± amplitude)."""
    coarse = rng.normal(0.0, amplitude, size=(3, grid, grid)).astype(np.float32)
    up = [
        np.asarray(Image.fromarray(c, mode="F").resize((size, size), Image.Resampling.BICUBIC))
        for c in coarse
    ]
    return np.stack(up, axis=-1)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def _overlay(rng: np.random.Generator, family: str, size: int) -> Image.Image | None:
    """The family's shapes as an RGBA layer (None for clouds), drawn at SUPERSAMPLE x."""
    if family in ("clouds", "stripes"):
        return None
    big = size * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    if family == "spots":
        for _ in range(int(rng.integers(4, 8))):
            x, y = rng.uniform(0, big, size=2)
            r = rng.uniform(0.06, 0.14) * big
            d.ellipse([x - r, y - r, x + r, y + r], fill=(*_random_color(rng), 255))
    elif family == "strokes":
        for _ in range(int(rng.integers(3, 6))):
            x0, y0, x1, y1 = rng.uniform(0, big, size=4)
            width = int(rng.uniform(0.05, 0.1) * big)
            d.line([x0, y0, x1, y1], fill=(*_random_color(rng), 255), width=width)
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return layer.resize((size, size), Image.Resampling.BOX)


def _grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """A coloured sine grating, float size x size x 3 in about [-80, 80]."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.2, 0.4) * size
    phase = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    color = rng.normal(0.0, 1.0, size=3)
    color = 80.0 * color / np.linalg.norm(color)
    return wave[..., None] * color[None, None, :].astype(np.float32)


def render(seed: int, index: int, size: int = 32) -> tuple[Image.Image, str, tuple[int, int, int]]:
    """Picture `index` of the dataset with seed `seed`: (RGB image, family, mean colour).

    Depends only on (seed, index): the RNG is ``SeedSequence([seed, 0, index])``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, index]))
    family = FAMILIES[index % len(FAMILIES)]
    base = rng.integers(100, 156, size=3).astype(np.float32)
    pixels = base + _field(rng, size, GRID, 55.0)
    if family == "clouds":
        pixels += _field(rng, size, 2 * GRID, 30.0)
    elif family == "stripes":
        pixels = base + 0.7 * (pixels - base) + _grating(rng, size)
    img = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")
    layer = _overlay(rng, family, size)
    if layer is not None:
        img.paste(layer, (0, 0), layer)
    mean = tuple(int(v) for v in np.asarray(img, np.float64).reshape(-1, 3).mean(axis=0))
    return img, family, mean


def color_name(rgb: tuple[int, int, int]) -> str:
    """The nearest named colour (Euclidean in RGB) of `rgb`."""
    names = list(COLOR_NAMES)
    dist = [sum((a - b) ** 2 for a, b in zip(rgb, COLOR_NAMES[n])) for n in names]
    return names[int(np.argmin(dist))]


def captions_for(index: int, family: str, color: str, rng: np.random.Generator, n_captions: int) -> list[str]:
    """Caption [0] (describes and names picture `index`) and `n_captions` - 1 generic variants."""
    if n_captions - 1 > len(VARIANT_TEMPLATES):
        raise ValueError(
            f"showcase_dataset: n_captions={n_captions} asks for {n_captions - 1} variants, but only "
            f"{len(VARIANT_TEMPLATES)} templates exist"
        )
    idx = rng.choice(len(VARIANT_TEMPLATES), size=n_captions - 1, replace=False)
    first = f"a {color} {family} pattern, picture {index}"
    return [first] + [VARIANT_TEMPLATES[i].format(family=family, color=color) for i in idx]


def build_showcase_dataset(
    staging_dir: str | os.PathLike,
    seed: int,
    n_images: int = 100,
    size: int = 32,
    n_captions: int = 5,
) -> Path:
    """Builder ``showcase_dataset``: write the staging folder of the showcase dataset.

    `n_images` pictures (the first `n_images` of one endless sequence: nested subsets), `size` px
    square PNGs named ``show_{i:04d}.png``; ``captions.json`` maps each file to `n_captions`
    captions (the config's ``datasets.*.n_captions`` must equal it); ``classes.json`` maps each
    file to its family. Returns the folder.
    """
    from diffrep.fileio import staged_dir

    if n_images < 1 or size < 8 or n_captions < 1:
        raise ValueError(
            f"showcase_dataset: n_images={n_images}, size={size}, n_captions={n_captions} must be "
            ">= 1, >= 8, >= 1"
        )
    captions, classes = {}, {}
    with staged_dir(staging_dir) as tmp:
        for i in range(n_images):
            img, family, mean = render(seed, i, size)
            file = f"show_{i:04d}.png"
            img.save(tmp / file, format="PNG", optimize=False)
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
            captions[file] = captions_for(i, family, color_name(mean), rng, n_captions)
            classes[file] = family
        (tmp / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    log.info(
        "showcase_dataset: %d pictures of %d px, %d captions each, in %s",
        n_images,
        size,
        n_captions,
        staging_dir,
    )
    return Path(staging_dir)
