"""Memorisation mitigations after DCR as generation presets: each against the authors' definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffrep import memmitigation as mm
from diffrep.generation import generate_batch
from diffrep.tinysd import build_tiny_pipeline

CAPTIONS = ["a red circle on a blue background", "a small green square", "vokarim tesul"]
BASE = {"steps": 4, "guidance_scale": 3.0, "scheduler": "ddim"}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    folder = build_tiny_pipeline(
        tmp_path_factory.mktemp("tiny") / "m", CAPTIONS * 3, seed=0, prediction_type="v_prediction"
    )
    p = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    p.set_progress_bar_config(disable=True)
    return p


def images(pipe, preset, prompts=("a red circle", "vokarim tesul"), seeds=(3, 4)):
    out = generate_batch(pipe, list(prompts), list(seeds), preset, 32, "cpu")
    return np.stack([np.asarray(im, dtype=np.float64) for im in out])


def test_guidance_schedule_is_early_guidance_then_the_preset_scale():
    preset = {**BASE, "mitigation": "guidance_transition", "transition_step": 2, "early_guidance": -1.5}
    assert [mm.scheduled_guidance(i, preset) for i in range(4)] == [-1.5, -1.5, 3.0, 3.0]
    hook = mm.GuidanceSchedule(preset)
    u, c = torch.full((1, 4, 2, 2), 1.0), torch.full((1, 4, 2, 2), 2.0)
    (out,) = hook(None, (), {}, (torch.cat([u, c]),))
    # the pipeline then computes u + 3 (c' - u) = u - 1.5 (c - u): c' = u - 0.5 (c - u) = 0.5
    assert torch.allclose(out[1], torch.full((4, 2, 2), 0.5)) and torch.equal(out[0], u[0])
    hook.on_step_end(None, 1, None, {})  # after step 1 the transition is reached: output untouched
    assert hook(None, (), {}, (torch.cat([u, c]),)) is None


def test_guidance_transition_changes_images_only_before_the_transition(pipe):
    plain = images(pipe, BASE)
    same = images(pipe, {**BASE, "mitigation": "guidance_transition", "transition_step": 0})
    assert np.array_equal(plain, same)
    delayed = images(pipe, {**BASE, "mitigation": "guidance_transition", "transition_step": 2})
    assert np.abs(delayed - plain).mean() > 0.5


def test_attention_rescale_with_scale_one_and_no_masking_is_plain_attention(pipe):
    plain = images(pipe, BASE)
    proc = mm.RescaledCrossAttention([pipe.tokenizer.model_max_length] * 2, 1.0)
    original = dict(pipe.unet.attn_processors)
    n_processors = len(original)  # set_attn_processor empties the dict it is given
    pipe.unet.set_attn_processor({k: proc if "attn2" in k else v for k, v in original.items()})
    try:
        same = images(pipe, BASE)
    finally:
        pipe.unet.set_attn_processor(original)
    assert np.abs(same - plain).max() <= 1.0  # float rounding of another attention kernel
    rescaled = images(pipe, {**BASE, "mitigation": "attention_rescale", "attention_scale": 1.25})
    assert np.abs(rescaled - plain).mean() > 0.5
    assert mm.prompt_lengths(pipe.tokenizer, ["vokarim tesul", ""]) == [
        len(pipe.tokenizer("vokarim tesul").input_ids),
        2,
    ]
    restored = pipe.unet.attn_processors
    assert len(restored) == n_processors and not any(
        isinstance(p, mm.RescaledCrossAttention) for p in restored.values()
    )


def test_prompt_optimization_lowers_the_first_step_metric(pipe):
    from diffrep import pipelines

    preset = {**BASE, "mitigation": "prompt_optimization", "optim_steps": 10, "optim_lr": 0.05}
    embeds = pipelines.encode_prompts(pipe, "sd", ["vokarim tesul", "a red circle"], "cpu", True, None)
    before = mm.first_step_metric(pipe, embeds, [3, 4], preset, 32)
    optimised = mm.optimize_prompt_embeds(pipe, "sd", embeds, [3, 4], preset, 32)
    after = mm.first_step_metric(pipe, optimised, [3, 4], preset, 32)
    assert torch.all(after < 0.9 * before)
    # BOS gets no gradient (the authors zero it); AdamW's decoupled weight decay (0.01) still shrinks it
    decay = (1 - 0.05 * 0.01) ** 10
    assert torch.allclose(optimised["prompt_embeds"][:, 0], embeds["prompt_embeds"][:, 0] * decay, atol=1e-6)
    # a target above the metric stops before the first step
    kept = mm.optimize_prompt_embeds(pipe, "sd", embeds, [3, 4], {**preset, "optim_target": 1e9}, 32)
    assert torch.equal(kept["prompt_embeds"], embeds["prompt_embeds"])
    with pytest.raises(ValueError, match="family 'sdxl' is not supported"):
        mm.optimize_prompt_embeds(pipe, "sdxl", embeds, [3, 4], preset, 32)
    assert images(pipe, preset).shape == (2, 32, 32, 3)


def test_threshold_mask_keeps_samples_at_or_below_the_threshold():
    from diffrep.memorization import threshold_mask

    u = torch.zeros(3, 4, 2, 2)
    c = torch.zeros(3, 4, 2, 2)
    c[0] += 0.5  # norm 0.5 * 4 = 2
    c[1] += 1.0  # norm 4
    keep = threshold_mask(c, u, torch.zeros_like(u), torch.tensor(0.5), "epsilon", 2.0)
    assert keep.tolist() == [1.0, 0.0, 1.0]


def test_memthreshold_loss_drops_samples_above_the_threshold(tmp_path):
    from diffrep.training import _empty_ids, diffusion_loss, load_components

    folder = build_tiny_pipeline(tmp_path / "m", CAPTIONS * 3, seed=0, prediction_type="v_prediction")
    comp = load_components(str(folder))
    tok = comp["tokenizer"]
    batch = {
        "pixel_values": torch.rand(2, 3, 32, 32) * 2 - 1,
        "input_ids": tok(
            CAPTIONS[:2], padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
        ).input_ids,
        "draws": [0, 1],
    }
    args = (comp["unet"], comp["vae"], comp["text_encoder"], comp["noise_scheduler"], batch, 0)
    plain = diffusion_loss(*args)
    empty = _empty_ids(tok)
    assert torch.allclose(diffusion_loss(*args, mem_threshold=1e9, empty_ids=empty), plain, rtol=1e-5)
    assert diffusion_loss(*args, mem_threshold=1e-9, empty_ids=empty).item() == 0.0


def test_training_cli_requires_the_threshold():
    from diffrep.training import parse_args

    base = [
        f"--{k}=x"
        for k in (
            "pretrained_model_name_or_path",
            "train_data_dir",
            "metadata",
            "captions",
            "plan",
            "output_dir",
            "checkpoints_dir",
        )
    ]
    base += ["--duplication=nodup", "--conditioning=instancelevel_blip", "--train_mitigation=memthreshold"]
    with pytest.raises(SystemExit):
        parse_args(base)
    assert parse_args([*base, "--mem_threshold=3"]).mem_threshold == 3.0
