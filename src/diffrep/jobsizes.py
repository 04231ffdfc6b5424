"""What a generate job asks a cluster for, by the model it generates from (profiles/slurm).

A generate job's GPU memory, host memory and wall time depend on the model far more than on the
rule: SD 2.1 at 256 px fits any GPU in minutes, SD 3.5 with its T5 encoder needs a large GPU and
bf16. :data:`FAMILY_SIZES` holds, per family (and for distilled models), the GPU memory of the
pipeline in its CUDA dtype at the family's native resolution and a batch of 8, the host memory to
load it, and the seconds per image and denoising step at 1024 x 1024 px (without classifier-free
guidance, which doubles it). A models entry's ``resources`` overrides any of them (SD 3.5 Large
Turbo's 8 B transformer, for instance).

These are planning estimates from the models' parameter counts and published A100 timings, not
measurements of this workflow: the job's runtime is a bound with a margin
(:data:`RUNTIME_MARGIN`), and a job that hits it is retried by the profile.
"""

from __future__ import annotations

import math

from diffrep.families import FAMILIES

# family -> (gpu_mem_mb, mem_mb, seconds per image and step at 1024 px without CFG)
FAMILY_SIZES = {
    "sd": {"gpu_mem_mb": 8000, "mem_mb": 16000, "step_seconds": 0.05},  # SD 1.x / 2.x: 0.9 B UNet
    "sdxl": {"gpu_mem_mb": 16000, "mem_mb": 32000, "step_seconds": 0.08},  # 2.6 B UNet + 2 CLIPs
    "sd3": {"gpu_mem_mb": 24000, "mem_mb": 48000, "step_seconds": 0.1},  # 2.5 B MMDiT + T5-XXL
}
LOAD_MINUTES = 10  # start, load the weights, write the images
RUNTIME_MARGIN = 3.0  # planning estimate x this
MIN_RUNTIME = 30  # minutes
REFERENCE_PX = 1024


def model_sizes(spec: dict) -> dict:
    """GPU memory, host memory and step time of a models entry: its family's, then its ``resources``."""
    family = spec.get("family", "sd")
    return {**FAMILY_SIZES[family], **(spec.get("resources") or {})}


def cuda_dtype(spec: dict) -> str:
    """The dtype a model runs in on a GPU when the job says auto: fp16, or bf16 (SD 3.x)."""
    return FAMILIES[spec.get("family", "sd")].cuda_dtype


def generate_resources(spec: dict, preset: dict, n_images: int, resolution: int) -> dict:
    """``{gpu_mem_mb, mem_mb, runtime, dtype}`` of a generate job of `n_images` images at `resolution`
    px with `preset` (steps, guidance_scale) from the model of models entry `spec`.

    runtime (minutes) = LOAD_MINUTES + RUNTIME_MARGIN x n_images x steps x step_seconds x
    (resolution / 1024)² x (2 with classifier-free guidance) / 60, at least MIN_RUNTIME.
    """
    sizes = model_sizes(spec)
    cfg = 2 if float(preset.get("guidance_scale", 7.5)) > 1.0 else 1
    seconds = n_images * int(preset.get("steps", 50)) * sizes["step_seconds"] * cfg
    seconds *= (resolution / REFERENCE_PX) ** 2
    runtime = LOAD_MINUTES + math.ceil(RUNTIME_MARGIN * seconds / 60)
    return {
        "gpu_mem_mb": int(sizes["gpu_mem_mb"]),
        "mem_mb": int(sizes["mem_mb"]),
        "runtime": max(MIN_RUNTIME, runtime),
        "dtype": cuda_dtype(spec),
    }
