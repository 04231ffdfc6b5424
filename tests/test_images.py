"""Bad-image checks: every case is named under 'fail' and listed under 'drop', never silent."""

import io

import numpy as np
import pytest
from PIL import Image

from diffrep.images import BadImageError, ImageInfo, apply_policy, check_image


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
