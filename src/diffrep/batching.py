"""Running a network over many image files in batches, one output row per file, in file order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from diffrep.images import load_rgb


class _Images:
    """A torch Dataset of ``(index, tensor)`` from image paths and a PIL → tensor transform."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, self.transform(load_rgb(self.paths[i]))


def _as_list(items):
    return items


def run_batched(
    paths: Sequence[Path],
    transform: Callable,
    forward: Callable,
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "images",
) -> np.ndarray:
    """Apply ``forward`` (a batch tensor B×C×H×W → B×d) to every image; float32 rows in ``paths`` order.

    Each image is loaded as RGB and passed through ``transform`` (PIL → C×H×W tensor). Images whose
    transformed sizes differ (SSCD's own Resize 288 keeps the aspect ratio) are grouped by shape
    inside a batch, so any mix of sizes works. Progress (tqdm, labelled ``desc``) goes to stderr.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if not paths:
        raise ValueError(f"{desc}: no images to process")
    loader = DataLoader(
        _Images(paths, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
        shuffle=False,
    )
    out: list[np.ndarray | None] = [None] * len(paths)
    with torch.inference_mode(), tqdm(total=len(paths), desc=desc, unit="img", mininterval=5) as bar:
        for items in loader:
            groups: dict[tuple, list] = {}
            for i, t in items:
                groups.setdefault(tuple(t.shape), []).append((i, t))
            for group in groups.values():
                feats = forward(torch.stack([t for _, t in group]))
                feats = feats.detach().float().cpu().numpy().reshape(len(group), -1)
                for (i, _), f in zip(group, feats):
                    out[i] = f
            bar.update(len(items))
    return np.stack(out)
