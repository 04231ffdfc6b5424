"""The platform fingerprint: what about a machine and its software can change a float result.

CPU kernels differ by instruction set (torch picks AVX2, AVX512, ... at run time), thread count
changes the order of floating-point sums, and library versions change kernels and defaults; a
training run amplifies such last-bit differences into visibly different models. Results are
bit-identical only for the same fingerprint (docs/reproducibility.md), so every model and table
records it: :func:`platform_fingerprint` gives the fields, :func:`platform_id` a short hash of
them that groups results by machine, :func:`describe` one human-readable line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from importlib import metadata

PACKAGES = ("diffusers", "transformers", "numpy")  # torch: its own __version__ (with the build)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_fields() -> dict:
    """CPU capability torch dispatches to, its threads, deterministic settings and CUDA device."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
    }


def _numerics_fields(numerics: dict | None) -> dict:
    """The numerics mode (given, or read off the environment) and the kernels loaded now."""
    from diffrep import numerics as num

    if numerics is None:
        portable = all(os.environ.get(k) == v for k, v in num.PORTABLE_ENVIRONMENT.items())
        numerics = {"mode": "portable" if portable else "native"}
    numerics = num.settings(numerics)
    kernels = num.loaded_kernels()
    kernels.pop("torch_cpu_capability")  # recorded as cpu_capability
    return {
        "numerics_mode": numerics["mode"],
        "numerics_threads": numerics["threads"] if numerics["mode"] == "portable" else None,
        "numerics_deterministic": numerics["deterministic"],
        **kernels,
    }


def platform_fingerprint(numerics: dict | None = None) -> dict:
    """The fields that can change a float result on this machine, now (thread counts as set).

    ``cpu_model``, ``machine`` (architecture), ``system``, ``python``, the versions of
    :data:`PACKAGES` (None when absent), the thread variables of the environment, from torch:
    ``torch_version`` (with its build, e.g. ``+cu130``), ``cpu_capability``
    (``torch.backends.cpu.get_cpu_capability()``), ``torch_threads``, ``torch_interop_threads``,
    ``deterministic_algorithms``, ``cudnn_deterministic``, ``cudnn_benchmark``, ``cuda_device`` and
    ``cuda_version`` (None without a GPU); and the numerics mode (`numerics`, the study's
    ``numerics`` section; read off the environment when None) with the kernels each library runs
    (:func:`diffrep.numerics.loaded_kernels`).
    """
    return {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        **{f"{p}_version": _version(p) for p in PACKAGES},
        **{v.lower(): os.environ.get(v) for v in THREAD_VARIABLES},
        **_torch_fields(),
        **_numerics_fields(numerics),
    }


# What identifies a machine's numerics in portable mode: not the box (CPU model, core count, the
# thread variables Snakemake sets per job), only what decides the kernels and their order of sums.
PORTABLE_ID_FIELDS = (
    "machine",
    "system",
    "torch_version",
    *(f"{p}_version" for p in PACKAGES),
    "cpu_capability",
    "torch_threads",
    "numerics_mode",
    "numerics_threads",
    "numerics_deterministic",
    "numpy_simd",
    "openblas_coretypes",
    "deterministic_algorithms",
    "cuda_device",
    "cuda_version",
)


def platform_id(fingerprint: dict) -> str:
    """12 hex digits of the sha256 of a fingerprint: equal fingerprints, equal ids.

    In portable mode only :data:`PORTABLE_ID_FIELDS` count, so two machines whose kernels are pinned
    alike share an id whatever their CPU model (the id names the numerics, not the box).
    """
    if fingerprint.get("numerics_mode") == "portable":
        fingerprint = {k: fingerprint.get(k) for k in PORTABLE_ID_FIELDS}
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(fingerprint: dict) -> str:
    """One line: numerics mode (portable) or CPU (native), capability, threads, torch and diffusers
    versions, CUDA device (if any). Portable mode leaves the CPU model out: it does not change the
    numbers, and tables that carry this line must be the same on every machine."""
    portable = fingerprint.get("numerics_mode") == "portable"
    parts = [
        "portable numerics" if portable else fingerprint.get("cpu_model", "?"),
        str(fingerprint.get("cpu_capability", "?")),
        f"{fingerprint.get('torch_threads', '?')} threads",
        f"torch {fingerprint.get('torch_version', '?')}",
        f"diffusers {fingerprint.get('diffusers_version', '?')}",
    ]
    if fingerprint.get("deterministic_algorithms"):
        parts.append("deterministic algorithms")
    if fingerprint.get("cuda_device"):
        parts.append(f"{fingerprint['cuda_device']} (CUDA {fingerprint.get('cuda_version')})")
    return " | ".join(parts)


def log_platform(logger: logging.Logger, fingerprint: dict | None = None) -> dict:
    """Log the fingerprint (id, one-line summary, full JSON) and return it."""
    fingerprint = fingerprint or platform_fingerprint()
    logger.info("platform %s: %s", platform_id(fingerprint), describe(fingerprint))
    logger.info("platform fingerprint: %s", json.dumps(fingerprint, sort_keys=True))
    return fingerprint


def with_platform(
    tables: dict, logger: logging.Logger | None = None, fingerprint: dict | None = None
) -> dict:
    """The tables (pandas DataFrames by name) with the columns ``platform_id`` and ``platform``
    (:func:`describe`) of this machine; the fingerprint is logged to `logger` in full.

    The tables rule writes every table through it, so that summaries made on several machines can
    be told apart (``python -m diffrep.seeds`` groups by ``platform_id``).
    """
    fingerprint = fingerprint or platform_fingerprint()
    if logger:
        log_platform(logger, fingerprint)
    columns = {"platform_id": platform_id(fingerprint), "platform": describe(fingerprint)}
    return {name: df.assign(**columns) for name, df in tables.items()}


BUILD_REPORT_FILE = ".build_report.json"


def build_report(metrics: dict, fingerprint: dict, **extra) -> dict:
    """The content of a built model's ``.build_report.json``: its build-time measurements, `extra`
    entries (e.g. durations) and the platform fingerprint with its id.

    The file is hidden because model manifests list only non-hidden files
    (:func:`diffrep.checksums.folder_files`): measurements vary between machines and thread
    counts, and a file that the manifest hashes must not (docs/reproducibility.md).
    """
    return {"metrics": metrics, **extra, "platform_id": platform_id(fingerprint), "platform": fingerprint}
