"""The mini study's dataset: procedurally drawn, visually distinct pictures with labels and captions.

Why drawings: replication is measurable at small scale only when the training images are few
(about 100) and far apart from each other in pixel space (on homogeneous data such as digits,
held-out real images already match each other at similarity 0.94). Each picture here is a
*scene*: a background (plain, or two colours split diagonally or in halves; 10 colours), one large main shape
(its class, one of 10) in its own colour, size, rotation and place, and 0-2 small marks in other
colours. Colours and layout make almost every pair of pictures differ strongly, while the class
is a clean label for class-level conditioning.

Captions, per picture:
- caption [0] describes the scene and ends with the picture's unique name (``picture 17``), so
  it identifies the image, as a LAION caption does;
- captions [1:] are shorter, generic variants without the name (the stand-ins for BLIP captions),
  picked from templates by the seeded RNG.

:func:`build_mini_dataset` is the ``mini_dataset`` builder: it writes a staging folder in the laion
layout with classes (``{id}.png``, ``captions.json``, ``classes.json``; docs/formats.md).
:func:`base_images` draws the separate *base image set* on which the mini base model is pretrained
(same world, different pictures, captions without names).

Everything is a function of the seed (numpy's PCG64 via SeedSequence, Pillow drawing, PNG without
timestamps): the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

CLASSES = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "hexagon",
    "crescent",
    "arrow",
)
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "teal": (20, 150, 150),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
BACKGROUNDS = ("plain", "diagonal", "halves")
SIZES = {"small": 0.22, "medium": 0.30, "large": 0.38}  # radius as a fraction of the image side
PLACES = {
    "top left": (0.3, 0.3),
    "top": (0.5, 0.3),
    "top right": (0.7, 0.3),
    "left": (0.3, 0.5),
    "center": (0.5, 0.5),
    "right": (0.7, 0.5),
    "bottom left": (0.3, 0.7),
    "bottom": (0.5, 0.7),
    "bottom right": (0.7, 0.7),
}
MARK_WORDS = {0: "", 1: "one", 2: "two"}
VARIANT_TEMPLATES = (
    "a {color} {shape} on a {bg} background",
    "a drawing of a {shape}",
    "a {size} {color} {shape} in the {place}",
    "a simple {shape} icon with {color} and {bg} colors",
    "a {bg} scene with a {shape}",
    "an illustration of a {color} {shape}",
    "a {shape} shape, {bgstyle} background",
    "a flat {color} {shape} on {bg}",
)
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: smooth edges, deterministic


@dataclass(frozen=True)
class Scene:
    """The attributes of one picture (everything its captions talk about)."""

    shape: str
    color: str
    size: str
    place: str
    angle: float  # degrees
    bg: str
    bg2: str
    bgstyle: str
    marks: tuple  # ((color, x, y), ...) in [0, 1] image coordinates

    def description(self) -> str:
        bg = {
            "plain": f"a {self.bg} background",
            "diagonal": f"a {self.bg} and {self.bg2} diagonal background",
            "halves": f"a {self.bg} and {self.bg2} two-tone background",
        }[self.bgstyle]
        text = f"a {self.size} {self.color} {self.shape} at the {self.place} on {bg}"
        if self.marks:
            colors = sorted({m[0] for m in self.marks})
            noun = "dot" if len(self.marks) == 1 else "dots"
            text += f" with {MARK_WORDS[len(self.marks)]} {' and '.join(colors)} {noun}"
        return text


def random_scene(rng: np.random.Generator, shape: str | None = None) -> Scene:
    """Draw a scene's attributes; the main shape's colour differs from the background's colours."""
    names = list(COLORS)
    shape = shape or CLASSES[rng.integers(len(CLASSES))]
    bg, bg2 = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    bgstyle = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    others = [c for c in names if c not in (bg, bg2)]
    color = others[rng.integers(len(others))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    place = list(PLACES)[rng.integers(len(PLACES))]
    angle = float(rng.uniform(0, 360))
    marks = []
    for _ in range(int(rng.integers(3))):
        mc = [c for c in others if c != color]
        marks.append((mc[rng.integers(len(mc))], float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))))
    return Scene(shape, color, size, place, round(angle, 1), bg, bg2, bgstyle, tuple(marks))


def _polygon(cx, cy, r, n, angle, inner=None):
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        rr = r * inner if inner and i % 2 else r
        a = math.radians(angle + 360 * i / k)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _rotate(pts, cx, cy, angle):
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in pts]


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` as an RGB image of `size` x `size` px."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLORS[scene.bg])
    d = ImageDraw.Draw(img)
    if scene.bgstyle == "diagonal":
        d.polygon([(0, 0), (big, 0), (0, big)], fill=COLORS[scene.bg2])
    elif scene.bgstyle == "halves":
        d.rectangle([0, 0, big, big // 2 - 1], fill=COLORS[scene.bg2])
    cx, cy = (p * big for p in PLACES[scene.place])
    r = SIZES[scene.size] * big
    fill, a = COLORS[scene.color], scene.angle
    if scene.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        d.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=COLORS[scene.bg])
    elif scene.shape == "square":
        d.polygon(_polygon(cx, cy, r, 4, a + 45), fill=fill)
    elif scene.shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)]
        d.polygon(_rotate(pts, cx, cy, a % 60 - 30), fill=fill)
    elif scene.shape == "triangle":
        d.polygon(_polygon(cx, cy, r, 3, a), fill=fill)
    elif scene.shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6, a), fill=fill)
    elif scene.shape == "star":
        d.polygon(_polygon(cx, cy, r, 5, a, inner=0.45), fill=fill)
    elif scene.shape == "cross":
        t = 0.35 * r
        pts = [
            (cx - t, cy - r),
            (cx + t, cy - r),
            (cx + t, cy - t),
            (cx + r, cy - t),
            (cx + r, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + r),
            (cx - t, cy + r),
            (cx - t, cy + t),
            (cx - r, cy + t),
            (cx - r, cy - t),
            (cx - t, cy - t),
        ]
        d.polygon(_rotate(pts, cx, cy, a), fill=fill)
    elif scene.shape == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        off = 0.5 * r
        ox, oy = cx + off * math.cos(math.radians(a)), cy + off * math.sin(math.radians(a))
        d.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=COLORS[scene.bg])
    elif scene.shape == "arrow":
        t = 0.3 * r
        pts = [
            (cx - r, cy - t),
            (cx, cy - t),
            (cx, cy - r),
            (cx + r, cy),
            (cx, cy + r),
            (cx, cy + t),
            (cx - r, cy + t),
        ]
        d.polygon(_rotate(pts, cx, cy, a), fill=fill)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; known: {', '.join(CLASSES)}")
    for color, mx, my in scene.marks:
        mr = 0.07 * big
        d.ellipse([mx * big - mr, my * big - mr, mx * big + mr, my * big + mr], fill=COLORS[color])
    return img.resize((size, size), Image.Resampling.BOX)


def variant_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct generic captions of `scene` (no picture name), picked from the templates."""
    if n > len(VARIANT_TEMPLATES):
        raise ValueError(
            f"n_captions - 1 = {n} variants asked for, but only {len(VARIANT_TEMPLATES)} templates exist"
        )
    idx = rng.choice(len(VARIANT_TEMPLATES), size=n, replace=False)
    fields = dict(
        shape=scene.shape,
        color=scene.color,
        size=scene.size,
        place=scene.place,
        bg=scene.bg,
        bgstyle=scene.bgstyle,
    )
    return [VARIANT_TEMPLATES[i].format(**fields) for i in idx]


def dataset_scenes(seed: int, n_per_class: int) -> list[Scene]:
    """The training scenes: `n_per_class` of every class, classes interleaved (id order)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    return [random_scene(rng, shape) for _ in range(n_per_class) for shape in CLASSES]


def base_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[str]]:
    """The base image set (for pretraining the mini base model), disjoint from the dataset.

    Returns (images, captions): uint8 array n x size x size x 3 and one description per image
    (no picture names). Drawn from an RNG stream of its own (SeedSequence([seed, 1])).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([np.asarray(render(s, size)) for s in scenes])
    return images, [s.description() for s in scenes]


def caption_corpus(seed: int = 0, n: int = 400) -> list[str]:
    """Text that covers the mini dataset's words (for training a tokenizer): descriptions,
    every variant template for every class and colour, and picture names."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    texts = [random_scene(rng).description() for _ in range(n)]
    for shape in CLASSES:
        texts.append(f"An image of {shape}")
        for color in COLORS:
            s = Scene(shape, color, "small", "center", 0.0, color, color, "plain", ())
            texts += [
                t.format(shape=shape, color=color, size=s.size, place=s.place, bg=color, bgstyle=style)
                for t in VARIANT_TEMPLATES
                for style in BACKGROUNDS[:1]
            ]
    texts += [f"picture {i}" for i in range(10)] + ["An image"]
    return texts


def build_mini_dataset(
    staging_dir: str | os.PathLike,
    seed: int,
    n_per_class: int = 10,
    size: int = 64,
    n_captions: int = 5,
    micro: bool = False,
) -> Path:
    """Builder ``mini_dataset``: write the staging folder of the mini dataset.

    `n_per_class` pictures of each of the 10 classes (100 by default; ``micro: true`` means 2 per
    class at 32 px), `size` px square PNGs named ``{id}.png`` with ids ``shapes_000`` ...;
    ``captions.json`` maps each file to `n_captions` captions (caption [0] identifies the
    picture; the config's ``datasets.*.n_captions`` must equal it); ``classes.json`` maps each
    file to its class (the shape's name). Returns the folder.
    """
    from diffrep.fileio import staged_dir

    if micro:
        n_per_class, size = 2, 32
    if n_captions < 1 or n_per_class < 1 or size < 8:
        raise ValueError(
            f"mini_dataset: n_captions={n_captions}, n_per_class={n_per_class}, size={size} "
            "must be >= 1, >= 1, >= 8"
        )
    scenes = dataset_scenes(seed, n_per_class)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    captions, classes = {}, {}
    with staged_dir(staging_dir) as tmp:
        for i, scene in enumerate(scenes):
            file = f"shapes_{i:03d}.png"
            render(scene, size).save(tmp / file, format="PNG", optimize=False)
            captions[file] = [f"{scene.description()}, picture {i}"] + variant_captions(
                scene, rng, n_captions - 1
            )
            classes[file] = scene.shape
        (tmp / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
        (tmp / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    log.info(
        "mini_dataset: %d pictures of %d px, %d captions each, in %s",
        len(scenes),
        size,
        n_captions,
        staging_dir,
    )
    return Path(staging_dir)
