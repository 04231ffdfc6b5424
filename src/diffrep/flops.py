"""FLOPs of a finetune step and of an image generation, counted on the built architectures, and the
GPU-hours of the paper matrix (``python -m diffrep.flops`` prints the tables of docs/rehearsal.md).

Counted, not estimated by hand: ``torch.utils.flop_counter.FlopCounterMode`` runs the full-size
models of :mod:`diffrep.rehearsal` on the meta device (shapes only, nothing allocated) at the
paper's real input sizes and adds up the matrix multiplications, convolutions and attention of
every call (2 FLOPs per multiply-add; element-wise ops, norms and activations are not counted,
a few per cent). A finetune step is the VAE encoder and the text encoder without gradients plus the
UNet's forward and backward (the backward counted too; gradient checkpointing would add one more
forward, not counted). An image is the prompt and the negative prompt through the text
encoder(s), ``steps`` denoiser calls at batch 2 (classifier-free guidance; batch 1 when
guidance_scale <= 1) and one VAE decode; SD 3.5 with T5-XXL (256 tokens), as the paper config runs it.

GPU-hours: upstream reports one RTX A6000 for about 24 h per 100,000-step finetune at batch 16
and 256 px, and about 5 h per 4000 generations of 50 steps (:data:`UPSTREAM`). Dividing the counted
FLOPs by those times and by the A6000's dense fp16 tensor peak gives the utilisation upstream
reached (about 10 % training, a few per cent generating); the matrix's hours on another GPU
(:data:`GPUS`: published dense fp16/bf16 tensor TFLOP/s) assume the same utilisation, which is
optimistic for GPUs much larger than an A6000 at these small batches.
"""

from __future__ import annotations

import argparse
import functools
from collections import defaultdict

# Published dense (no sparsity) fp16 / bf16 tensor-core peaks, FLOP/s: NVIDIA's datasheets.
GPUS = {
    "RTX A6000": 154.8e12,  # RTX A6000 datasheet: 309.7 TFLOPS with sparsity
    "A100 SXM": 312e12,  # A100 datasheet, BF16 tensor core
    "H100 SXM": 989e12,  # H100 datasheet, BF16 tensor core (1,979 with sparsity)
}
UPSTREAM_GPU = "RTX A6000"
# Upstream's throughput on one RTX A6000 (the issue; DCR's README and paper): hours per unit of work.
UPSTREAM = {
    "finetune": {"hours": 24.0, "steps": 100_000, "batch": 16, "resolution": 256},
    "generate": {"hours": 5.0, "images": 4000, "steps": 50, "resolution": 256},
}
# Which built architecture a models entry of the paper config has (rehearsal.SD_MODELS / SD3_MODELS).
ARCHITECTURES = {
    "sd21": "sd21",
    "sd21_base": "sd21_base",
    "sd14": "sd14",
    "sd_turbo": "sd21_base",  # SD-Turbo is distilled into SD 2.1-base's UNet
    "sdxl": "sdxl",
    "sdxl_turbo": "sdxl",  # SDXL-Turbo: SDXL base's architecture
    "sd35_medium": "sd35_medium",
}
SECOND_ORDER = ("heun", "flow_match_heun")  # samplers calling the denoiser twice a step (but the last)
TEXT_TOKENS = 77  # CLIP context
T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length


def count_flops(fn) -> int:
    """FLOPs of everything `fn()` runs (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def meta_modules(arch: str) -> dict:
    """The full-size modules of a built architecture (SD_MODELS or SD3_MODELS, T5 included) on the
    meta device: shapes only, nothing allocated."""
    import torch

    from diffrep import rehearsal

    with torch.device("meta"):
        if arch in rehearsal.SD3_MODELS:
            return rehearsal.sd3_modules(arch)
        return rehearsal.sd_modules(arch)


modules = functools.cache(meta_modules)  # the counts below share one fp32 copy per architecture


def _meta(*shape, dtype=None):
    import torch

    return torch.empty(*shape, device="meta", dtype=dtype or torch.float32)


def unet_call(unet, batch: int, side: int, dtype=None):
    """A function calling `unet` on meta inputs of `dtype` (default fp32): batch x 4 x side x side
    latents, CLIP context, and SDXL's added text-time embedding when the UNet has one."""
    import torch

    cfg, m = unet.config, functools.partial(_meta, dtype=dtype)
    x, h = m(batch, cfg.in_channels, side, side), m(batch, TEXT_TOKENS, cfg.cross_attention_dim)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    extra = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": m(batch, pooled), "time_ids": m(batch, 6)}
    return lambda: unet(x, t, h, **extra)


def transformer_call(transformer, batch: int, side: int, dtype=None):
    """A function calling an SD3 transformer on meta inputs of `dtype`: latents, CLIP + T5 context
    (77 + 256 tokens), pooled embedding, timestep."""
    cfg, m = transformer.config, functools.partial(_meta, dtype=dtype)
    x = m(batch, cfg.in_channels, side, side)
    context = m(batch, TEXT_TOKENS + T5_TOKENS, cfg.joint_attention_dim)
    pooled, t = m(batch, cfg.pooled_projection_dim), m(batch)
    return lambda: transformer(
        hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled, timestep=t
    )


def denoiser_call(mods: dict, batch: int, side: int, dtype=None):
    """(denoiser module, function calling it) of a pipeline's modules: the UNet or the SD3 transformer."""
    if "transformer" in mods:
        return mods["transformer"], transformer_call(mods["transformer"], batch, side, dtype)
    return mods["unet"], unet_call(mods["unet"], batch, side, dtype)


def text_flops(mods: dict, prompts: int) -> int:
    """FLOPs of encoding `prompts` prompts with every text encoder of a pipeline."""
    import torch

    total = 0
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if name in mods:
            tokens = T5_TOKENS if name == "text_encoder_3" else TEXT_TOKENS
            ids = torch.zeros(prompts, tokens, dtype=torch.long, device="meta")
            total += count_flops(functools.partial(mods[name], ids))
    return total


@functools.cache
def finetune_step_flops(arch: str = "sd21", batch: int = 16, resolution: int = 256) -> dict:
    """FLOPs of one training step: ``vae_encode``, ``text``, ``unet_forward``, ``unet_backward``, ``total``."""
    import torch

    mods = modules(arch)
    unet, vae = mods["unet"].train(), mods["vae"]
    with torch.no_grad():
        encode = count_flops(lambda: vae.encode(_meta(batch, 3, resolution, resolution)))
        text = text_flops({"text_encoder": mods["text_encoder"]}, batch)
    call = unet_call(unet, batch, resolution // 8)
    fwd = count_flops(call)
    both = count_flops(lambda: call().sample.float().pow(2).mean().backward())
    parts = {"vae_encode": encode, "text": text, "unet_forward": fwd, "unet_backward": both - fwd}
    return {**parts, "total": sum(parts.values())}


@functools.cache
def image_flops(arch: str, resolution: int, steps: int, cfg: bool = True) -> dict:
    """FLOPs of one generated image: ``text``, ``denoiser`` (`steps` denoiser calls), ``vae_decode``,
    ``total``."""
    import torch

    mods = modules(arch)
    batch, side = (2 if cfg else 1), resolution // 8
    with torch.no_grad():
        text = text_flops(mods, batch)
        step = count_flops(denoiser_call(mods, batch, side)[1])
        latent = mods["vae"].config.latent_channels
        decode = count_flops(lambda: mods["vae"].decode(_meta(1, latent, side, side)))
    parts = {"text": text, "denoiser": steps * step, "vae_decode": decode}
    return {**parts, "total": sum(parts.values())}


def upstream_utilisation() -> dict:
    """The fraction of the A6000's peak that upstream's reported times imply, per kind of job."""
    peak = GPUS[UPSTREAM_GPU]
    ft, gen = UPSTREAM["finetune"], UPSTREAM["generate"]
    step = finetune_step_flops("sd21", ft["batch"], ft["resolution"])["total"]
    image = image_flops("sd21", gen["resolution"], gen["steps"])["total"]
    return {
        "finetune": step * ft["steps"] / (ft["hours"] * 3600 * peak),
        "generate": image * gen["images"] / (gen["hours"] * 3600 * peak),
    }


def matrix_work(config: dict) -> tuple[list[dict], list[str]]:
    """The paper matrix's work, grouped: rows of kind, model, resolution, steps, jobs, units (steps
    or images) and FLOPs; and the models whose architecture is not built (not counted).

    `config` is a validated study config (schema defaults filled, :func:`load_config`).
    """
    from diffrep import config as dconf

    groups: dict = defaultdict(lambda: {"jobs": 0, "units": 0, "flops": 0})
    missing = set()
    training = config["training"]
    base = ARCHITECTURES.get(config["base_model"])
    for _ds, _run in dconf.finetunes(config):
        g = groups[("finetune", config["base_model"], training["resolution"], training["max_train_steps"])]
        step = finetune_step_flops(base, training["train_batch_size"], training["resolution"])["total"]
        g["jobs"] += 1
        g["units"] += training["max_train_steps"]
        g["flops"] += training["max_train_steps"] * step
    presets = dconf.presets(config)
    for _ds, run, gen in dconf.generations(config):
        model, preset = dconf.run_model(config, run), presets[gen]
        if model not in ARCHITECTURES:
            missing.add(model)
            continue
        res, n = (
            dconf.generation_resolution(config, run),
            preset.get("n_images", config["generation"]["n_images"]),
        )
        steps, cfg = int(preset["steps"]), float(preset["guidance_scale"]) > 1
        calls = 2 * steps - 1 if preset["scheduler"] in SECOND_ORDER else steps  # Heun: 2 calls a step
        g = groups[("generate", model, res, steps)]
        g["jobs"] += 1
        g["units"] += n
        g["flops"] += n * image_flops(ARCHITECTURES[model], res, calls, cfg)["total"]
    rows = [dict(zip(("kind", "model", "resolution", "steps"), k), **v) for k, v in sorted(groups.items())]
    return rows, sorted(missing)


def gpu_hours(flops: float, kind: str, gpu: str, utilisation: dict) -> float:
    """Hours of `flops` of one kind of job on `gpu` at upstream's utilisation of that kind."""
    return flops / (GPUS[gpu] * utilisation[kind]) / 3600


def load_config(path: str, schema: str) -> dict:
    """A study config as the workflow sees it: schema-validated (defaults filled) and completed."""
    import yaml
    from snakemake.utils import validate

    from diffrep import config as dconf

    with open(path) as f:
        config = yaml.safe_load(f)
    validate(config, schema)
    return dconf.fill_defaults(config)


def flops_table() -> str:
    """Markdown: the counted FLOPs of the paper's units of work (TFLOP)."""
    rows = ["| work | architecture | setting | TFLOP |", "|---|---|---|---|"]
    step = finetune_step_flops("sd21", 16, 256)
    rows.append(
        f"| finetune step | sd21 | batch 16, 256 px, forward + backward | {step['total'] / 1e12:.2f} |"
    )
    for arch, res, steps in (
        ("sd21", 256, 50),
        ("sd21", 768, 50),
        ("sdxl", 1024, 50),
        ("sd35_medium", 1024, 40),
    ):
        img = image_flops(arch, res, steps)
        rows.append(f"| image | {arch} | {res} px, {steps} steps, CFG | {img['total'] / 1e12:.1f} |")
    return "\n".join(rows)


def matrix_table(config: dict) -> str:
    """Markdown: the paper matrix's work and its GPU-hours on every GPU of :data:`GPUS`."""
    util = upstream_utilisation()
    rows, missing = matrix_work(config)
    head = (
        "| job | model | px | steps | jobs | steps or images | PFLOP | "
        + " | ".join(f"{g} h" for g in GPUS)
        + " |"
    )
    out = [head, "|" + "---|" * (7 + len(GPUS))]
    totals = defaultdict(float)
    for r in rows:
        hours = {g: gpu_hours(r["flops"], r["kind"], g, util) for g in GPUS}
        for g, h in hours.items():
            totals[g] += h
        out.append(
            f"| {r['kind']} | {r['model']} | {r['resolution']} | {r['steps']} | {r['jobs']} | {r['units']:,} | "
            f"{r['flops'] / 1e15:,.0f} | " + " | ".join(f"{hours[g]:,.1f}" for g in GPUS) + " |"
        )
    out.append("| **total** | | | | | | | " + " | ".join(f"**{totals[g]:,.0f}**" for g in GPUS) + " |")
    note = (
        f"\nUtilisation implied by upstream's A6000 times: finetune {util['finetune']:.1%}, "
        f"generation {util['generate']:.1%} of {GPUS[UPSTREAM_GPU] / 1e12:.1f} TFLOP/s."
    )
    if missing:
        note += f" Not counted (architecture not built): {', '.join(missing)}."
    return "\n".join(out) + note


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml", help="Study config (default: the paper's).")
    ap.add_argument("--schema", default="schemas/config.schema.yaml")
    args = ap.parse_args(argv)
    print(flops_table())
    print()
    print(matrix_table(load_config(args.config, args.schema)))


if __name__ == "__main__":
    main()
