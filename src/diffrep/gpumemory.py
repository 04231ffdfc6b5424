"""Predicted GPU memory of the paper's heavy rules, from the full-size architectures on the meta device.

Nothing is allocated: the models of :mod:`diffrep.rehearsal` are built with ``torch.device("meta")``
(shapes and dtypes only) and run forward on meta tensors, which gives

- the parameter counts (exact: the released models' numbers);
- the activations a training step keeps for the backward pass: every tensor autograd saves during
  the UNet's forward (``torch.autograd.graph.saved_tensors_hooks``), parameters and their views
  excluded, at the paper's batch and resolution, with and without gradient checkpointing
  (diffusers' non-reentrant checkpointing keeps each block's inputs, which this count does not see:
  a slight underestimate);
- for inference, the largest input + output of any single layer (forward hooks): the floor of the
  transient peak (PyTorch frees activations as it goes; scaled-dot-product attention does not
  materialise the score matrix on GPU).

The finetune's memory (diffrep.training with accelerate ``mixed_precision: fp16``): the UNet stays
fp32 (master weights, 4 B/param) with fp32 gradients (4 B) and AdamW's two moments (8 B), autocast
makes fp16 copies of the weights it uses (2 B, an upper bound), the frozen text encoder and VAE are
cast to fp16 (2 B/param). Generation and embedding hold fp16 (SD) or fp32 (SSCD) weights. A fixed
``OVERHEAD_GIB`` stands for the CUDA context and the allocator's fragmentation. ``python -m
diffrep.gpumemory`` prints the table of docs/rehearsal.md.
"""

from __future__ import annotations

import argparse

GIB = 2**30
OVERHEAD_GIB = 1.5  # CUDA context (~0.5 GiB) + caching-allocator fragmentation, a round allowance


def _is_parameter_like(t) -> bool:
    base = t._base if t._base is not None else t
    return base.is_leaf and base.requires_grad


def saved_for_backward_bytes(fn) -> int:
    """Bytes of the non-parameter tensors autograd saves while `fn()` runs (each tensor once)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        if not _is_parameter_like(t):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def largest_layer_bytes(module, fn) -> int:
    """The largest input + output bytes of any leaf module of `module` while `fn()` runs."""
    import torch

    peak = [0]

    def size(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (tuple, list)):
            return sum(size(v) for v in x)
        return 0

    def hook(_mod, inputs, output):
        peak[0] = max(peak[0], size(inputs) + size(output))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return peak[0]


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def finetune_estimate(variant: str = "sd21", batch: int = 16, resolution: int = 256) -> dict:
    """GiB of one finetune process at `batch` and `resolution` px, fp16 mixed precision, AdamW."""
    import torch

    from diffrep.rehearsal import sd_modules

    with torch.device("meta"):
        mods = sd_modules(variant)
    unet = mods["unet"].to(torch.float16).train()
    p_unet, p_frozen = _params(unet), _params(mods["text_encoder"]) + _params(mods["vae"])
    side = resolution // 8
    text = unet.config.cross_attention_dim
    x = torch.empty(batch, 4, side, side, device="meta", dtype=torch.float16)
    h = torch.empty(batch, 77, text, device="meta", dtype=torch.float16)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    act = saved_for_backward_bytes(lambda: unet(x, t, h))
    unet.enable_gradient_checkpointing()
    act_ckpt = saved_for_backward_bytes(lambda: unet(x, t, h))
    static = {
        "unet_fp32_master": 4 * p_unet,
        "unet_fp32_grads": 4 * p_unet,
        "adamw_moments": 8 * p_unet,
        "autocast_fp16_copies": 2 * p_unet,
        "frozen_fp16": 2 * p_frozen,
    }
    static_gib = sum(static.values()) / GIB
    return {
        "parts_gib": {k: v / GIB for k, v in static.items()},
        "activations_gib": act / GIB,
        "activations_checkpointed_gib": act_ckpt / GIB,
        "total_gib": static_gib + act / GIB + OVERHEAD_GIB,
        "total_checkpointed_gib": static_gib + act_ckpt / GIB + OVERHEAD_GIB,
    }


def generate_estimate(variant: str = "sd21", batch: int = 8, resolution: int = 256) -> dict:
    """GiB of generation: 2-byte weights (fp16; bf16 for SD 3.x, T5-XXL included) and the largest
    layer of the denoiser (batch x 2 for classifier-free guidance) or of the VAE decoder (batch)."""
    import torch

    from diffrep.flops import denoiser_call, meta_modules

    mods = {k: m.to(torch.float16).eval() for k, m in meta_modules(variant).items()}
    side = resolution // 8
    denoiser, call = denoiser_call(mods, 2 * batch, side, torch.float16)
    layer_denoiser = largest_layer_bytes(denoiser, call)
    vae = mods["vae"]
    z = torch.empty(batch, vae.config.latent_channels, side, side, device="meta", dtype=torch.float16)
    layer_vae = largest_layer_bytes(vae, lambda: vae.decode(z))
    weights = 2 * sum(_params(m) for m in mods.values())
    return {
        "weights_fp16_gib": weights / GIB,
        "largest_layer_gib": max(layer_denoiser, layer_vae) / GIB,
        "total_gib": (weights + max(layer_denoiser, layer_vae)) / GIB + OVERHEAD_GIB,
    }


def embed_estimate(variant: str = "disc_large", batch: int = 64, resolution: int = 224) -> dict:
    """GiB of SSCD embedding (fp32, as the embedder runs it): weights and the largest layer."""
    import torch

    from diffrep.rehearsal import sscd_module

    with torch.device("meta"):
        net = sscd_module(variant).eval()
    x = torch.empty(batch, 3, resolution, resolution, device="meta")
    layer = largest_layer_bytes(net, lambda: net(x))
    weights = 4 * _params(net)
    return {
        "weights_fp32_gib": weights / GIB,
        "largest_layer_gib": layer / GIB,
        "total_gib": (weights + layer) / GIB + OVERHEAD_GIB,
    }


def table(batch: int = 16, resolution: int = 256, generate_batch: int = 8, embed_batch: int = 64) -> str:
    """The markdown table of docs/rehearsal.md (GiB)."""
    rows = [
        "| rule | model | setting | weights + optimizer | activations | predicted total |",
        "|---|---|---|---|---|---|",
    ]
    for variant in ("sd21", "sd14"):
        f = finetune_estimate(variant, batch, resolution)
        static = sum(f["parts_gib"].values())
        setting = f"batch {batch}, {resolution} px, fp16 AMP, AdamW"
        rows.append(
            f"| finetune | {variant} | {setting} | {static:.1f} | {f['activations_gib']:.1f} | {f['total_gib']:.1f} |"
        )
        rows.append(
            f"| finetune | {variant} | same, gradient checkpointing | {static:.1f} | "
            f"{f['activations_checkpointed_gib']:.1f} | {f['total_checkpointed_gib']:.1f} |"
        )
    for res in (resolution, 768):
        g = generate_estimate("sd21", generate_batch, res)
        rows.append(
            f"| generate | sd21 | batch {generate_batch} (x2 CFG), {res} px, fp16 | {g['weights_fp16_gib']:.1f} | "
            f"{g['largest_layer_gib']:.1f} | {g['total_gib']:.1f} |"
        )
    for variant, dtype in (("sdxl", "fp16"), ("sd35_medium", "bf16, with T5-XXL")):
        g = generate_estimate(variant, generate_batch, 1024)
        rows.append(
            f"| generate | {variant} | batch {generate_batch} (x2 CFG), 1024 px, {dtype} | "
            f"{g['weights_fp16_gib']:.1f} | {g['largest_layer_gib']:.1f} | {g['total_gib']:.1f} |"
        )
    for variant in ("disc_large", "disc_mixup"):
        e = embed_estimate(variant, embed_batch)
        rows.append(
            f"| embed | sscd_{variant} | batch {embed_batch}, 224 px, fp32 | {e['weights_fp32_gib']:.2f} | "
            f"{e['largest_layer_gib']:.2f} | {e['total_gib']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--generate-batch", type=int, default=8)
    ap.add_argument("--embed-batch", type=int, default=64)
    args = ap.parse_args(argv)
    print(table(args.batch, args.resolution, args.generate_batch, args.embed_batch))
    print(f"\n(GiB; totals include {OVERHEAD_GIB} GiB of CUDA context and allocator overhead)")


if __name__ == "__main__":
    main()
