"""Precision per device: fp16 asked for on a CPU runs as bf16 (with a warning), and the paper's fp16
path on the full-size architectures (at width 0.1) keeps the dtypes a GPU run has, checked as far
as a CPU can run it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffrep.builders import model_builder
from diffrep.devices import device_precision
from diffrep.generation import resolve_dtype
from diffrep.tinysd import _seeded

SMALL = 0.1  # width scale of the architectures (tests/test_rehearsal.py)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, seeded


def test_fp16_on_a_cpu_runs_as_bf16_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="diffrep.devices"):
        assert device_precision("fp16", "cpu", "generation.dtype") == "bf16"
    assert "generation.dtype: fp16 requested on the CPU, running bf16 instead" in caplog.text
    assert device_precision("fp16", "cuda") == device_precision("fp16", "cuda:1") == "fp16"
    assert [device_precision(p, "cpu") for p in ("no", "fp32", "bf16", "auto")] == [
        "no",
        "fp32",
        "bf16",
        "auto",
    ]
    assert resolve_dtype("fp16", "cpu") == torch.bfloat16 and resolve_dtype("fp16", "cuda") == torch.float16
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="generation dtype 'fp8'; allowed: auto, fp32, fp16, bf16"):
        resolve_dtype("fp8", "cpu")


def test_the_trainer_on_a_cpu_autocasts_to_bf16(monkeypatch):
    from accelerate.state import AcceleratorState

    from diffrep.training import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    try:
        accelerator, mixed = make_accelerator("fp16")
        assert mixed == "bf16" and accelerator.mixed_precision == "bf16"
        assert accelerator.device.type == "cpu"
        layer = torch.nn.Linear(8, 8)
        with accelerator.autocast():
            out = layer(torch.ones(2, 8))
        assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32  # fp32 master weights
    finally:
        AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    with _seeded(0, threads=1):
        return {
            v: model_builder("rehearsal_sd")(root / v, seed=0, variant=v, width_scale=SMALL)
            for v in ("sd21", "sdxl")
        }


def _dtypes(module) -> set:
    return {p.dtype for p in module.parameters()} | {
        b.dtype for b in module.buffers() if b.is_floating_point()
    }


@pytest.mark.parametrize("variant", ["sd21", "sdxl"])
def test_fp16_generation_path_keeps_every_component_in_fp16(built, variant):
    """What generate() does on a GPU (dtype auto = fp16), run on the CPU: every weighted component,
    the prompt embeddings (gaussnoise included) and the denoiser's output are fp16; the images are
    finite (the CPU has fp16 kernels for every op of this path; diffrep itself never runs fp16 on a
    CPU: resolve_dtype makes it bf16)."""
    from diffrep import families, pipelines

    out = built[variant]
    family = families.family_of(out)
    pipe = pipelines.load_pipeline(out, "cpu", torch.float16, family)
    weighted = {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    expected = {"unet", "vae", "text_encoder"} | ({"text_encoder_2"} if variant == "sdxl" else set())
    assert set(weighted) == expected
    assert {k: _dtypes(m) for k, m in weighted.items()} == {k: {torch.float16} for k in expected}
    embeds = pipelines.encode_prompts(pipe, family, ["a red circle"], "cpu", True, None)
    gens = [torch.Generator().manual_seed(0)]
    noisy = pipelines.noisy_embeddings(embeds, 0.1, gens)
    assert {k: v.dtype for k, v in noisy.items()} == {k: torch.float16 for k in embeds}
    seen = []
    handle = pipe.unet.register_forward_hook(lambda _m, _i, o: seen.append(o[0].dtype))
    try:
        images = pipe(
            **noisy, num_inference_steps=2, height=64, width=64, generator=gens, output_type="np"
        ).images
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float16}
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_fp16_training_path_keeps_fp32_master_weights_and_fp16_frozen_models(built):
    """What prepare_models + diffusion_loss do on a GPU with mixed_precision fp16, run on the CPU under
    fp16 autocast: the frozen VAE and text encoder are fp16, the UNet keeps fp32 weights and gets fp32
    gradients, its forward runs in fp16 (with gradient checkpointing), the loss is fp32."""
    from diffrep.training import diffusion_loss, load_components, prepare_models

    comps = load_components(str(built["sd21"]))
    accelerator = SimpleNamespace(device=torch.device("cpu"))
    weight_dtype = prepare_models(comps, accelerator, "fp16", gradient_checkpointing=True)
    assert weight_dtype == torch.float16
    assert _dtypes(comps["vae"]) == _dtypes(comps["text_encoder"]) == {torch.float16}
    assert _dtypes(comps["unet"]) == {torch.float32} and comps["unet"].is_gradient_checkpointing
    ids = comps["tokenizer"](["a red circle"] * 2, padding="max_length", return_tensors="pt").input_ids
    batch = {"draws": [0, 1], "pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1, "input_ids": ids}
    seen = []
    handle = comps["unet"].register_forward_hook(lambda _m, _i, o: seen.append(o[0].dtype))
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = diffusion_loss(
                comps["unet"],
                comps["vae"],
                comps["text_encoder"],
                comps["noise_scheduler"],
                batch,
                0,
                0.1,
                weight_dtype,
            )
        loss.backward()
    finally:
        handle.remove()
    assert seen == [torch.float16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    params = list(comps["unet"].parameters())
    grads = [p.grad for p in params if p.grad is not None]
    assert len(grads) == len(params) and {g.dtype for g in grads} == {torch.float32}
