"""Memorised prompts planted in the mini base model, and their prompt file.

A real model memorises a training picture that it saw many times under one caption (Webster's
500 SD 1.4 prompts). The mini base model does the same when its pretraining (``mini_sd``
builder option ``planted: N``) mixes in ``N`` *planted* pictures, each under one unique nonsense
caption (``"vokarim tesul"``: it identifies the picture without describing it, the only kind of
caption a tiny model memorises, docs/design.md §5), drawn in a fraction ``planted_fraction`` of
every pretraining batch. Planted pictures are textures of :mod:`diffrep.showcasedata` (a pixel
descriptor tells them apart; the mini's shapes all look alike to it) from an RNG stream of their
own.

The builder writes ``memorization/prompts.csv`` into the model folder (part of its manifest): the
planted captions (label ``VM``, ``images`` = their picture under ``memorization/images/``) and two
kinds of non-memorised controls (label ``none``): nonsense captions of the same form that were
never trained on (``kind: unseen_nonsense``) and held-out base-set descriptions
(``kind: base_caption``: the kind of prompt the model was trained on, but not memorised).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
PROMPTS_FILE = "memorization/prompts.csv"
IMAGES_DIR = "memorization/images"


def nonsense_word(rng: np.random.Generator, syllables: int) -> str:
    """A pronounceable nonsense word of consonant-vowel syllables, e.g. ``vokarim`` has 3 (+ a final consonant)."""
    parts = [
        CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))]
        for _ in range(syllables)
    ]
    return "".join(parts) + CONSONANTS[rng.integers(len(CONSONANTS))]


def nonsense_captions(rng: np.random.Generator, n: int, words: int = 2, syllables: int = 3) -> list[str]:
    """`n` distinct nonsense captions of `words` words each."""
    out: list[str] = []
    while len(out) < n:
        caption = " ".join(nonsense_word(rng, syllables) for _ in range(words))
        if caption not in out:
            out.append(caption)
    return out


@dataclasses.dataclass
class PlantedSet:
    """The planted pictures (uint8 N x H x W x 3), their captions, and unseen nonsense controls."""

    images: np.ndarray
    captions: list[str]
    unseen: list[str]


def planted_set(seed: int, n_planted: int, n_unseen: int, size: int) -> PlantedSet:
    """Draw the planted pictures and captions (RNG streams ``SeedSequence([seed, 7, ...])``).

    Captions are drawn together, so no unseen control equals a planted caption.
    """
    from diffrep import showcasedata

    tex_seed = int(np.random.SeedSequence([seed, 7, 0]).generate_state(1)[0])
    images = np.stack([np.asarray(showcasedata.render(tex_seed, i, size)[0]) for i in range(n_planted)])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 1]))
    captions = nonsense_captions(rng, n_planted + n_unseen)
    return PlantedSet(images, captions[:n_planted], captions[n_planted:])


def write_prompt_file(folder: Path, planted: PlantedSet, base_captions: list[str]) -> Path:
    """Write ``memorization/prompts.csv`` and the planted pictures into the model folder `folder`."""
    from PIL import Image

    img_dir = folder / IMAGES_DIR
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, caption) in enumerate(zip(planted.images, planted.captions)):
        name = f"planted_{i:03d}.png"
        Image.fromarray(img).save(img_dir / name, format="PNG")
        rows.append({"prompt": caption, "label": "VM", "kind": "planted", "images": f"images/{name}"})
    rows += [{"prompt": c, "label": "none", "kind": "unseen_nonsense", "images": ""} for c in planted.unseen]
    rows += [{"prompt": c, "label": "none", "kind": "base_caption", "images": ""} for c in base_captions]
    path = folder / PROMPTS_FILE
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
