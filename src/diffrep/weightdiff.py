"""Per-tensor distances between a finetuned UNet and the base UNet (the layer-wise model comparison).

For every tensor of the two UNets' safetensors (read lazily, one tensor at a time, in float64):

- ``l1`` = Σ|Δ| and ``l2`` = ‖Δ‖₂ of the difference Δ = finetuned − base, ``l1_mean`` = l1 / numel,
  ``rel_l2`` = ‖Δ‖₂ / ‖base‖₂ (null for an all-zero base);
- ``cosine`` between the flattened tensors (1 = same direction; 1 for identical tensors, null when
  one of them is all zero and they differ).

Each row names its ``component`` (``attn1`` self-attention, ``attn2`` cross-attention — the layers
the text conditioning enters —, ``other``) and ``block`` (``down_blocks.0`` … ``mid_block`` …
``up_blocks.3``, else the top-level module: ``conv_in``, ``time_embedding``, …). Tensors whose
shapes differ, or that exist in one model only, are listed with ``status`` (``shape_mismatch``,
``only_in_base``, ``only_in_model``) and null distances instead of stopping the job.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffrep.fileio import atomic_path

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = [
    "tensor",
    "component",
    "block",
    "shape",
    "base_shape",
    "numel",
    "l1",
    "l1_mean",
    "l2",
    "rel_l2",
    "cosine",
    "shape_mismatch",
    "status",
]
_BLOCK = re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.")


class WeightDiffError(RuntimeError):
    """UNet weights that cannot be compared; the message names the folder or file."""


def component(name: str) -> str:
    """``attn1`` / ``attn2`` for self- / cross-attention tensors, else ``other``."""
    parts = name.split(".")
    if "attn1" in parts:
        return "attn1"
    if "attn2" in parts:
        return "attn2"
    return "other"


def block(name: str) -> str:
    """``down_blocks.N`` / ``up_blocks.N`` / ``mid_block``, else the first component of the name."""
    m = _BLOCK.match(name)
    return m.group(1) if m else name.split(".")[0]


def unet_files(model: str | os.PathLike) -> list[Path]:
    """The UNet safetensors of a pipeline folder (``unet/``), a UNet folder or a single file.

    Sharded weights (``*.safetensors.index.json``) give all shards; full precision is preferred
    over a variant (``.fp16.safetensors``) when both exist.
    """
    path = Path(model)
    if path.is_file():
        return [path]
    folder = path / "unet" if (path / "unet").is_dir() else path
    if not folder.is_dir():
        raise WeightDiffError(f"{model}: no such model folder")
    index = sorted(folder.glob("*.safetensors.index.json"))
    index = [p for p in index if ".fp16." not in p.name] or index
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    full = [p for p in files if not re.search(r"\.(fp16|bf16)\.safetensors$", p.name)]
    files = full or files
    if len(files) != 1:
        raise WeightDiffError(
            f"{folder}: expected one UNet *.safetensors (or an index of shards), found {[p.name for p in files] or 'none'}"
        )
    return files


class _Tensors:
    """Lazy access to the tensors of one or more safetensors files, by name."""

    def __init__(self, files):
        from safetensors import safe_open

        self._handles, self.where = [], {}
        for f in files:
            h = safe_open(str(f), framework="pt")
            self._handles.append(h)
            for k in h.keys():  # noqa: SIM118 (safetensors' safe_open is not a dict)
                self.where[k] = h

    def names(self):
        return set(self.where)

    def shape(self, name):
        return tuple(self.where[name].get_slice(name).get_shape())

    def get(self, name):
        return self.where[name].get_tensor(name)


def _shape_str(shape) -> str | None:
    return "x".join(map(str, shape)) if shape is not None else None


def tensor_distance(base, model) -> dict:
    """l1, l1_mean, l2, rel_l2, cosine of two same-shape tensors (computed in float64)."""
    import torch

    a = base.detach().to(torch.float64).flatten()
    b = model.detach().to(torch.float64).flatten()
    d = b - a
    l1 = float(d.abs().sum())
    l2 = float(torch.linalg.vector_norm(d))
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    if l2 == 0.0:
        cos = 1.0
    elif na == 0.0 or nb == 0.0:
        cos = None
    else:
        cos = float(torch.dot(a, b) / (na * nb))
        cos = max(-1.0, min(1.0, cos))
    return {
        "l1": l1,
        "l1_mean": l1 / max(1, a.numel()),
        "l2": l2,
        "rel_l2": l2 / na if na > 0 else None,
        "cosine": cos,
    }


def compare(base: str | os.PathLike, model: str | os.PathLike):
    """One row per UNet tensor of either model (columns :data:`COLUMNS`), sorted by name."""
    import pandas as pd
    from tqdm import tqdm

    a, b = _Tensors(unet_files(base)), _Tensors(unet_files(model))
    rows = []
    for name in tqdm(sorted(a.names() | b.names()), desc="weightdiff", unit="tensor", mininterval=5):
        sa = a.shape(name) if name in a.where else None
        sb = b.shape(name) if name in b.where else None
        row = {
            "tensor": name,
            "component": component(name),
            "block": block(name),
            "shape": _shape_str(sb if sb is not None else sa),
            "base_shape": _shape_str(sa),
            "numel": int(np.prod(sb if sb is not None else sa)),
            "l1": None,
            "l1_mean": None,
            "l2": None,
            "rel_l2": None,
            "cosine": None,
            "shape_mismatch": False,
            "status": "ok",
        }
        if sa is None:
            row["status"] = "only_in_model"
        elif sb is None:
            row["status"] = "only_in_base"
        elif sa != sb:
            row.update(shape_mismatch=True, status="shape_mismatch")
        else:
            row.update(tensor_distance(a.get(name), b.get(name)))
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("l1", "l1_mean", "l2", "rel_l2", "cosine"):
        df[col] = df[col].astype("float64")
    odd = df[df["status"] != "ok"]
    if len(odd):
        log.warning("%d tensor(s) not compared: %s", len(odd), dict(odd["status"].value_counts()))
    return df


def changed(df, atol: float = 0.0) -> list[str]:
    """Names of the compared tensors whose L2 distance exceeds ``atol``."""
    return sorted(df.loc[(df["status"] == "ok") & (df["l2"] > atol), "tensor"])


def summary(df, by: str = "component"):
    """Distances aggregated by ``component`` or ``block``: tensors, numel, total L1, L2 of the whole
    group's difference (√Σ l2²), mean and min cosine, tensors not compared."""
    import pandas as pd

    ok = df[df["status"] == "ok"]
    g = ok.groupby(by)
    out = pd.DataFrame(
        {
            "tensors": g.size(),
            "numel": g["numel"].sum(),
            "l1": g["l1"].sum(),
            "l2": np.sqrt(g["l2"].apply(lambda s: float((s**2).sum()))),
            "cosine_mean": g["cosine"].mean(),
            "cosine_min": g["cosine"].min(),
        }
    )
    out["not_compared"] = df[df["status"] != "ok"].groupby(by).size().reindex(out.index, fill_value=0)
    return out.reset_index()


def weightdiff_file(base, model, out) -> pd.DataFrame:
    """The weightdiff rule: compare and write the parquet table atomically."""
    df = compare(base, model)
    with atomic_path(out, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    log.info("by component:\n%s", summary(df, "component").to_string(index=False))
    return df
