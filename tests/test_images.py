"""Bad-image checks: every case is named under 'fail' and listed under 'drop', never silent."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffrep.images import (
    BadImageError,
    ImageInfo,
    MissingImageError,
    apply_policy,
    check_image,
    generation_images,
    list_images,
    load_rgb,
    train_images,
)


def rgb(path, size=(80, 70), fmt="PNG"):
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path, format=fmt)
    return path


def make_bad(tmp_path):
    """One file per bad-image case, with the start of the reason it must get."""
    cases = {}
    (tmp_path / "zero.jpg").write_bytes(b"")
    cases["zero.jpg"] = "zero-byte file"
    (tmp_path / "text.jpg").write_bytes(b"<html>not found</html>")
    cases["text.jpg"] = "corrupt"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90, 3), np.uint8)).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases["truncated.jpg"] = "corrupt"
    Image.new("L", (80, 80)).save(tmp_path / "gray.png")
    cases["gray.png"] = "non-RGB: mode L (grayscale)"
    Image.new("RGBA", (80, 80)).save(tmp_path / "rgba.png")
    cases["rgba.png"] = "non-RGB: mode RGBA"
    Image.new("P", (80, 80)).save(tmp_path / "palette.png")
    cases["palette.png"] = "non-RGB: mode P (palette)"
    Image.fromarray(np.full((80, 80), 40000, np.uint16)).save(tmp_path / "gray16.png")
    cases["gray16.png"] = "non-RGB: mode I;16"
    rgb(tmp_path / "small.png", size=(200, 20))
    cases["small.png"] = "too small: 200x20 px (min_size 64)"
    rgb(tmp_path / "huge.png", size=(400, 300))
    cases["huge.png"] = "too large: 400x300 px = 120000 pixels (max_pixels 100000)"
    return cases


def test_every_bad_case_has_its_reason(tmp_path):
    for name, reason in make_bad(tmp_path).items():
        got = check_image(tmp_path / name, min_size=64, max_pixels=100_000)
        assert isinstance(got, str) and got.startswith(reason), (name, got)
    good = check_image(rgb(tmp_path / "ok.jpg", fmt="JPEG"), min_size=64, max_pixels=100_000)
    assert good == ImageInfo("JPEG", 80, 70)


def test_16bit_rgb_png_is_rejected(tmp_path):
    # PIL decodes 48-bit PNGs as 8-bit RGB; the header's bit depth still says 16
    import struct
    import zlib

    w = h = 64
    raw = b"".join(b"\x00" + b"\x12\x34" * 3 * w for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "rgb16.png").write_bytes(png)
    assert check_image(tmp_path / "rgb16.png").startswith("non-RGB: 16-bit RGB")


def test_policies(tmp_path):
    with pytest.raises(BadImageError, match=r"bad image .*gray\.png: non-RGB"):
        apply_policy(tmp_path / "gray.png", "non-RGB: mode L (grayscale)", "fail")
    assert apply_policy("x.jpg", "zero-byte file", "drop") == {"source": "x.jpg", "reason": "zero-byte file"}


# ---------------------------------------------------------------- listing and loading


def test_one_definition_of_an_image_file(tmp_path):
    """Known suffixes in any case; hidden files (temporaries) and other files are not images."""
    for name in (
        "b.PNG",
        "a.jpg",
        "c.jpeg",
        "d.webp",
        "e.tif",
        ".00007.png.x1y2.png",
        "notes.txt",
        "f.png.part",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/g.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden/h.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg", "d.webp", "e.tif"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.jpg",
        "b.PNG",
        "c.jpeg",
        "d.webp",
        "e.tif",
        "sub/g.png",
    ]


def test_load_rgb_converts_to_8bit_rgb(tmp_path):
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "a.png")
    im = load_rgb(tmp_path / "a.png")
    assert im.mode == "RGB" and im.size == (4, 3) and im.getpixel((0, 0)) == (10, 20, 30)


def test_generation_ids_follow_prompts_table_and_missing_files_are_named(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in (1, 0):
        rgb(gen / f"{i:05d}.png")
    (gen / ".00002.png.tmp.png").write_bytes(b"")  # an interrupted write: not a generation
    ids, paths = generation_images(gen)  # no prompts table: the folder's images, sorted
    assert ids == ["00000.png", "00001.png"] and paths[1] == gen / "00001.png"
    pd.DataFrame({"index": [0, 1], "file": ["00001.png", "00000.png"]}).to_parquet(gen / "prompts.parquet")
    assert generation_images(gen)[0] == ["00001.png", "00000.png"]  # the table's order
    pd.DataFrame({"index": [0, 1, 2], "file": ["00000.png", "00001.png", "00002.png"]}).to_parquet(
        gen / "prompts.parquet"
    )
    with pytest.raises(MissingImageError, match=r"prompts\.parquet: 1 listed image.*00002\.png"):
        generation_images(gen)
    with pytest.raises(MissingImageError, match="no generated images"):
        generation_images(tmp_path)


def test_train_images_follow_metadata_and_missing_files_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    rgb(tmp_path / "images/b.png")
    rgb(tmp_path / "images/a.jpg", fmt="JPEG")
    pd.DataFrame({"id": ["b", "a"], "file": ["b.png", "a.jpg"]}).to_parquet(tmp_path / "metadata.parquet")
    ids, paths = train_images(tmp_path / "images", tmp_path / "metadata.parquet")
    assert ids == ["b", "a"] and paths == [tmp_path / "images/b.png", tmp_path / "images/a.jpg"]
    (tmp_path / "images/a.jpg").unlink()
    with pytest.raises(MissingImageError, match=r"metadata\.parquet: 1 listed image.*a\.jpg"):
        train_images(tmp_path / "images", tmp_path / "metadata.parquet")
