"""Which CPU kernels a job computes with: the numerics mode of a study (config key ``numerics``).

torch, MKL, oneDNN, OpenBLAS, numpy and faiss each pick float kernels by the CPU they run on
(AVX2, AVX512, ...), and kernels of different instruction sets add in different orders: the same
commit trains different weights on an AMD and an Intel machine. In ``portable`` mode every job
computes with the AVX2 kernels of every library and a fixed thread count, so results depend on the
config and the code only, on any x86-64 CPU with AVX2. ``native`` lets each library choose (the
fastest, and the only choice on GPUs and on CPUs without AVX2).

The libraries read their choice when they are first loaded, so the settings must be in a job's
environment before it starts: :func:`apply` puts :func:`environment` into ``os.environ`` of the
Snakemake process (rules/common.smk does it while the workflow is parsed, every job inherits it,
on a cluster too, where each job parses the workflow again). :func:`enter` then runs at the start
of every job: it checks that the kernels loaded are the ones asked for (:func:`check`), fails with
a message naming the setting when not, and pins the thread count.

This module imports no float library at module level: it must be importable before them.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("diffrep.numerics")

MODES = ("portable", "native")
DEFAULTS = {"mode": "portable", "threads": 1, "deterministic": False}

# The AVX2 choice of every library that dispatches by CPU, as the variable each reads at load time.
PORTABLE_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's ATen kernels
    "MKL_CBWR": "AVX2",  # MKL's Conditional Numerical Reproducibility code path (torch's BLAS)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (torch's convolutions)
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN's older name for the same setting
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS builds with DYNAMIC_ARCH (numpy, scipy, faiss)
    "NPY_ENABLE_CPU_FEATURES": "X86_V3",  # numpy's dispatched SIMD loops: x86-64-v3 (AVX2, FMA3)
    "FAISS_SIMD_LEVEL": "AVX2",  # faiss's dynamically dispatched distance kernels
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# cuBLAS needs a fixed workspace for deterministic results (CUDA's documentation of
# torch.use_deterministic_algorithms); read when CUDA initialises.
CUBLAS_WORKSPACE = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
REQUIRED_CPU_FLAGS = ("avx2", "fma")
MKL_CNR_OFF = 1  # what MKL reports for "no CNR code path set" (mkl_cbwr_get(MKL_CBWR_BRANCH))


class NumericsError(RuntimeError):
    """A job cannot compute with the kernels its numerics mode asks for."""


def settings(config_section: dict | None) -> dict:
    """The ``numerics`` section with its defaults filled in; an unknown mode is an error."""
    out = {**DEFAULTS, **(config_section or {})}
    if out["mode"] not in MODES:
        raise NumericsError(f"numerics.mode: {out['mode']!r} is not a mode; use one of {', '.join(MODES)}")
    if int(out["threads"]) < 1:
        raise NumericsError(f"numerics.threads: {out['threads']!r} must be at least 1")
    return out


def environment(numerics: dict) -> dict[str, str]:
    """The environment variables a job of this mode starts with (empty for native, but for the
    cuBLAS workspace when ``deterministic`` is set)."""
    numerics = settings(numerics)
    env = {}
    if numerics["mode"] == "portable":
        env.update(PORTABLE_ENVIRONMENT)
    if numerics["deterministic"]:
        env.update(CUBLAS_WORKSPACE)
    return env


def process_environment(numerics: dict, base: dict | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the mode's variables: for a process started
    in that mode whatever mode this one runs in (native drops the portable pins)."""
    base = dict(os.environ if base is None else base)
    env = {k: v for k, v in base.items() if k not in PORTABLE_ENVIRONMENT}
    return {**env, **environment(numerics)}


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def require_cpu(numerics: dict, flags: set[str] | None = None) -> None:
    """Fail in portable mode on a CPU without AVX2 and FMA, naming ``numerics: native`` as the way out."""
    if settings(numerics)["mode"] != "portable":
        return
    flags = cpu_flags() if flags is None else flags
    if not flags:  # not Linux: nothing to read; the kernel check below still holds
        return
    missing = [f for f in REQUIRED_CPU_FLAGS if f not in flags]
    if missing:
        raise NumericsError(
            f"numerics.mode portable computes with AVX2 kernels, but this CPU lacks {', '.join(missing)}; "
            "set `numerics: {mode: native}` in the study's config to run here (results then depend on this CPU)"
        )


def apply(numerics: dict) -> dict[str, str]:
    """Put the mode's :func:`environment` into ``os.environ`` (for every job started from here) and
    return it; in portable mode a variable already set to another value is overridden, with a warning."""
    require_cpu(numerics)
    env = environment(numerics)
    for name, value in env.items():
        old = os.environ.get(name)
        if old is not None and old != value:
            log.warning("numerics: %s=%s in the environment replaced by %s", name, old, value)
        os.environ[name] = value
    return env


def _mkl_cnr_branch() -> int | None:
    """MKL's CNR branch as torch's MKL reports it (None where torch has no MKL or does not export it)."""
    import ctypes

    import torch

    lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        get = ctypes.CDLL(lib).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(1))


def loaded_kernels() -> dict:
    """What the float libraries of this process dispatch to now (torch, numpy, OpenBLAS, MKL, and
    faiss if it is loaded)."""
    import numpy
    import threadpoolctl
    import torch

    simd = getattr(numpy.__config__, "CONFIG", {}).get("SIMD Extensions", {})
    out = {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy_simd": sorted(simd.get("found", [])),
        "openblas_coretypes": sorted(
            {
                i.get("architecture")
                for i in threadpoolctl.threadpool_info()
                if i.get("internal_api") == "openblas"
            }
            - {None}
        ),
        "mkl_cnr_branch": _mkl_cnr_branch(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }
    if "faiss" in sys.modules:
        out["faiss_simd_level"] = sys.modules["faiss"].SIMDConfig.get_level_name()
    return out


def _mismatches(kernels: dict) -> list[str]:
    want = PORTABLE_ENVIRONMENT
    bad = []
    if str(kernels["torch_cpu_capability"]).lower() != want["ATEN_CPU_CAPABILITY"]:
        bad.append(
            f"torch computes with {kernels['torch_cpu_capability']} (ATEN_CPU_CAPABILITY={want['ATEN_CPU_CAPABILITY']})"
        )
    if kernels["numpy_simd"] not in ([], [want["NPY_ENABLE_CPU_FEATURES"]]):
        bad.append(
            f"numpy dispatches {kernels['numpy_simd']} (NPY_ENABLE_CPU_FEATURES={want['NPY_ENABLE_CPU_FEATURES']})"
        )
    for core in kernels["openblas_coretypes"]:
        if core.lower() != want["OPENBLAS_CORETYPE"].lower():
            bad.append(f"OpenBLAS runs {core} kernels (OPENBLAS_CORETYPE={want['OPENBLAS_CORETYPE']})")
    if kernels["mkl_cnr_branch"] == MKL_CNR_OFF:
        bad.append(f"MKL has no CNR code path set (MKL_CBWR={want['MKL_CBWR']})")
    if kernels["onednn_max_cpu_isa"] != want["ONEDNN_MAX_CPU_ISA"]:
        bad.append(f"oneDNN's ISA is not capped (ONEDNN_MAX_CPU_ISA={want['ONEDNN_MAX_CPU_ISA']})")
    level = kernels.get("faiss_simd_level")
    if level is not None and level != want["FAISS_SIMD_LEVEL"]:
        bad.append(f"faiss runs {level} kernels (FAISS_SIMD_LEVEL={want['FAISS_SIMD_LEVEL']})")
    return bad


def check(numerics: dict, kernels: dict | None = None) -> dict:
    """Fail unless this process computes with the kernels its mode asks for; return what it runs.

    Portable: every library must run its AVX2 kernels (:data:`PORTABLE_ENVIRONMENT`); the message
    names each setting that did not take effect (a variable set after the library was loaded, or
    overridden by the job's environment). Native: nothing is required, what runs is returned.
    """
    numerics = settings(numerics)
    require_cpu(numerics)
    kernels = loaded_kernels() if kernels is None else kernels
    if numerics["mode"] == "portable":
        bad = _mismatches(kernels)
        if bad:
            raise NumericsError(
                "numerics.mode portable, but this job's kernels differ: "
                + "; ".join(bad)
                + ". These variables must be in the environment before torch, numpy or faiss load: run "
                "through the workflow (rules/common.smk sets them), or set `numerics: {mode: native}`"
            )
    return kernels


def pin_threads(threads: int) -> None:
    """Every float library of this process on `threads` threads: torch (and its MKL), the OpenMP
    and BLAS pools loaded now (threadpoolctl), and the variables libraries loaded later read."""
    import threadpoolctl
    import torch

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)


def apply_deterministic(enabled: bool) -> None:
    """torch's deterministic algorithms, cuDNN deterministic and without autotuning (GPU runs)."""
    if not enabled:
        return
    import torch

    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def job_threads(numerics: dict, job_threads_given: int) -> int:
    """The thread count a job computes with: the mode's fixed count when portable (thread counts
    change the order of parallel sums), the job's own otherwise."""
    numerics = settings(numerics)
    return int(numerics["threads"]) if numerics["mode"] == "portable" else max(1, int(job_threads_given))


def enter(numerics: dict, job_threads_given: int) -> int:
    """Start a job under its numerics mode: check the kernels (:func:`check`), pin the threads,
    apply the deterministic settings; log what runs; return the thread count."""
    numerics = settings(numerics)
    kernels = check(numerics)
    threads = job_threads(numerics, job_threads_given)
    pin_threads(threads)
    apply_deterministic(numerics["deterministic"])
    log.info("numerics %s, %d thread(s): %s", numerics["mode"], threads, kernels)
    return threads
