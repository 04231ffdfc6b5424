"""A tiny Stable-Diffusion-format pipeline, built offline from configs with seeded weights.

The mini study runs every rule of the paper study on a model with the same file layout as SD 2.1
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, all
weights in safetensors), so that training, generation and every metric take the same code path.

Two entry points:

- :func:`build_tiny_pipeline` — random weights, a CLIP-style BPE tokenizer trained on the given
  captions; about a second. For tests of code that only needs a loadable pipeline.
- :func:`build_mini_sd` — the mini study's base model (builder ``mini_sd``): the tiny pipeline,
  then a brief pretraining of the VAE (reconstruction) and of the UNet (text-to-image denoising) on
  a separate *base image set* (procedural drawings from :mod:`diffrep.minidata`, never the
  training images), like Stable Diffusion is pretrained before it is finetuned. The result's
  latent space is usable and its samples look like the base image set. ``build_info.json``
  records what was trained (part of the manifest: nothing measured), the hidden
  ``.build_report.json`` how well (reconstruction MSE against a random VAE's, losses, durations,
  the platform fingerprint; outside the manifest, as measurements vary between machines).

Sizes (defaults): 32 px images, VAE 16/32/32 channels with two downsamplings, so a 4 x 8 x 8
latent; UNet channels (32, 64) with cross-attention at both levels; CLIP text encoder with
hidden size 32, 2 layers, 4 heads, 32 positions. Everything is deterministic for a seed:
rebuilding on the same machine and software gives byte-identical files (docs/reproducibility.md);
another CPU or library version gives other weights, as any trained model would.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from diffrep.fileio import staged_dir

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


# --------------------------------------------------------------------------------------------
# Tokenizer: a CLIP-style byte-level BPE vocabulary trained on the captions
# --------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's / GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _words(text: str) -> list[str]:
    """CLIP's pre-tokenisation (lower case, letters runs, single digits, punctuation runs)."""
    return _WORD_RE.findall(" ".join(text.lower().split()))


def train_bpe(captions: Iterable[str], max_merges: int = 2000) -> tuple[dict[str, int], list[str]]:
    """Train a CLIP-format BPE vocabulary on `captions`; return (vocab, merges).

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with the end-of-word
    marker ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. Merges
    are learnt greedily (most frequent adjacent pair; ties broken by the pair's text), so the
    result depends only on the captions. Any text still encodes (byte fallback).
    """
    byte_map = _bytes_to_unicode()
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for caption in captions:
        for word in _words(caption):
            symbols = [byte_map[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            counts[tuple(symbols)] += 1
    base = list(byte_map.values())
    vocab_list = base + [s + "</w>" for s in base]
    merges: list[str] = []
    words = dict(counts)
    for _ in range(max_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, n in words.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best_n = max(pairs.values())
        if best_n < 2:
            break
        best = min(p for p, n in pairs.items() if n == best_n)
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        vocab_list.append(merged)
        new_words = {}
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def make_tokenizer(captions: Sequence[str], max_length: int = 32, max_merges: int = 2000):
    """A transformers CLIPTokenizer whose BPE vocabulary was trained on `captions`."""
    from transformers import CLIPTokenizer

    if not captions:
        raise ValueError("make_tokenizer: no captions to train the BPE vocabulary on")
    vocab, merges = train_bpe(captions, max_merges=max_merges)
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=max_length)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int, threads: int | None = None):
    """Run a block with torch's global RNG seeded (restored afterwards) and a fixed thread count."""
    import torch

    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


def _unet(resolution: int, factor: int, channels: Sequence[int], latent_channels: int, text_hidden: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=resolution // factor,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * len(channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(channels),
        cross_attention_dim=text_hidden,
        attention_head_dim=4,
        norm_num_groups=min(32, min(channels)),
    )


def _vae(resolution: int, channels: Sequence[int], latent_channels: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=min(32, min(channels)),
        sample_size=resolution,
        scaling_factor=scaling_factor,
    )


def _text_encoder(tokenizer, hidden: int, layers: int, heads: int, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_length,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _scheduler(prediction_type: str):
    """SD's DDIM configuration (scaled-linear betas 0.00085 to 0.012, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def make_components(
    captions: Sequence[str],
    seed: int,
    resolution: int = 32,
    *,
    unet_channels: Sequence[int] = (32, 64),
    vae_channels: Sequence[int] = (16, 32, 32),
    latent_channels: int = 4,
    text_hidden: int = 32,
    text_layers: int = 2,
    text_heads: int = 4,
    max_length: int = 32,
    prediction_type: str = "epsilon",
    scaling_factor: float = 0.18215,
) -> dict:
    """The random-weight components of a tiny SD pipeline, as a dict of pipeline keyword arguments.

    The VAE downsamples by ``2 ** (len(vae_channels) - 1)``: with the defaults a 32 px image becomes
    a ``4 x 8 x 8`` latent and the UNet's ``sample_size`` is 8. The UNet, VAE and text encoder are
    initialised from torch seeds `seed`, `seed` + 1 and `seed` + 2.
    """
    import torch

    factor = 2 ** (len(vae_channels) - 1)
    if resolution % (factor * 2 ** (len(unet_channels) - 1)):
        raise ValueError(
            f"resolution {resolution} px must be divisible by the VAE factor {factor} times the UNet's "
            f"downsampling {2 ** (len(unet_channels) - 1)}"
        )
    tokenizer = make_tokenizer(captions, max_length=max_length)
    with _seeded(seed):
        torch.manual_seed(seed)
        unet = _unet(resolution, factor, unet_channels, latent_channels, text_hidden)
        torch.manual_seed(seed + 1)
        vae = _vae(resolution, vae_channels, latent_channels, scaling_factor)
        torch.manual_seed(seed + 2)
        text_encoder = _text_encoder(tokenizer, text_hidden, text_layers, text_heads, max_length)
    scheduler = _scheduler(prediction_type)
    for m in (unet, vae, text_encoder):
        m.eval()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def assemble_pipeline(components: dict):
    """A StableDiffusionPipeline (no safety checker, no feature extractor) from components."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def save_pipeline(components: dict, out_dir: Path) -> None:
    """save_pretrained (safetensors only) into `out_dir`."""
    pipe = assemble_pipeline(components)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    stray = [p for p in out_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if stray:
        raise RuntimeError(f"save_pretrained wrote pickle files: {stray}")


def build_tiny_pipeline(
    out_dir: str | os.PathLike,
    captions: list[str],
    seed: int,
    resolution: int = 32,
    **sizes,
) -> Path:
    """Write a random-weight tiny StableDiffusionPipeline to `out_dir` and return its path.

    `captions` train the BPE tokenizer (any other text still encodes, byte by byte). `sizes` are
    the keyword arguments of :func:`make_components` (unet_channels, vae_channels, text_hidden,
    max_length, prediction_type, ...). Loads with ``StableDiffusionPipeline.from_pretrained(out_dir,
    local_files_only=True, safety_checker=None)``. Same arguments, same bytes.
    """
    components = make_components(captions, seed, resolution, **sizes)
    with staged_dir(out_dir) as tmp:
        save_pipeline(components, tmp)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# The mini base model: the tiny pipeline pretrained briefly on the base image set
# --------------------------------------------------------------------------------------------

MINI_DEFAULTS = dict(
    resolution=32,  # px; the VAE makes 4 x 8 x 8 latents
    n_base_images=1000,  # base image set (pretraining), drawn apart from the mini dataset
    n_holdout=64,  # further base images, only for the reconstruction metric and the samples
    vae_steps=700,
    vae_batch_size=16,
    vae_lr=4e-3,
    kl_weight=1e-5,  # KL(posterior || N(0, 1)) weight; keeps the latent smooth enough to diffuse
    unet_steps=1000,
    unet_batch_size=32,
    unet_lr=2e-3,
    train_text_encoder=True,
    prediction_type="v_prediction",  # like SD 2.1; gave far better samples than epsilon at this budget
    sample_steps=20,
    guidance_scale=3.0,
    threads=2,  # fixed torch thread count while training (results depend on it)
)
# Memorised prompts planted during pretraining (diffrep.plantedmem): off by default, and
# then absent from build_info.json (so a model built without them keeps its bytes).
PLANTED_DEFAULTS = dict(
    planted=0,  # number of planted pictures, each under one unique nonsense caption
    planted_fraction=0.25,  # fraction of every UNet pretraining batch drawn from the planted pictures
    planted_controls=16,  # unseen nonsense captions, and as many held-out descriptions, as controls
)
MICRO_OVERRIDES = dict(n_base_images=64, n_holdout=8, vae_steps=40, unet_steps=20, sample_steps=4)


def _to_tensor(images):
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_uint8(x):
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def reconstruction_mse(vae, images) -> float:
    """Mean squared error of VAE(encode -> mode -> decode) on [-1, 1] images (N x 3 x H x W)."""
    import torch

    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        return float(torch.mean((vae.decode(latents).sample - images) ** 2))


def total_variation(images) -> float:
    """Mean absolute difference of neighbouring pixels of uint8 images (N x H x W x 3), in [0, 255].

    Drawings are piecewise flat (low), noise is not (high): a cheap "looks like the data" number.
    """
    import numpy as np

    x = images.astype(np.float64)
    return float((np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()) / 2)


def pretrain_vae(
    vae, images, steps: int, batch_size: int, lr: float, kl_weight: float, generator, progress=None
) -> list[float]:
    """Train the VAE to reconstruct `images` ([-1, 1], N x 3 x H x W): MSE + kl_weight * KL.

    Adam, cosine decay; batches drawn with `generator`. Returns the loss per step. `progress` (a
    :class:`diffrep.progress.ProgressLog`, optional) is updated after every step.
    """
    import torch

    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator)
        rec = vae.decode(z).sample
        loss = torch.mean((rec - x) ** 2) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress.update(step + 1, loss=_recent(losses))
    vae.eval()
    return losses


def _recent(losses: list[float], n: int = 20) -> float:
    """Mean of the last `n` losses (a steadier number to log than the last batch's)."""
    tail = losses[-n:]
    return sum(tail) / len(tail)


def _tokens(tokenizer, captions: Sequence[str]):
    """Token ids (padded to the tokenizer's length) of `captions` followed by the empty prompt."""
    return tokenizer(
        list(captions) + [""],
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids


def pretrain_unet(
    components,
    latents_mean,
    latents_std,
    captions,
    steps,
    batch_size,
    lr,
    train_text_encoder,
    generator,
    progress=None,
    planted: tuple[int, float] | None = None,
) -> list[float]:
    """Text-to-image denoising pretraining of the UNet (and optionally the text encoder).

    `latents_mean`/`latents_std` (N x 4 x h x w) are the VAE posterior of the base images;
    latents are sampled from it every step and scaled by ``vae.config.scaling_factor``, the
    standard SD objective (MSE against the noise, or the velocity for v-prediction). Captions
    are dropped (empty prompt) 10 % of the time, so classifier-free guidance works. `progress`
    (optional) is updated after every step. `planted` = (n, fraction): the last n latents and
    captions are planted pictures (:mod:`diffrep.plantedmem`); each batch element is one of them
    (uniformly) with probability `fraction`, else a base picture (uniformly).
    """
    import torch

    unet, text_encoder = components["unet"], components["text_encoder"]
    scheduler, scale = components["scheduler"], components["vae"].config.scaling_factor
    tokens, empty = _tokens(components["tokenizer"], captions), len(captions)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    unet.train()
    text_encoder.train(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    for step in range(steps):
        idx = _draw(len(captions), batch_size, generator, planted)
        drop = torch.rand(batch_size, generator=generator) < 0.1
        tok = tokens[torch.where(drop, torch.full_like(idx, empty), idx)]
        z0 = (
            latents_mean[idx] + latents_std[idx] * torch.randn(latents_mean[idx].shape, generator=generator)
        ) * scale
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        target = (
            noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
        )
        with torch.set_grad_enabled(train_text_encoder):
            hidden = text_encoder(tok)[0]
        loss = torch.mean((unet(zt, t, hidden).sample - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress.update(step + 1, loss=_recent(losses))
    unet.eval()
    text_encoder.eval()
    return losses


def _draw(n: int, batch_size: int, generator, planted: tuple[int, float] | None):
    """Indices of one pretraining batch: uniform over `n`, or the planted mix (see pretrain_unet)."""
    import torch

    if not planted or not planted[0]:
        return torch.randint(n, (batch_size,), generator=generator)
    n_planted, fraction = int(planted[0]), float(planted[1])
    base = torch.randint(n - n_planted, (batch_size,), generator=generator)
    chosen = n - n_planted + torch.randint(n_planted, (batch_size,), generator=generator)
    use = torch.rand(batch_size, generator=generator) < fraction
    return torch.where(use, chosen, base)


def _grid(rows) -> Image.Image:
    """Stack rows of uint8 images (each N x H x W x 3) into one PIL image."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0))


def mini_options(micro: bool, options: dict) -> dict:
    """:data:`MINI_DEFAULTS`, then :data:`MICRO_OVERRIDES` if `micro`, then `options` (names checked)."""
    known = {**MINI_DEFAULTS, **PLANTED_DEFAULTS}
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"mini_sd: unknown option(s) {sorted(unknown)}; known: micro, {', '.join(known)}")
    planted = PLANTED_DEFAULTS if int(options.get("planted", 0)) > 0 else {}
    return {**MINI_DEFAULTS, **(MICRO_OVERRIDES if micro else {}), **planted, **options}


@dataclasses.dataclass
class BaseSet:
    """The base image set split into pretraining and held-out parts (uint8 N x H x W x 3)."""

    train: np.ndarray
    train_captions: list[str]
    holdout: np.ndarray
    holdout_captions: list[str]


def base_set(seed: int, opts: dict) -> BaseSet:
    """Draw ``n_base_images + n_holdout`` base pictures; the first ``n_holdout`` are held out."""
    from diffrep import minidata

    n_hold = int(opts["n_holdout"])
    images, captions = minidata.base_images(
        int(opts["n_base_images"]) + n_hold, seed, size=int(opts["resolution"])
    )
    return BaseSet(images[n_hold:], captions[n_hold:], images[:n_hold], captions[:n_hold])


def _vae_stage(vae, train_x, hold_x, opts: dict, generator) -> dict:
    """Pretrain the VAE, set its ``scaling_factor`` to 1 / std of the base latents (rounded to 5
    digits, as SD did), and return the latent posterior and the stage's measurements."""
    import torch

    from diffrep.progress import ProgressLog

    mse_random = reconstruction_mse(vae, hold_x)
    t0 = time.time()
    steps = int(opts["vae_steps"])
    losses = pretrain_vae(
        vae,
        train_x,
        steps,
        int(opts["vae_batch_size"]),
        float(opts["vae_lr"]),
        float(opts["kl_weight"]),
        generator,
        ProgressLog("mini_sd VAE", steps, log),
    )
    seconds = time.time() - t0
    mse_trained = reconstruction_mse(vae, hold_x)
    with torch.no_grad():
        post = [vae.encode(train_x[i : i + 256]).latent_dist for i in range(0, len(train_x), 256)]
        lat_mean = torch.cat([p.mean for p in post])
        lat_std = torch.cat([p.std for p in post])
        scale = round(float(1.0 / lat_mean.std()), 5)
    vae.register_to_config(scaling_factor=scale)
    log.info(
        "mini_sd: VAE %d steps in %.0f s, held-out MSE %.4f (random VAE %.4f), scaling_factor %.5f",
        steps,
        seconds,
        mse_trained,
        mse_random,
        scale,
    )
    return {
        "latents_mean": lat_mean,
        "latents_std": lat_std,
        "losses": losses,
        "seconds": seconds,
        "holdout_reconstruction_mse": mse_trained,
        "holdout_reconstruction_mse_random_vae": mse_random,
        "scaling_factor": scale,
    }


def _unet_stage(
    components: dict, vae_stage: dict, captions: list[str], opts: dict, generator, n_planted: int = 0
) -> dict:
    """Pretrain the UNet (and text encoder) on the VAE stage's latents; losses and duration."""
    from diffrep.progress import ProgressLog

    t0 = time.time()
    steps = int(opts["unet_steps"])
    losses = pretrain_unet(
        components,
        vae_stage["latents_mean"],
        vae_stage["latents_std"],
        captions,
        steps,
        int(opts["unet_batch_size"]),
        float(opts["unet_lr"]),
        bool(opts["train_text_encoder"]),
        generator,
        ProgressLog("mini_sd UNet", steps, log),
        planted=(n_planted, float(opts.get("planted_fraction", 0.0))) if n_planted else None,
    )
    seconds = time.time() - t0
    final = sum(losses[-50:]) / len(losses[-50:]) if losses else float("nan")
    log.info("mini_sd: UNet %d steps in %.0f s, final loss %.4f", steps, seconds, final)
    return {"losses": losses, "seconds": seconds}


def _samples(components: dict, hold_x, prompts: list[str], opts: dict, seed: int):
    """(VAE reconstructions, base-model samples) of the first held-out pictures, uint8 N x H x W x 3."""
    import numpy as np
    import torch

    res = int(opts["resolution"])
    pipe = assemble_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    vae = components["vae"]
    with torch.no_grad():
        recon = vae.decode(vae.encode(hold_x[: len(prompts)]).latent_dist.mode()).sample
        samples = pipe(
            prompts,
            num_inference_steps=int(opts["sample_steps"]),
            height=res,
            width=res,
            guidance_scale=float(opts["guidance_scale"]),
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images
    return _to_uint8(recon), (samples * 255).round().astype(np.uint8)


def _pretrain(components: dict, base: BaseSet, opts: dict, seed: int, planted=None) -> dict:
    """Both pretraining stages and the samples, at the fixed thread count ``threads``.

    Returns the measurements, the images of ``build_samples.png`` and the platform fingerprint
    (taken while the fixed thread count is set). `planted` (a :class:`diffrep.plantedmem.PlantedSet`)
    joins the VAE's training pictures and the UNet's pretraining mix.
    """
    import numpy as np
    import torch

    from diffrep.provenance import platform_fingerprint

    with _seeded(seed + 10, threads=int(opts["threads"])):
        gen = torch.Generator().manual_seed(seed + 10)
        train_images = base.train if planted is None else np.concatenate([base.train, planted.images])
        train_x, hold_x = _to_tensor(train_images), _to_tensor(base.holdout)
        captions = base.train_captions + ([] if planted is None else planted.captions)
        n_planted = 0 if planted is None else len(planted.captions)
        vae = _vae_stage(components["vae"], train_x, hold_x, opts, gen)
        unet = _unet_stage(components, vae, captions, opts, gen, n_planted)
        prompts = base.holdout_captions[: min(8, len(base.holdout_captions))]
        recon, samples = _samples(components, hold_x, prompts, opts, seed)
        fingerprint = platform_fingerprint()
    return {
        "vae": vae,
        "unet": unet,
        "prompts": prompts,
        "recon": recon,
        "samples": samples,
        "platform": fingerprint,
    }


def build_info(seed: int, micro: bool, opts: dict, components: dict, base: BaseSet, corpus_size: int) -> dict:
    """``build_info.json``: what was built and how. Part of the model's manifest, so it holds only
    values fixed by the seed and options, never a measurement (:func:`measurements` go to the
    hidden ``.build_report.json``, which the manifest leaves out)."""
    res = int(opts["resolution"])
    n_show = min(8, len(base.holdout_captions))
    prediction = components["scheduler"].config.prediction_type
    return {
        "builder": "mini_sd",
        "seed": seed,
        "micro": micro,
        "options": opts,
        "trained": {
            "vae": f"reconstruction (MSE + {opts['kl_weight']} KL) on {len(base.train)} base images, "
            f"{opts['vae_steps']} steps, batch {opts['vae_batch_size']}, Adam lr {opts['vae_lr']} cosine",
            "unet": f"text-to-image denoising ({prediction}) on the same "
            f"base images and their descriptions, {opts['unet_steps']} steps, batch "
            f"{opts['unet_batch_size']}, AdamW lr {opts['unet_lr']} cosine, 10 % empty prompts",
            "text_encoder": "trained jointly with the UNet" if opts["train_text_encoder"] else "random",
            "tokenizer": f"CLIP-style BPE trained on {corpus_size} captions, "
            f"{len(components['tokenizer'])} tokens",
            "base_image_set": "diffrep.minidata.base_images (procedural drawings, separate RNG stream "
            "from the mini dataset)",
        },
        "sizes": {
            "resolution": res,
            "latent": [components["vae"].config.latent_channels, res // 4, res // 4],
            "unet_params": sum(p.numel() for p in components["unet"].parameters()),
            "vae_params": sum(p.numel() for p in components["vae"].parameters()),
            "text_encoder_params": sum(p.numel() for p in components["text_encoder"].parameters()),
        },
        "sample_prompts": base.holdout_captions[:n_show],
        "samples_image": "build_samples.png: rows = held-out base images, their VAE reconstructions, "
        f"base-model samples for their captions ({opts['sample_steps']} DDIM steps, "
        f"guidance {opts['guidance_scale']}, seed {seed})",
    }


def measurements(result: dict, base: BaseSet) -> dict:
    """The build's measured values (losses, reconstruction MSE, total variation, scaling factor)."""
    import numpy as np

    vae_losses, unet_losses = result["vae"]["losses"], result["unet"]["losses"]

    def tail(xs):  # mean of the last tenth of the losses
        return float(np.mean(xs[-max(1, len(xs) // 10) :])) if xs else None

    return {
        "holdout_reconstruction_mse": result["vae"]["holdout_reconstruction_mse"],
        "holdout_reconstruction_mse_random_vae": result["vae"]["holdout_reconstruction_mse_random_vae"],
        "vae_final_loss": tail(vae_losses),
        "unet_final_loss": tail(unet_losses),
        "unet_first_loss": float(np.mean(unet_losses[:10])) if unet_losses else None,
        "scaling_factor": result["vae"]["scaling_factor"],
        "total_variation_samples": total_variation(result["samples"]),
        "total_variation_base_images": total_variation(base.holdout),
        "pixel_range": "[-1, 1]",
    }


def _planted(seed: int, opts: dict):
    """The planted set of a build with ``planted > 0`` (else None)."""
    if int(opts.get("planted", 0)) <= 0:
        return None
    from diffrep.plantedmem import planted_set

    if int(opts["planted_controls"]) > int(opts["n_holdout"]):
        raise ValueError(
            f"mini_sd: planted_controls {opts['planted_controls']} exceeds n_holdout {opts['n_holdout']} "
            "(the held-out descriptions are the second control set)"
        )
    return planted_set(seed, int(opts["planted"]), int(opts["planted_controls"]), int(opts["resolution"]))


def build_mini_sd(out_dir: str | os.PathLike, seed: int, micro: bool = False, **options) -> Path:
    """Builder ``mini_sd``: the mini study's base model, pretrained on the base image set.

    Steps: draw the base image set (:func:`diffrep.minidata.base_images`, an RNG stream separate
    from the mini dataset's), build the random tiny pipeline (tokenizer trained on the mini
    captions' vocabulary), train the VAE on reconstruction, set ``scaling_factor`` to 1 / std of
    the base latents (as SD did), train the UNet (and text encoder) on text-to-image denoising,
    then sample from the result. Writes the pipeline, ``build_info.json`` (options, what was
    trained, sizes: no measured value), ``build_samples.png`` (rows: held-out base images, their
    reconstructions, base-model samples for their captions) and the hidden, unhashed
    ``.build_report.json`` (losses, reconstruction MSE of the trained and of the random VAE on
    held-out base images, total variation of samples vs data, durations, platform fingerprint).

    `options` override :data:`MINI_DEFAULTS`; ``micro: true`` applies :data:`MICRO_OVERRIDES`
    (a seconds-long build for tests). Same seed and options, same bytes on one machine and
    software stack, whatever the caller's thread count: the training runs with ``threads``.
    """
    from diffrep import minidata
    from diffrep.provenance import BUILD_REPORT_FILE, build_report, log_platform

    opts = mini_options(micro, options)
    t_start = time.time()
    base = base_set(seed, opts)
    corpus = minidata.caption_corpus(seed) + base.holdout_captions + base.train_captions
    components = make_components(
        corpus, seed, int(opts["resolution"]), prediction_type=str(opts["prediction_type"])
    )
    planted = _planted(seed, opts)
    result = _pretrain(components, base, opts, seed, planted)
    info = build_info(seed, micro, opts, components, base, len(corpus))
    if planted is not None:
        info["trained"]["planted"] = (
            f"{len(planted.captions)} planted pictures (diffrep.plantedmem), each under one nonsense caption, "
            f"in {opts['planted_fraction']} of every UNet batch and among the VAE's pictures; "
            f"memorization/prompts.csv lists them with {len(planted.unseen)} unseen nonsense and "
            f"{len(planted.unseen)} held-out description controls"
        )
    durations = {
        "vae": round(result["vae"]["seconds"], 1),
        "unet": round(result["unet"]["seconds"], 1),
        "total": round(time.time() - t_start, 1),
    }
    report = build_report(
        measurements(result, base), log_platform(log, result["platform"]), durations_s=durations
    )
    log.info("mini_sd: built in %s; measurements %s", report["durations_s"], json.dumps(report["metrics"]))
    with staged_dir(out_dir) as tmp:
        save_pipeline(components, tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        (tmp / BUILD_REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        _grid([base.holdout[: len(result["prompts"])], result["recon"], result["samples"]]).save(
            tmp / "build_samples.png", format="PNG"
        )
        if planted is not None:
            from diffrep.plantedmem import write_prompt_file

            write_prompt_file(tmp, planted, base.holdout_captions[: len(planted.unseen)])
    return Path(out_dir)
