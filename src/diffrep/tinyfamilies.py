"""Tiny SDXL- and SD3-format pipelines, built offline with seeded weights, for tests and the mini study.

Each is a real diffusers pipeline folder (``model_index.json`` naming the family's pipeline class,
safetensors weights, written with ``save_pretrained``) that loads with ``local_files_only=True``,
so the generation code of every family runs on a CPU in seconds:

- ``sdxl``: ``StableDiffusionXLPipeline`` — a UNet with ``addition_embed_type="text_time"`` (pooled
  text embedding + size/crop time ids), two CLIP text encoders (``CLIPTextModel`` and
  ``CLIPTextModelWithProjection``, whose projected pooled output feeds the UNet), two tokenizers,
  Euler scheduler (SDXL's own);
- ``sd3``: ``StableDiffusion3Pipeline`` — an ``SD3Transformer2DModel`` (MMDiT), two
  ``CLIPTextModelWithProjection`` encoders (pooled embeddings concatenated) and a T5 encoder with
  a unigram T5 tokenizer over the captions' words; or, with ``t5=False``, the documented subset
  without T5 (``text_encoder_3=None, tokenizer_3=None``: the pipeline then feeds zeros in the T5
  slots); ``FlowMatchEulerDiscreteScheduler`` with shift 3 (SD 3.5's);
- ``sd`` is :func:`diffrep.tinysd.build_tiny_pipeline`.

``distilled=True`` gives the Turbo variant of a UNet format: the same weights layout with the
Euler scheduler on ``trailing`` timesteps, as SD-Turbo and SDXL-Turbo ship it (their presets:
guidance 0, 1–4 steps). The SD3 format's Turbo (SD 3.5 Large Turbo) keeps the flow-matching
scheduler; only its presets differ.

The VAE, the first CLIP tokenizer and text-encoder sizes come from
:func:`diffrep.tinysd.make_components` (a CLIP-style BPE tokenizer trained on `captions`).
Same arguments, same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from diffrep.fileio import staged_dir
from diffrep.tinysd import build_tiny_pipeline, make_components

TINY_FAMILIES = ("sd", "sdxl", "sd3")
ADD_TIME_DIM = 8  # SDXL: embedding size of each of the 6 size/crop time ids


def _clip_config(tokenizer, hidden: int, max_length: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _seeded_model(seed: int, make):
    """``make()`` with torch's global RNG seeded (restored afterwards), in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval()


def turbo_scheduler():
    """SD-Turbo's / SDXL-Turbo's scheduler: Euler on trailing timesteps."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )


def sdxl_components(
    captions: Sequence[str],
    seed: int,
    resolution: int = 32,
    distilled: bool = False,
    hidden: int = 32,
    max_length: int = 32,
) -> dict:
    """The components of a tiny StableDiffusionXLPipeline (keyword arguments of its constructor)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    base = make_components(captions, seed, resolution, text_hidden=hidden, max_length=max_length)
    tokenizer = base["tokenizer"]
    text_encoder_2 = _seeded_model(
        seed + 3, lambda: CLIPTextModelWithProjection(_clip_config(tokenizer, hidden, max_length))
    )
    unet = _seeded_model(
        seed + 4,
        lambda: UNet2DConditionModel(
            sample_size=base["unet"].config.sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=ADD_TIME_DIM,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + hidden,  # time ids + pooled text
            cross_attention_dim=2 * hidden,  # both encoders' hidden states, concatenated
            norm_num_groups=32,
        ),
    )
    scheduler = (
        turbo_scheduler()
        if distilled
        else EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
        )
    )
    return dict(
        unet=unet,
        vae=base["vae"],
        text_encoder=base["text_encoder"],
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
    )


def t5_tokenizer(captions: Sequence[str]):
    """A T5TokenizerFast (unigram, one token per caption word, byte-free; ids <pad> 0, </s> 1, <unk> 2
    as T5's). Words outside the captions' become ``<unk>``; it appends ``</s>`` like T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({w for c in captions for w in c.lower().split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def t5_components(captions: Sequence[str], seed: int, d_model: int) -> tuple:
    """A tiny T5 encoder and a T5 tokenizer (unigram, one token per caption word, byte-free).

    Words outside the captions' become ``<unk>``; the tokenizer appends ``</s>`` like T5's.
    """
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer(captions)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=4,
        decoder_start_token_id=0,
    )
    return _seeded_model(seed, lambda: T5EncoderModel(config)), tokenizer


def sd3_components(
    captions: Sequence[str],
    seed: int,
    resolution: int = 32,
    hidden: int = 32,
    max_length: int = 32,
    t5: bool = True,
) -> dict:
    """The components of a tiny StableDiffusion3Pipeline: two CLIP encoders and T5, or without T5
    (``t5=False``: the documented subset, ``text_encoder_3=None, tokenizer_3=None``)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    base = make_components(captions, seed, resolution, text_hidden=hidden, max_length=max_length)
    tokenizer = base["tokenizer"]
    encoders = [
        _seeded_model(
            seed + k, lambda: CLIPTextModelWithProjection(_clip_config(tokenizer, hidden, max_length))
        )
        for k in (2, 3)
    ]
    vae_config = {k: v for k, v in base["vae"].config.items() if not k.startswith("_")}
    vae_config.update(shift_factor=0.0, use_quant_conv=False, use_post_quant_conv=False)
    vae = _seeded_model(seed + 1, lambda: AutoencoderKL.from_config(vae_config))
    transformer = _seeded_model(
        seed + 4,
        lambda: SD3Transformer2DModel(
            sample_size=base["unet"].config.sample_size,
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=2 * hidden,  # the two CLIP encoders' hidden states, concatenated
            caption_projection_dim=32,
            pooled_projection_dim=2 * hidden,  # both pooled embeddings, concatenated
            pos_embed_max_size=32,
        ),
    )
    # T5's width is the transformer's joint attention width (the CLIP states are zero-padded to it)
    text_encoder_3, tokenizer_3 = t5_components(captions, seed + 5, 2 * hidden) if t5 else (None, None)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        text_encoder_3=text_encoder_3,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
    )


def assemble(family: str, components: dict):
    """The family's diffusers pipeline object from its components."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        return StableDiffusionXLPipeline(**components, add_watermarker=False)
    if family == "sd3":
        return StableDiffusion3Pipeline(**components)
    raise ValueError(f"assemble: family {family!r}; allowed: sdxl, sd3")


def build_tiny_family(
    out_dir: str | os.PathLike,
    family: str,
    captions: list[str],
    seed: int = 0,
    resolution: int = 32,
    distilled: bool = False,
    t5: bool = True,
) -> Path:
    """Write a random-weight tiny pipeline of `family` (sd, sdxl, sd3) to `out_dir`; return its path.

    `distilled` builds the Turbo variant (see the module docstring); `t5=False` leaves T5 out of
    an sd3 pipeline. Loads with the family's pipeline class (``from_pretrained(out_dir,
    local_files_only=True)``, with ``text_encoder_3=None, tokenizer_3=None`` when T5 is left out);
    safetensors only.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"build_tiny_family: family {family!r}; allowed: {', '.join(TINY_FAMILIES)}")
    if family == "sd":
        if not distilled:
            return build_tiny_pipeline(out_dir, list(captions), seed=seed, resolution=resolution)
        components = make_components(captions, seed, resolution)
        components["scheduler"] = turbo_scheduler()
        from diffrep.tinysd import save_pipeline

        with staged_dir(out_dir) as tmp:
            save_pipeline(components, tmp)
        return Path(out_dir)
    if family == "sdxl":
        pipe = assemble("sdxl", sdxl_components(captions, seed, resolution, distilled=distilled))
    else:
        pipe = assemble("sd3", sd3_components(captions, seed, resolution, t5=t5))
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        stray = [p for p in tmp.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if stray:
            raise RuntimeError(f"save_pretrained wrote pickle files: {stray}")
    return Path(out_dir)


def build_tiny_family_model(
    out_dir: str | os.PathLike, seed: int, family: str = "sdxl", distilled: bool = False, resolution: int = 32
) -> Path:
    """Builder ``tiny_family``: a tiny pipeline of `family` whose tokenizer knows the mini captions."""
    from diffrep import minidata

    return build_tiny_family(out_dir, family, minidata.caption_corpus(seed), seed, resolution, distilled)
