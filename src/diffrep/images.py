"""Image files: what counts as one, listing and loading them, and checking that one is usable.

An image file is a file whose suffix is one of :data:`IMAGE_SUFFIXES` and whose name does not start
with ``.`` (hidden files are temporaries and bookkeeping). :func:`list_images` lists a folder's;
:func:`train_images` and :func:`generation_images` list a prepared dataset's and a generation
folder's in the order of their tables; :func:`load_rgb` loads one as 8-bit RGB.

A training image is *usable* when it decodes completely, is 8-bit RGB, is at least `min_size` px on
either side and has at most `max_pixels` pixels. Everything else is a *bad image*, with a reason a
user can act on:

- ``zero-byte file``;
- ``corrupt: ...`` (not an image, truncated, undecodable; the decoder's message follows);
- ``non-RGB: mode L (grayscale)`` / ``RGBA (alpha channel)`` / ``P (palette)`` / ``16-bit`` ...;
- ``too small: 12x40 px (min_size 64)`` / ``too large: 20000x20000 px = 4e8 pixels (max_pixels ...)``.

What a bad image does is the dataset's ``bad_images`` policy: ``fail`` raises :class:`BadImageError`
naming the file and the reason, ``drop`` leaves it out and lists it in ``report.json``. Nothing is
dropped silently. The size is read from the header before anything is decoded, so a decompression
bomb is rejected without being decoded.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

POLICIES = ("fail", "drop")
MODE_NAMES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "RGBA": "alpha channel",
    "RGBa": "alpha channel",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
    "I": "32-bit integer",
    "F": "32-bit float",
    "I;16": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
}


# The one definition of an image file's suffix (lower case): what datasets, generation folders and
# metric inputs may hold (pytorch-fid's list plus GIF, which upstream's LAION folders may contain).
IMAGE_SUFFIXES = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)


class BadImageError(ValueError):
    """A bad image under the ``fail`` policy; the message names the file and the reason."""


class MissingImageError(FileNotFoundError):
    """Images that a table lists but a folder lacks, or a folder without images; the message names them."""


@dataclass(frozen=True)
class ImageInfo:
    """A usable image: its format (PIL name, e.g. 'JPEG') and size in px."""

    format: str
    width: int
    height: int


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth per channel from a PNG's IHDR chunk (PIL reads 16-bit RGB PNGs as 8-bit RGB)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">B", head[24:25])[0]
    return None


def check_image(path: str | Path, min_size: int = 64, max_pixels: int = 100_000_000) -> ImageInfo | str:
    """Check one file; return its :class:`ImageInfo` if usable, else the reason (a string).

    `min_size` (px): both sides must be at least this; `max_pixels`: width × height at most this.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return "zero-byte file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    fmt, (w, h), mode = im.format, im.size, im.mode
                    if w * h > max_pixels:
                        return f"too large: {w}x{h} px = {w * h} pixels (max_pixels {max_pixels})"
                    if w < min_size or h < min_size:
                        return f"too small: {w}x{h} px (min_size {min_size})"
                    im.load()  # decodes fully: catches truncated files that open() accepts
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception as err:  # PIL raises many types for undecodable data
        return f"corrupt: {type(err).__name__}: {err}"
    if mode != "RGB":
        return f"non-RGB: mode {mode} ({MODE_NAMES.get(mode, 'not 8-bit RGB')})"
    if fmt == "PNG" and (_png_bit_depth(path) or 8) != 8:
        return f"non-RGB: 16-bit RGB (bit depth {_png_bit_depth(path)}, needs 8)"
    return ImageInfo(format=fmt, width=w, height=h)


def apply_policy(path: str | Path, reason: str, policy: str) -> dict:
    """Handle a bad image: raise (``fail``) or return the report entry (``drop``)."""
    if policy == "fail":
        raise BadImageError(
            f"bad image {path}: {reason} (datasets.*.bad_images is 'fail'; set it to 'drop' to "
            "leave such images out and list them in report.json)"
        )
    if policy != "drop":
        raise ValueError(f"bad_images policy {policy!r}; allowed: {', '.join(POLICIES)}")
    return {"source": str(path), "reason": reason}


# PIL format name -> file extension of the kept original bytes
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


def to_rgb8(path: str | Path) -> Image.Image:
    """A decodable non-RGB image as 8-bit RGB: 16-bit values scaled by 1/256, alpha dropped
    (PIL's ``convert("RGB")``, what upstream does when it loads an image)."""
    import numpy as np

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16)
            im = Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), mode="L")
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
        return im.convert("RGB")


# ---------------------------------------------------------------- listing and loading


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` names an image file: a known suffix (any case) and not a hidden name."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files of `folder` (with `recursive`, at any depth), sorted; hidden files and folders skipped."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as an 8-bit RGB PIL image (PIL's ``convert("RGB")``, as upstream loads images)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def _existing(paths: list[Path], where: str | os.PathLike) -> list[Path]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingImageError(f"{where}: {len(missing)} listed image(s) missing, e.g. {missing[0]}")
    return paths


def train_images(images_dir: str | os.PathLike, metadata: str | os.PathLike) -> tuple[list[str], list[Path]]:
    """Ids and paths of a prepared dataset's images, in ``metadata.parquet`` order (columns id, file)."""
    import pandas as pd

    meta = pd.read_parquet(metadata, columns=["id", "file"])
    paths = _existing([Path(images_dir) / f for f in meta["file"]], metadata)
    return [str(i) for i in meta["id"]], paths


def generation_images(gen_dir: str | os.PathLike) -> tuple[list[str], list[Path]]:
    """File names (the ids) and paths of a generation folder's images, in ``prompts.parquet`` order.

    Without a prompts table (a plain folder of images) its sorted image files are used.
    """
    import pandas as pd

    gen_dir = Path(gen_dir)
    prompts = gen_dir / "prompts.parquet"
    if prompts.is_file():
        files = [str(f) for f in pd.read_parquet(prompts, columns=["file"])["file"]]
    else:
        files = [p.name for p in list_images(gen_dir)]
    if not files:
        raise MissingImageError(f"{gen_dir}: no generated images found")
    return files, _existing([gen_dir / f for f in files], prompts)
