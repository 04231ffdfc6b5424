"""The showcase dataset: pictures a pixel descriptor tells apart, nested subsets, labels, captions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from diffrep import showcasedata
from diffrep.builders import dataset_builder


def pixel_descriptors(images) -> np.ndarray:
    """Centred, L2-normalised 16 x 16 pixels (the showcase's pixel descriptor), n x 768."""
    x = np.stack([np.asarray(im.resize((16, 16), Image.BILINEAR), np.float64).ravel() for im in images])
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_train_vs_train_baseline_is_far_below_a_replication_threshold():
    images = [showcasedata.render(0, i)[0] for i in range(300)]
    d = pixel_descriptors(images)
    sims = d @ d.T
    np.fill_diagonal(sims, -1)
    top2 = sims.max(axis=1)  # every picture's best match among the others
    assert top2.mean() < 0.3 and np.percentile(top2, 95) < 0.4 and top2.max() < 0.5


def test_builder_is_registered_and_writes_labels_and_captions(tmp_path):
    out = dataset_builder("showcase_dataset")(tmp_path / "tex", seed=0, n_images=12, n_captions=4)
    captions = json.loads((out / "captions.json").read_text())
    classes = json.loads((out / "classes.json").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(captions) == sorted(classes) == [f"show_{i:04d}.png" for i in range(12)]
    assert [classes[f] for f in pngs] == list(showcasedata.FAMILIES) * 3  # interleaved families
    for i, file in enumerate(pngs):
        caps = captions[file]
        assert len(caps) == 4 and caps[0].endswith(f"picture {i}") and classes[file] in caps[0]
        assert "picture" not in " ".join(caps[1:])  # variants describe but do not name
    with Image.open(out / pngs[0]) as im:
        assert im.mode == "RGB" and im.size == (32, 32)


def test_smaller_builds_are_byte_identical_prefixes_and_seeds_differ(tmp_path):
    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}

    small = digests(showcasedata.build_showcase_dataset(tmp_path / "a", seed=0, n_images=5))
    large = digests(showcasedata.build_showcase_dataset(tmp_path / "b", seed=0, n_images=9))
    other = digests(showcasedata.build_showcase_dataset(tmp_path / "c", seed=1, n_images=5))
    assert len(large) == 9 and {k: large[k] for k in small} == small
    assert other["show_0000.png"] != small["show_0000.png"]


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="n_images=0"):
        showcasedata.build_showcase_dataset(tmp_path / "x", seed=0, n_images=0)
    with pytest.raises(ValueError, match="only 8 templates"):
        showcasedata.build_showcase_dataset(tmp_path / "y", seed=0, n_images=2, n_captions=20)
