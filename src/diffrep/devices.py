"""Where torch work runs: the device of a job that does not name one (GPU when visible, else CPU)."""

from __future__ import annotations


def resolve_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
