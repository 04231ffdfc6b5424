"""Copy-detection embeddings: the pixel descriptor and the SSCD TorchScript path (a small random
TorchScript module stands in for the real SSCD weights, which cannot be downloaded here)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffrep import embeddings as E

torch.set_num_threads(1)


def smooth_image(rng, size=64):
    """A distinct random image: 8×8 random colours upsampled (bicubic) to size × size."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def make_dataset(root, n=12, seed=0, sizes=None):
    """A dataset folder of docs/formats.md: images/ + metadata.parquet (id, file, ...)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        im = smooth_image(rng)
        if sizes:
            im = im.resize(sizes[i % len(sizes)])
        file = f"img{i:03d}.png"
        im.save(root / "images" / file)
        rows.append(
            {
                "id": f"img{i:03d}",
                "file": file,
                "class": None,
                "captions": [f"image {i}"],
                "width": im.width,
                "height": im.height,
            }
        )
    pd.DataFrame(rows).to_parquet(root / "metadata.parquet")
    return root


class _StandIn(torch.nn.Module):
    """Average-pool to 8×8 and a fixed random projection to 48-d: an SSCD-shaped TorchScript model."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 8 * 8, 48, generator=g), requires_grad=False)

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return x @ self.proj


def make_sscd_standin(folder, name="sscd_standin"):
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch deprecates TorchScript; SSCD's files are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_StandIn())
    scripted.save(str(folder / f"{name}.torchscript.pt"))
    return folder


def test_pixel_descriptors_are_l2_normalised_and_written_per_format(tmp_path):
    data = make_dataset(tmp_path / "data", n=6)
    out = tmp_path / "train.npz"
    summary = E.embed_to_file(
        {"type": "pixel", "size": 8},
        out,
        images_dir=data / "images",
        metadata=data / "metadata.parquet",
        batch_size=4,
    )
    got = E.read_embeddings(out)
    assert got["ids"] == [f"img{i:03d}" for i in range(6)]
    assert got["embeddings"].dtype == np.float32 and got["embeddings"].shape == (6, 3 * 8 * 8)
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, atol=1e-6)
    # mean-centred: each descriptor sums to zero
    np.testing.assert_allclose(got["embeddings"].sum(axis=1), 0.0, atol=1e-5)
    assert got["embedder"] == "pixel(size=8)" and got["preprocess"] == "pixel8"
    assert summary == {"n": 6, "dim": 192, "embedder": "pixel(size=8)", "preprocess": "pixel8"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_pixel_descriptor_ignores_brightness_and_batching(tmp_path):
    """Mean-centring: a uniformly brighter copy is the same descriptor; batch size changes nothing."""
    rng = np.random.default_rng(1)
    im = np.asarray(smooth_image(rng), dtype=np.int16)
    Image.fromarray(np.clip(im // 2, 0, 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.clip(im // 2 + 60, 0, 255).astype(np.uint8)).save(tmp_path / "b.png")
    smooth_image(rng).save(tmp_path / "c.png")
    paths = [tmp_path / f for f in ("a.png", "b.png", "c.png")]
    emb = E.PixelEmbedder(16)
    one, three = emb.embed(paths, batch_size=1), emb.embed(paths, batch_size=3)
    np.testing.assert_allclose(one, three, atol=1e-6)
    assert one[0] @ one[1] > 0.999
    assert one[0] @ one[2] < 0.8


def test_constant_image_gives_a_zero_descriptor_not_nan(tmp_path):
    Image.new("RGB", (32, 32), (90, 90, 90)).save(tmp_path / "flat.png")
    got = E.PixelEmbedder(8).embed([tmp_path / "flat.png"])
    assert np.isfinite(got).all() and not got.any()


@pytest.mark.parametrize("preprocess", ["upstream", "sscd"])
def test_sscd_torchscript_path_normalises_and_handles_mixed_sizes(tmp_path, preprocess):
    """SSCD preprocessing 'sscd' keeps aspect ratios: mixed sizes are grouped by shape per batch."""
    data = make_dataset(tmp_path / "data", n=5, sizes=[(64, 64), (80, 64), (64, 96)])
    model = make_sscd_standin(tmp_path / "models" / "sscd_standin")
    out = tmp_path / "train.npz"
    E.embed_to_file(
        {"type": "sscd", "model": "sscd_standin", "preprocess": preprocess},
        out,
        images_dir=data / "images",
        metadata=data / "metadata.parquet",
        model_dir=model,
        batch_size=4,
        device="cpu",
    )
    got = E.read_embeddings(out)
    assert got["embeddings"].shape == (5, 48)
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, atol=1e-6)
    assert got["embedder"] == "sscd:sscd_standin" and got["preprocess"] == preprocess
    # batching and shape grouping do not change a descriptor
    single = E.make_embedder({"type": "sscd", "preprocess": preprocess}, model).embed(
        [data / "images" / "img001.png"], batch_size=1, device="cpu"
    )
    np.testing.assert_allclose(single[0], got["embeddings"][1], atol=1e-5)


def test_sscd_preprocessing_is_what_the_config_names():
    upstream = E.SSCDEmbedder.__new__(E.SSCDEmbedder)
    upstream.preprocess = "upstream"
    t = upstream.transform()(Image.new("RGB", (300, 400), (255, 0, 0)))
    assert tuple(t.shape) == (3, 224, 224)
    assert t[0].max().item() == pytest.approx(1.0) and t[1].min().item() == pytest.approx(-1.0)
    sscd = E.SSCDEmbedder.__new__(E.SSCDEmbedder)
    sscd.preprocess = "sscd"
    t = sscd.transform()(Image.new("RGB", (300, 400), (255, 0, 0)))
    assert tuple(t.shape) == (3, 384, 288)  # short side 288, no crop
    assert t[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


def test_sscd_model_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(E.EmbeddingError, match="does not exist"):
        E.SSCDEmbedder(tmp_path / "missing")
    folder = tmp_path / "two"
    make_sscd_standin(folder, "a")
    make_sscd_standin(folder, "b")
    with pytest.raises(E.EmbeddingError, match=r"expected one \*\.torchscript\.pt.*a\.torchscript\.pt"):
        E.SSCDEmbedder(folder)
    with pytest.raises(E.EmbeddingError, match="unknown preprocess 'imagenet'"):
        E.SSCDEmbedder(tmp_path / "two" / "a.torchscript.pt", preprocess="imagenet")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.torchscript.pt").write_bytes(b"not a model")
    with pytest.raises(E.EmbeddingError, match="not a loadable TorchScript model"):
        E.SSCDEmbedder(bad).load("cpu")
