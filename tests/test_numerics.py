"""The numerics mode (diffrep.numerics): portable kernels set before the libraries load, checked at
each job's start, and a fingerprint whose id names the numerics, not the machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffrep import numerics, provenance

PORTABLE = {"mode": "portable", "threads": 1}


def _run(code: str, env_changes: dict) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose environment is this one's with `env_changes` (None: unset)."""
    env = {**os.environ}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_settings_fill_defaults_and_name_a_bad_mode():
    assert numerics.settings(None) == {"mode": "portable", "threads": 1, "deterministic": False}
    with pytest.raises(
        numerics.NumericsError, match=r"numerics.mode: 'fast' is not a mode; use one of portable, native"
    ):
        numerics.settings({"mode": "fast"})
    with pytest.raises(numerics.NumericsError, match=r"numerics.threads: 0 must be at least 1"):
        numerics.settings({"threads": 0})


def test_portable_environment_pins_every_library_and_native_pins_none():
    env = numerics.environment(PORTABLE)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2"
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["NPY_ENABLE_CPU_FEATURES"] == "X86_V3" and env["FAISS_SIMD_LEVEL"] == "AVX2"
    assert numerics.environment({"mode": "native"}) == {}
    assert numerics.environment({"mode": "native", "deterministic": True}) == {
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8"
    }


def test_a_cpu_without_avx2_is_refused_in_portable_mode_only():
    with pytest.raises(numerics.NumericsError, match=r"lacks avx2, fma.*numerics: \{mode: native\}"):
        numerics.require_cpu(PORTABLE, flags={"sse4_2", "avx"})
    numerics.require_cpu({"mode": "native"}, flags={"sse4_2"})  # native runs anywhere
    numerics.require_cpu(PORTABLE, flags={"avx2", "fma", "avx512f"})


def test_a_job_started_with_the_portable_environment_runs_avx2_kernels_everywhere():
    code = (
        "import json, faiss; from diffrep import numerics; "
        "print(json.dumps(numerics.check({'mode': 'portable'})))"
    )
    proc = _run(code, numerics.environment(PORTABLE))
    assert proc.returncode == 0, proc.stderr
    kernels = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kernels["torch_cpu_capability"] == "AVX2"
    assert kernels["numpy_simd"] in ([], ["X86_V3"])
    assert kernels["openblas_coretypes"] == ["Haswell"]
    assert kernels["faiss_simd_level"] == "AVX2"
    assert kernels["mkl_cnr_branch"] not in (None, numerics.MKL_CNR_OFF)


def test_a_job_whose_kernels_differ_from_the_mode_stops_naming_the_setting():
    env = {**numerics.environment(PORTABLE), "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": None}
    proc = _run("from diffrep import numerics; numerics.enter({'mode': 'portable'}, 1)", env)
    assert proc.returncode != 0
    assert "torch computes with DEFAULT (ATEN_CPU_CAPABILITY=avx2)" in proc.stderr
    assert "MKL has no CNR code path set (MKL_CBWR=AVX2)" in proc.stderr


def test_enter_pins_the_threads_of_portable_mode_and_keeps_the_jobs_in_native():
    old = torch.get_num_threads()
    try:
        assert numerics.job_threads({"mode": "portable", "threads": 1}, 4) == 1
        assert numerics.job_threads({"mode": "native"}, 4) == 4
        numerics.pin_threads(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(old)


def test_deterministic_mode_turns_on_torchs_deterministic_algorithms():
    code = (
        "import torch; from diffrep import numerics; numerics.apply_deterministic(True); "
        "print(torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, "
        "torch.backends.cudnn.benchmark)"
    )
    proc = _run(code, {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False"]


def test_portable_platform_id_names_the_numerics_not_the_machine():
    fp = provenance.platform_fingerprint(PORTABLE)
    assert fp["numerics_mode"] == "portable" and fp["numerics_threads"] == 1
    other_box = {**fp, "cpu_model": "Another CPU", "torch_interop_threads": 64, "omp_num_threads": "8"}
    assert provenance.platform_id(other_box) == provenance.platform_id(fp)
    assert provenance.platform_id({**fp, "cpu_capability": "AVX512"}) != provenance.platform_id(fp)
    assert provenance.platform_id({**fp, "numerics_threads": 2}) != provenance.platform_id(fp)
    assert provenance.describe(fp).startswith("portable numerics | ")
    assert fp["cpu_model"] not in provenance.describe(fp)
    native = {**fp, "numerics_mode": "native"}
    assert provenance.platform_id({**native, "cpu_model": "Another CPU"}) != provenance.platform_id(native)
    assert provenance.describe(native).startswith(fp["cpu_model"])


def test_gpu_check_runs_the_micro_study_in_paper_precision_or_says_why_not():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_check

    config = gpu_check.gpu_config(deterministic=True)
    assert config["numerics"] == {"mode": "native", "deterministic": True}
    assert config["training"]["mixed_precision"] == "fp16" and config["generation"]["dtype"] == "auto"
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: run `make gpu-check` itself")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert (
        proc.stdout.strip()
        == "gpu-check: no CUDA device visible (torch.cuda.is_available() is False): skipped"
    )


def test_the_schema_refuses_an_unknown_mode_naming_the_key_and_the_modes():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from conftest import REPO, load_yaml

    cfg = load_yaml(REPO / "tests/micro/config.yaml")
    cfg["numerics"] = {"mode": "fast"}
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(REPO / "schemas/config.schema.yaml"))
    cause = err.value.__context__
    assert list(cause.absolute_path) == ["numerics", "mode"]
    assert cause.message == "'fast' is not one of ['portable', 'native']"
    paper = load_yaml(REPO / "config.yaml")
    validate(paper, str(REPO / "schemas/config.schema.yaml"))
    assert paper["numerics"]["mode"] == "native" and cfg["numerics"]["threads"] == 1  # default filled


def test_a_native_process_started_from_a_portable_one_runs_this_cpus_kernels():
    portable = {**os.environ, **numerics.environment(PORTABLE), "PATH": "/bin"}
    native = numerics.process_environment({"mode": "native"}, base=portable)
    assert not set(numerics.PORTABLE_ENVIRONMENT) & set(native) and native["PATH"] == "/bin"
    again = numerics.process_environment(PORTABLE, base=native)
    assert {k: again[k] for k in numerics.PORTABLE_ENVIRONMENT} == numerics.PORTABLE_ENVIRONMENT
