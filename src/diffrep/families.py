"""Model families: what differs between SD 1.x/2.x, SDXL and SD 3.x pipelines, in one table.

A family is the pipeline format of a diffusers model folder (``model_index.json``'s
``_class_name``): ``sd`` (StableDiffusionPipeline: SD 1.4, 2.1, 2.1-base, SD-Turbo), ``sdxl``
(StableDiffusionXLPipeline: SDXL, SDXL-Turbo; two CLIP text encoders, pooled embedding) and
``sd3`` (StableDiffusion3Pipeline: SD 3.5 Medium / Large Turbo; MMDiT transformer, two CLIP
encoders and T5, flow matching). Distilled ("Turbo") models are a flag on top of a family: they
sample in 1–4 steps without classifier-free guidance and ignore negative prompts.

The config declares each model's family (``models.<name>.family``, ``distilled``) so that the
checks of :mod:`diffrep.config` run before any weight exists; at generation time the family is
read from the model folder. This module imports nothing of diffrep's config, so config can use
its tables.

Loading a family's pipeline and encoding its prompts live in :mod:`diffrep.pipelines`; this module
is the table only (no torch, no diffusers), so the config checks and the rules can import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Sampler names (config) -> diffusers scheduler class and extra config. The UNet families accept
# every discrete-time (Karras) sampler; SD 3.x's flow matching needs a flow-matching sampler.
UNET_SCHEDULERS = (
    "default",
    "ddpm",
    "ddim",
    "pndm",
    "dpmsolver++",
    "euler",
    "euler_ancestral",
    "lms",
    "heun",
    "unipc",
)
FLOW_SCHEDULERS = {
    "flow_match_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_match_heun": ("FlowMatchHeunDiscreteScheduler", {}),
}


@dataclass(frozen=True)
class Family:
    """One pipeline format: its diffusers class, its denoiser, the samplers and defaults it takes."""

    pipeline: str  # diffusers pipeline class (model_index.json _class_name)
    denoiser: str  # the component that is trained / compared: unet or transformer
    schedulers: tuple[str, ...]  # sampler names a preset may ask for
    defaults: dict  # preset defaults of a non-distilled model: steps, guidance_scale, resolution
    distilled_defaults: dict  # the same for a distilled (Turbo) model
    cuda_dtype: str = "fp16"  # dtype on GPU when the job says auto
    load_kwargs: tuple[tuple[str, object], ...] = ()  # extra from_pretrained arguments


FAMILIES = {
    "sd": Family(
        "StableDiffusionPipeline",
        "unet",
        UNET_SCHEDULERS,
        defaults={"steps": 50, "guidance_scale": 7.5, "resolution": None},  # None: the study's resolution
        distilled_defaults={"steps": 1, "guidance_scale": 0.0, "resolution": 512},  # SD-Turbo
        load_kwargs=(("safety_checker", None), ("requires_safety_checker", False)),
    ),
    "sdxl": Family(
        "StableDiffusionXLPipeline",
        "unet",
        UNET_SCHEDULERS,
        defaults={"steps": 50, "guidance_scale": 5.0, "resolution": 1024},
        distilled_defaults={"steps": 1, "guidance_scale": 0.0, "resolution": 512},  # SDXL-Turbo
        load_kwargs=(("add_watermarker", False),),  # the invisible watermark is not part of the model
    ),
    "sd3": Family(
        "StableDiffusion3Pipeline",
        "transformer",
        ("default", *FLOW_SCHEDULERS),
        defaults={"steps": 28, "guidance_scale": 7.0, "resolution": 1024},
        distilled_defaults={"steps": 4, "guidance_scale": 0.0, "resolution": 1024},  # SD 3.5 Large Turbo
        cuda_dtype="bf16",  # SD 3.5 overflows in fp16
    ),
}
FINETUNABLE = ("sd",)  # families the trainer (diffrep.training: UNet2DConditionModel + one CLIP) supports
PIPELINE_FAMILIES = {f.pipeline: name for name, f in FAMILIES.items()}


def family_of(model_dir) -> str:
    """The family of a diffusers model folder, from ``model_index.json``'s ``_class_name``."""
    index_file = Path(model_dir) / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file}: missing; not a diffusers pipeline folder")
    cls = json.loads(index_file.read_text()).get("_class_name")
    if cls not in PIPELINE_FAMILIES:
        raise ValueError(
            f"{index_file}: _class_name {cls!r} is not a supported text-to-image pipeline; "
            f"supported: {', '.join(sorted(PIPELINE_FAMILIES))}"
        )
    return PIPELINE_FAMILIES[cls]


def model_defaults(spec: dict) -> dict:
    """Preset defaults of a model entry: its family's (distilled or not), then its own ``defaults``."""
    fam = FAMILIES[spec.get("family", "sd")]
    base = fam.distilled_defaults if spec.get("distilled", False) else fam.defaults
    return {**base, **(spec.get("defaults") or {})}


def preset_problems(model: str, spec: dict, preset: dict) -> list[str]:
    """Why `preset` cannot run on model `model` (config entry `spec`); empty when it can."""
    family = spec.get("family", "sd")
    problems = []
    sched = preset.get("scheduler", "default")
    if sched not in FAMILIES[family].schedulers:
        problems.append(
            f"model {model!r} (family {family}) cannot use scheduler {sched!r}; allowed: "
            f"{', '.join(FAMILIES[family].schedulers)}"
        )
    if preset.get("negative_prompt") and spec.get("distilled", False):
        problems.append(
            f"model {model!r} is distilled (Turbo): it samples without classifier-free guidance and "
            f'ignores negative prompts; use negative_prompt: "" with it'
        )
    return problems


def scheduler_class(name: str, unet_schedulers: dict) -> tuple[str, dict]:
    """(diffusers class name, extra config) of a sampler name (`unet_schedulers` maps the UNet ones)."""
    table = {**unet_schedulers, **FLOW_SCHEDULERS}
    if name not in table:
        raise ValueError(f"scheduler {name!r}; allowed: default, {', '.join(table)}")
    return table[name]
