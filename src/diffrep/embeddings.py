"""Copy-detection embeddings: one L2-normalised descriptor per image (docs/upstream.md, retrieval).

Two embedders, chosen per config entry of ``embedders`` (``type``):

- ``sscd``: an SSCD TorchScript model (``sscd_disc_large``: ResNeXt101, 1024-d, the model of
  upstream DCR's README command; ``sscd_disc_mixup``: ResNet50, 512-d, the SSCD authors' default),
  loaded with ``torch.jit.load`` from the model folder. The preprocessing is a config choice:
  ``upstream`` = DCR's diff_retrieval.py (Resize 256, CenterCrop 224, Normalize(0.5, 0.5)) or
  ``sscd`` = the SSCD authors' own (Resize 288 on the short side, ImageNet mean/std, no crop).
- ``pixel``: a weight-free descriptor, see :class:`PixelEmbedder` for what and why.

The embedding file (docs/formats.md) is an npz with ``ids`` (str, n), ``embeddings`` (float32,
n × d, L2-normalised rows), ``embedder`` (str) and ``preprocess`` (str); the similarity step copies
``embedder`` and ``preprocess`` next to every score it writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffrep.batching import run_batched
from diffrep.devices import resolve_device
from diffrep.fetch import model_file
from diffrep.fileio import atomic_path
from diffrep.images import generation_images, train_images

log = logging.getLogger(__name__)

PREPROCESS = {
    "upstream": "Resize 256, CenterCrop 224, Normalize(0.5, 0.5) (DCR diff_retrieval.py)",
    "sscd": "Resize 288 (short side), ImageNet mean/std (SSCD authors' default)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def describe_preprocess(name: str) -> str:
    """What a recorded ``preprocess`` name means (``upstream``, ``sscd`` or ``pixel{size}``)."""
    if name in PREPROCESS:
        return PREPROCESS[name]
    if name.startswith("pixel") and name[5:].isdigit():
        n = name[5:]
        return f"Resize {n} (short side), CenterCrop {n}, [0,1], mean-centred, L2-normalised (weight-free)"
    return name


class EmbeddingError(RuntimeError):
    """An embedding input or model that cannot be used; the message names the file or key."""


# ---------------------------------------------------------------- helpers


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n × d) scaled to unit L2 norm, float32. All-zero rows stay zero (and are logged)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        log.warning("%d descriptor(s) are all zero (constant images?) and stay zero", int(zero.sum()))
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


# ---------------------------------------------------------------- embedders


class PixelEmbedder:
    """Weight-free pixel descriptor: the mini study's embedder.

    Each image is resized (short side) to ``size`` and centre-cropped to ``size × size`` (the same
    framing as the training transform), scaled to [0, 1], flattened to ``3·size²`` values,
    mean-centred (the image's own mean is subtracted) and L2-normalised.

    Why: SSCD's weights are a download, and the mini study runs offline. Carlini et al. (2023,
    "Extracting Training Data from Diffusion Models") decide memorisation by distances in pixel
    space, so a pixel descriptor is a recognised copy detector in its own right, and on the mini
    study's small synthetic images a copy is a pixel copy. Mean-centring makes the inner product
    the Pearson correlation of the pixels, so images do not look alike merely because they are
    equally bright; L2-normalising makes the inner-product ranking identical to the ranking by
    Euclidean distance of the normalised vectors (‖a − b‖² = 2 − 2 a·b), so the faiss code path is
    the same as for SSCD. Caveat (docs/design.md): on homogeneous data pixel similarities are high even
    between unrelated real images, so read them against the train-vs-train baseline.
    """

    kind = "pixel"

    def __init__(self, size: int = 32):
        if size < 1:
            raise EmbeddingError(f"embedders: pixel size must be >= 1, got {size}")
        self.size = int(size)
        self.name = f"pixel(size={self.size})"
        self.preprocess = f"pixel{self.size}"
        self.preprocess_detail = describe_preprocess(self.preprocess)

    def transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize(self.size), T.CenterCrop(self.size), T.ToTensor()])

    def embed(
        self, paths: Sequence[Path], batch_size: int = 64, device: str | None = None, num_workers: int = 0
    ) -> np.ndarray:
        """Descriptors of the images, float32 n × (3·size²), L2-normalised rows."""

        def forward(x):
            x = x.reshape(x.shape[0], -1)
            return x - x.mean(dim=1, keepdim=True)

        raw = run_batched(paths, self.transform(), forward, batch_size, num_workers, desc=self.name)
        return l2_normalise(raw)


def find_torchscript(model_dir: str | os.PathLike) -> Path:
    """The single ``*.torchscript.pt`` (or ``*.pt``) file of an SSCD model folder (or the file itself)."""
    return model_file(model_dir, ["*.torchscript.pt", "*.pt"], "SSCD model", EmbeddingError)


class SSCDEmbedder:
    """An SSCD TorchScript copy-detection model (``torch.jit.load``), descriptors L2-normalised.

    ``preprocess`` is ``upstream`` (Resize 256, CenterCrop 224, Normalize(0.5, 0.5), as DCR's
    diff_retrieval.py) or ``sscd`` (Resize 288 on the short side, ImageNet normalisation, as the
    SSCD authors' README). The model returns one descriptor per image (B × d: 1024 for
    sscd_disc_large, 512 for sscd_disc_mixup).
    """

    kind = "sscd"

    def __init__(self, model_dir: str | os.PathLike, preprocess: str = "upstream", name: str | None = None):
        if preprocess not in PREPROCESS:
            raise EmbeddingError(
                f"embedders: unknown preprocess {preprocess!r}; allowed: {', '.join(PREPROCESS)}"
            )
        self.file = find_torchscript(model_dir)
        self.preprocess = preprocess
        self.preprocess_detail = PREPROCESS[preprocess]
        self.name = f"sscd:{name or self.file.name.removesuffix('.torchscript.pt')}"

    def transform(self):
        from torchvision import transforms as T

        if self.preprocess == "upstream":
            return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.5], [0.5])])
        return T.Compose([T.Resize(288), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def load(self, device: str):
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                # SSCD ships TorchScript only; torch's deprecation of jit.load does not apply to us
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(self.file), map_location=device)
        except Exception as err:  # a corrupt or non-TorchScript file
            raise EmbeddingError(f"{self.file}: not a loadable TorchScript model ({err})") from err
        return model.eval()

    def embed(
        self, paths: Sequence[Path], batch_size: int = 64, device: str | None = None, num_workers: int = 0
    ) -> np.ndarray:
        """Descriptors of the images, float32 n × d, L2-normalised rows."""
        device = resolve_device(device)
        model = self.load(device)
        log.info("%s on %s, preprocess %s", self.file, device, self.preprocess_detail)

        def forward(x):
            out = model(x.to(device))
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out

        raw = run_batched(paths, self.transform(), forward, batch_size, num_workers, desc=self.name)
        return l2_normalise(raw)


def make_embedder(cfg: dict, model_dir: str | os.PathLike | None = None):
    """The embedder of one ``embedders`` config entry (``type``, ``model``, ``preprocess``, ``size``)."""
    kind = cfg.get("type")
    if kind == "pixel":
        return PixelEmbedder(cfg.get("size", 32))
    if kind == "sscd":
        if model_dir is None:
            raise EmbeddingError(f"embedder {cfg}: type 'sscd' needs its model folder")
        return SSCDEmbedder(model_dir, cfg.get("preprocess", "upstream"), name=cfg.get("model"))
    raise EmbeddingError(f"embedders: unknown type {kind!r}; allowed: sscd, pixel")


# ---------------------------------------------------------------- files


def write_embeddings(
    path: str | os.PathLike, ids: Sequence[str], embeddings: np.ndarray, embedder: str, preprocess: str
) -> None:
    """Write the npz of docs/formats.md atomically (no half-written file under the final name)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise EmbeddingError(f"{path}: {len(ids)} ids but embeddings of shape {embeddings.shape}")
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            ids=np.asarray(list(ids), dtype=str),
            embeddings=embeddings,
            embedder=np.asarray(embedder),
            preprocess=np.asarray(preprocess),
        )


def read_embeddings(path: str | os.PathLike) -> dict:
    """``{"ids": list[str], "embeddings": float32 n × d, "embedder": str, "preprocess": str}``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {
                "ids": [str(i) for i in f["ids"]],
                "embeddings": np.asarray(f["embeddings"], dtype=np.float32),
                "embedder": str(f["embedder"]),
                "preprocess": str(f["preprocess"]),
            }
    except KeyError as err:
        raise EmbeddingError(f"{path}: not an embedding file of docs/formats.md (missing {err})") from err


def embed_to_file(
    cfg: dict,
    out: str | os.PathLike,
    *,
    images_dir: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    generations: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | None = None,
    num_workers: int = 0,
) -> dict:
    """Embed the training set (``images_dir`` + ``metadata``) or a generation folder; write ``out``.

    Returns a small summary (n, dim, embedder, preprocess) for the log.
    """
    embedder = make_embedder(cfg, model_dir)
    if generations is not None:
        ids, paths = generation_images(generations)
    elif images_dir is not None and metadata is not None:
        ids, paths = train_images(images_dir, metadata)
    else:
        raise EmbeddingError("embed_to_file needs either generations or images_dir + metadata")
    emb = embedder.embed(paths, batch_size=batch_size, device=device, num_workers=num_workers)
    write_embeddings(out, ids, emb, embedder.name, embedder.preprocess)
    summary = {
        "n": len(ids),
        "dim": int(emb.shape[1]),
        "embedder": embedder.name,
        "preprocess": embedder.preprocess,
    }
    log.info("wrote %s: %s", out, summary)
    return summary
