"""The mini dataset: deterministic, labelled, identifying captions, visually distinct pictures."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from diffrep import minidata


def checksums(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def pixel_descriptors(images: np.ndarray) -> np.ndarray:
    """Centred, L2-normalised 16 x 16 pixels (a Carlini-style pixel descriptor), n x 768."""
    x = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR), np.float64).ravel()
            for im in images
        ]
    )
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mini_dataset_layout_labels_and_captions(tmp_path):
    out = minidata.build_mini_dataset(tmp_path / "shapes", seed=0)
    captions = json.loads((out / "captions.json").read_text())
    classes = json.loads((out / "classes.json").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 100 and sorted(captions) == pngs == sorted(classes)
    assert sorted(set(classes.values())) == sorted(minidata.CLASSES)
    assert all(list(classes.values()).count(c) == 10 for c in minidata.CLASSES)
    assert all(len(c) == 5 and len(set(c)) == 5 for c in captions.values())
    firsts = [c[0] for c in captions.values()]
    assert len(set(firsts)) == 100  # caption [0] identifies its picture
    for file, caps in captions.items():
        assert classes[file] in caps[0]
        assert "picture" not in " ".join(caps[1:])  # the variants do not name the picture
    with Image.open(out / pngs[0]) as im:
        assert im.mode == "RGB" and im.size == (64, 64)


def test_mini_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = checksums(minidata.build_mini_dataset(tmp_path / "a", seed=0, micro=True))
    b = checksums(minidata.build_mini_dataset(tmp_path / "b", seed=0, micro=True))
    c = checksums(minidata.build_mini_dataset(tmp_path / "c", seed=1, micro=True))
    assert a == b and len(a) == 20 + 2
    assert a["shapes_000.png"] != c["shapes_000.png"]


def test_pictures_are_far_apart_in_pixel_space_and_base_set_is_disjoint(tmp_path):
    scenes = minidata.dataset_scenes(0, 10)
    train = np.stack([np.asarray(minidata.render(s, 32)) for s in scenes])
    d = pixel_descriptors(train)
    sim = d @ d.T
    np.fill_diagonal(sim, -1)
    top = sim.max(axis=1)
    # digits score a mean top-1 of 0.94 against each other; these pictures are far apart
    assert top.mean() < 0.75 and np.percentile(top, 95) < 0.92
    base, captions = minidata.base_images(200, seed=0, size=32)
    assert base.shape == (200, 32, 32, 3) and len(captions) == 200
    cross = pixel_descriptors(base) @ d.T
    assert cross.max() < 0.99  # no training picture is in the base set
    assert not set(captions) & {s.description() for s in scenes}


def test_too_many_caption_variants_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="templates"):
        minidata.build_mini_dataset(tmp_path / "x", seed=0, n_captions=20)
    assert not (tmp_path / "x").exists()
