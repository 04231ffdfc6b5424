"""Where torch work runs: the device of a job that does not name one (GPU when visible, else CPU),
and the precision a device can run.

The paper runs fp16 on GPUs. A CPU has no fp16 autocast worth the name and lacks fp16 kernels for
some ops, so fp16 asked for on a CPU becomes bf16 (the CPU's reduced precision: autocast and the
conv / matmul kernels support it), with a logged warning: the rehearsal study on CPU thereby runs
the paper's reduced-precision code path instead of silently falling back to fp32.
"""

from __future__ import annotations

import logging

log = logging.getLogger("diffrep.devices")

CPU_FALLBACK = {"fp16": "bf16"}  # requested precision -> what a CPU runs instead


def resolve_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_precision(precision: str, device: str, what: str = "this job") -> str:
    """The precision name (``no`` / ``fp32``, ``fp16``, ``bf16``, ``auto``) `device` runs for a request.

    On a GPU the request stands. On a CPU fp16 becomes bf16 with a warning naming `what`
    (:data:`CPU_FALLBACK`); the other names stand.
    """
    if str(device).startswith("cpu") and precision in CPU_FALLBACK:
        use = CPU_FALLBACK[precision]
        log.warning(
            "%s: %s requested on the CPU, running %s instead (fp16 is a GPU setting; "
            "the CPU's reduced precision is bf16)",
            what,
            precision,
            use,
        )
        return use
    return precision
