"""Inference-time mitigations of memorisation published after DCR, as generation presets.

Each is a preset ``mitigation`` that :func:`diffrep.generation.generate_batch` applies around the
family's pipeline call, so every run and every benchmark can use it:

- ``prompt_optimization`` — Wen et al. (ICLR 2024), inference-time mitigation: before sampling,
  the conditional prompt embedding of each image is optimised to lower the detection metric
  ``‖ε(x_T, c) − ε(x_T, ∅)‖₂`` at the first sampling step on that image's own initial latent
  (AdamW, learning rate ``optim_lr``, at most ``optim_steps`` iterations, stopping as soon as the
  metric is ≤ ``optim_target`` when one is set; the gradient of the first (BOS) token is zeroed, as
  the authors do). The authors optimise one embedding per prompt on the norm over its whole batch
  of images; here every image has its own (images depend only on their own seed).
- ``guidance_transition`` — Jain et al. (CVPR 2025): classifier-free guidance inside the
  attraction basin of a memorised picture causes the copy, so the guidance scale is
  ``early_guidance`` for the first ``transition_step`` sampling steps and the preset's
  ``guidance_scale`` afterwards. ``early_guidance: 0`` is their "no guidance" (the unconditional
  prediction), a negative value their "opposite guidance".
- ``attention_rescale`` — Ren et al. (ECCV 2024): in every cross-attention layer, for the
  conditional half of the batch only, the attention logits of the beginning (BOS) token are
  multiplied by ``attention_scale`` (their C1, 1.25) and the summary tokens after the prompt's
  first end token are masked out, which spreads attention away from the trigger tokens.

The guidance schedule is applied by a forward hook on the UNet (it rewrites the conditional half
of the output so that the pipeline's fixed-scale guidance gives the scheduled one); attention
rescaling by a cross-attention processor; both work for the UNet families sd and sdxl. Prompt
optimisation needs the UNet's plain text conditioning: sd only.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)

MEMORIZATION_MITIGATIONS = ("prompt_optimization", "guidance_transition", "attention_rescale")
DEFAULTS = {
    "transition_step": 5,
    "early_guidance": 0.0,
    "attention_scale": 1.25,
    "optim_steps": 10,
    "optim_lr": 0.05,
    "optim_target": None,
}


def setting(preset: dict, key: str):
    """A mitigation setting of `preset`, or its default (:data:`DEFAULTS`)."""
    value = preset.get(key)
    return DEFAULTS[key] if value is None else value


def scheduled_guidance(step: int, preset: dict) -> float:
    """The guidance scale of sampling step `step` (0-based) under ``guidance_transition``."""
    if step < int(setting(preset, "transition_step")):
        return float(setting(preset, "early_guidance"))
    return float(preset.get("guidance_scale", 7.5))


class GuidanceSchedule:
    """UNet forward hook: the conditional half becomes ``u + (g_i / g)(c − u)``, so that the
    pipeline's guidance ``u + g (c' − u)`` equals ``u + g_i (c − u)`` at step ``i``."""

    def __init__(self, preset: dict):
        self.preset = preset
        self.step = 0

    def on_step_end(self, pipe, i, t, kwargs):
        self.step = i + 1
        return kwargs

    def __call__(self, module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output.sample
        g = float(self.preset.get("guidance_scale", 7.5))
        ratio = scheduled_guidance(self.step, self.preset) / g
        if ratio == 1.0:
            return None
        import torch

        u, c = out.chunk(2)
        new = torch.cat([u, u + ratio * (c - u)])
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens kept by attention rescaling: BOS, the prompt's tokens and its first end token."""
    ids = tokenizer(prompts, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return [len(i) for i in ids]


class RescaledCrossAttention:
    """A cross-attention processor (plain softmax attention) with Ren et al.'s rescaling."""

    def __init__(self, lengths: list[int], scale: float):
        self.lengths = lengths
        self.scale = float(scale)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        import torch

        residual, ndim = hidden_states, hidden_states.ndim
        if ndim == 4:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch, heads = hidden_states.shape[0], attn.heads

        def split(x):
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(context)), split(attn.to_v(context))
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        half = batch // 2
        if batch == 2 * len(self.lengths):
            keep = torch.zeros(len(self.lengths), k.shape[2], dtype=torch.bool, device=q.device)
            for row, n in enumerate(self.lengths):
                keep[row, :n] = True
            cond = logits[half:]
            cond[..., 0] = cond[..., 0] * self.scale
            logits[half:] = cond.masked_fill(~keep[:, None, None, :], float("-inf"))
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, -1, heads * v.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextlib.contextmanager
def applied(pipe, preset: dict, prompts: list[str]):
    """Install the preset's sampling-time mitigation on `pipe`; yield the ``callback_on_step_end`` to pass."""
    style = preset.get("mitigation", "none")
    if style == "guidance_transition":
        schedule = GuidanceSchedule(preset)
        handle = pipe.unet.register_forward_hook(schedule, with_kwargs=True)
        try:
            yield schedule.on_step_end
        finally:
            handle.remove()
    elif style == "attention_rescale":
        original = dict(pipe.unet.attn_processors)
        proc = RescaledCrossAttention(
            prompt_lengths(pipe.tokenizer, prompts), setting(preset, "attention_scale")
        )
        pipe.unet.set_attn_processor({k: proc if "attn2" in k else v for k, v in original.items()})
        try:
            yield None
        finally:
            pipe.unet.set_attn_processor(dict(original))  # (it pops from the dict it is given)
    else:
        yield None


def _first_step(pipe, seeds: list[int], preset: dict, resolution: int, dtype):
    """(UNet input at the first sampling step [∅ | c halves], its timestep) for these seeds."""
    import torch

    sched = pipe.scheduler
    sched.set_timesteps(int(preset.get("steps", 50)))
    t = sched.timesteps[0]
    latents = torch.cat([_initial_latent(pipe, s, resolution, dtype) for s in seeds])
    return sched.scale_model_input(torch.cat([latents] * 2), t), t


def _metric(pipe, x_in, t, neg, cond):
    """Per-image ‖ε(x_T, c) − ε(x_T, ∅)‖₂ at the first step (differentiable in `cond`)."""
    import torch

    from diffrep.memorization import text_noise_norm, to_epsilon

    out = pipe.unet(x_in, t, encoder_hidden_states=torch.cat([neg, cond])).sample
    alpha_bar, pred = pipe.scheduler.alphas_cumprod[int(t)], pipe.scheduler.config.prediction_type
    u, c = (to_epsilon(o, x, alpha_bar, pred) for o, x in zip(out.chunk(2), x_in.chunk(2)))
    return text_noise_norm(u, c)


def first_step_metric(pipe, embeds: dict, seeds: list[int], preset: dict, resolution: int):
    """The detection metric at the first sampling step of each image (T = 1, n = 1), a tensor."""
    import torch

    x_in, t = _first_step(pipe, seeds, preset, resolution, embeds["prompt_embeds"].dtype)
    with torch.no_grad():
        return _metric(pipe, x_in, t, embeds["negative_prompt_embeds"], embeds["prompt_embeds"])


def optimize_prompt_embeds(pipe, family: str, embeds: dict, seeds: list[int], preset: dict, resolution: int):
    """``prompt_optimization``: `embeds` with each image's conditional embedding optimised (see module doc).

    Returns a new dict; logs the metric of each image before and after.
    """
    import torch

    if family != "sd":
        raise ValueError(f"prompt_optimization: family {family!r} is not supported (sd only)")
    if embeds.get("negative_prompt_embeds") is None:
        raise ValueError("prompt_optimization needs classifier-free guidance (guidance_scale > 1)")
    cond = embeds["prompt_embeds"].detach().clone().requires_grad_(True)
    neg = embeds["negative_prompt_embeds"].detach()
    x_in, t = _first_step(pipe, seeds, preset, resolution, cond.dtype)
    target = setting(preset, "optim_target")
    opt = torch.optim.AdamW([cond], lr=float(setting(preset, "optim_lr")))
    first = None
    with torch.enable_grad():
        for _ in range(int(setting(preset, "optim_steps"))):
            norms = _metric(pipe, x_in, t, neg, cond)
            first = norms.detach() if first is None else first
            active = (
                norms.detach() > float(target)
                if target is not None
                else torch.ones_like(norms, dtype=torch.bool)
            )
            if not bool(active.any()):
                break
            (grad,) = torch.autograd.grad((norms * active).sum(), [cond])
            grad[:, 0] = 0  # the BOS token stays as it is
            cond.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        last = _metric(pipe, x_in, t, neg, cond)
    log.info(
        "prompt_optimization: metric %s -> %s", first.tolist() if first is not None else None, last.tolist()
    )
    return {**embeds, "prompt_embeds": cond.detach()}


def _initial_latent(pipe, seed: int, resolution: int, dtype):
    """The initial latent the pipeline draws for a generator seeded `seed` (same shape and draw)."""
    import torch

    factor = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, resolution // factor, resolution // factor)
    gen = torch.Generator().manual_seed(int(seed))
    latent = torch.randn(shape, generator=gen, dtype=dtype).to(pipe.device)  # drawn on the CPU, as diffusers
    return latent * pipe.scheduler.init_noise_sigma
