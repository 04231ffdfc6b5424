"""Full-size architectures with seeded random weights, in the folder layouts the hubs serve.

The rehearsal study runs the paper's rules on the paper's real architectures (no hub, no GPU): each
builder here writes one model folder with random weights, exactly as the paper study's loaders
read it:

- ``rehearsal_sd`` (variant ``sd21`` | ``sd21_base`` | ``sd14``): a diffusers StableDiffusionPipeline
  folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``, ``feature_extractor/``; safetensors), with the published UNet / VAE / text-encoder
  / scheduler configurations (:data:`SD_MODELS`);
- ``rehearsal_sd3`` (variant ``sd35_medium``): a diffusers StableDiffusion3Pipeline folder with SD 3.5
  Medium's published configurations (:data:`SD3_MODELS`), generation only, with T5-XXL's encoder
  in bf16 (``t5: true``, the rehearsal's) or without it;
- ``rehearsal_sscd`` (variant ``disc_large`` | ``disc_mixup``): an SSCD TorchScript file
  (``sscd_<variant>.torchscript.pt``): a ResNeXt-101 32x4d / ResNet-50 trunk, GeM pooling
  (p = 3), a linear projection to 1024 / 512 dimensions and L2 normalisation, as the SSCD
  repository's ``sscd/models/model.py`` (``Model`` with a Classy Vision backbone) defines it;
- ``rehearsal_clip``: a transformers CLIPModel folder with the configuration of
  openai/clip-vit-large-patch14 and a CLIPProcessor;
- ``rehearsal_blip``: a transformers BlipForConditionalGeneration folder with the configuration of
  Salesforce/blip-image-captioning-base and a BlipProcessor.

What differs from the released folders, because the real files cannot be had offline: the
weights (seeded random), the tokenizers (the CLIP-style BPE of :mod:`diffrep.tinysd` trained on the
mini captions, in CLIP's vocabulary layout, where the real 49,408-token vocabulary is not at hand;
the text encoders keep the published ``vocab_size``, so their parameter counts are the released
ones; BLIP gets a WordPiece vocabulary of the published size with BERT's special-token ids), and
no safety checker in SD 1.4 (``[null, null]``, as the paper study loads it).

Every builder takes ``width_scale`` (default 1: the released size). Below 1 the channel and hidden
widths shrink (depths, block types, attention layout, prediction type stay), so the tests build
the same code in seconds. :func:`parameter_counts` counts the parameters of any of them on the meta
device, without allocating a byte of weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from pathlib import Path

from diffrep.fileio import staged_dir

# --------------------------------------------------------------------------------------------
# The published configurations (the fields that define the architecture; the rest are defaults)
# --------------------------------------------------------------------------------------------

# stabilityai/stable-diffusion-2-1, unet/config.json (768-v). SD 2.1-base differs in sample_size (64)
# and upcast_attention (false). attention_head_dim is, in diffusers' naming, the head *count*.
_SD2_UNET = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
}
# CompVis/stable-diffusion-v1-4, unet/config.json
_SD1_UNET = {
    **_SD2_UNET,
    "sample_size": 64,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "use_linear_projection": False,
    "upcast_attention": False,
}
# vae/config.json of all three (sample_size 768 for SD 2.1, 512 for the others)
_SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# stabilityai/stable-diffusion-2-1, text_encoder/config.json: OpenCLIP ViT-H/14's text tower as a
# CLIPTextModel (24 layers trained, the penultimate layer used: 23 kept).
_OPENCLIP_H_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# CompVis/stable-diffusion-v1-4, text_encoder/config.json = openai/clip-vit-large-patch14's text tower
_CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
SD_MODELS = {
    # stabilityai/stable-diffusion-2-1 (768-v): scheduler/scheduler_config.json is DDIM, v_prediction;
    # tokenizer pads with "!" (OpenCLIP's convention)
    "sd21": {
        "unet": _SD2_UNET,
        "vae": {**_SD_VAE, "sample_size": 768},
        "text_encoder": _OPENCLIP_H_TEXT,
        "pad_token": "!",
        "scheduler": ("DDIMScheduler", {**_SCHEDULER, "prediction_type": "v_prediction"}),
    },
    # stabilityai/stable-diffusion-2-1-base (512, epsilon): PNDM scheduler
    "sd21_base": {
        "unet": {**_SD2_UNET, "sample_size": 64, "upcast_attention": False},
        "vae": _SD_VAE,
        "text_encoder": _OPENCLIP_H_TEXT,
        "pad_token": "!",
        "scheduler": ("PNDMScheduler", {**_SCHEDULER, "prediction_type": "epsilon"}),
    },
    # CompVis/stable-diffusion-v1-4 (512, epsilon): PNDM scheduler, CLIP ViT-L/14 text encoder
    "sd14": {
        "unet": _SD1_UNET,
        "vae": _SD_VAE,
        "text_encoder": _CLIP_L_TEXT,
        "pad_token": "<|endoftext|>",
        "scheduler": ("PNDMScheduler", {**_SCHEDULER, "prediction_type": "epsilon"}),
    },
}
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json: the cross-attention context is both text
# encoders' hidden states concatenated (768 + 1280), the added embedding 6 size/crop time ids of 256
# plus the pooled, projected OpenCLIP-bigG embedding (6 * 256 + 1280 = 2816)
_SDXL_UNET = {
    **_SD2_UNET,
    "sample_size": 128,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "upcast_attention": False,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# stabilityai/stable-diffusion-xl-base-1.0, text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text
# tower as a CLIPTextModelWithProjection
_OPENCLIP_BIGG_TEXT = {
    **_OPENCLIP_H_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
}
# stabilityai/stable-diffusion-xl-base-1.0 (1024, epsilon): Euler scheduler, VAE scaling_factor 0.13025;
# generation only in the paper study (its sampler comparison)
SD_MODELS["sdxl"] = {
    "unet": _SDXL_UNET,
    "vae": {**_SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025},
    "text_encoder": _CLIP_L_TEXT,
    "text_encoder_2": _OPENCLIP_BIGG_TEXT,
    "pad_token": "<|endoftext|>",
    "pad_token_2": "!",
    "scheduler": ("EulerDiscreteScheduler", {**_SCHEDULER, "prediction_type": "epsilon"}),
}
# stabilityai/stable-diffusion-3.5-medium (1024, flow matching; generation only): transformer/config.json
# (SD3Transformer2DModel, MMDiT-X: dual attention in the first 13 blocks, RMS-normed queries and keys),
# vae/config.json (16 latent channels, no quant convs, scaling 1.5305, shift 0.0609), the two CLIP
# text encoders with projection (text_encoder/ = CLIP ViT-L/14's, text_encoder_2/ = OpenCLIP-bigG's)
# and text_encoder_3/ = T5 v1.1 XXL's encoder; scheduler/ FlowMatchEulerDiscreteScheduler, shift 3.
_SD35_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's width; the CLIP states are zero-padded to it
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,  # CLIP-L's 768 + bigG's 1280 pooled projections
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}
_SD3_VAE = {
    **_SD_VAE,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
_T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}
SD3_MODELS = {
    "sd35_medium": {
        "transformer": _SD35_TRANSFORMER,
        "vae": _SD3_VAE,
        "text_encoder": _CLIP_L_TEXT,
        "text_encoder_2": _OPENCLIP_BIGG_TEXT,
        "text_encoder_3": _T5_XXL,
        "pad_token": "<|endoftext|>",
        "pad_token_2": "!",
        "scheduler": ("FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": 3.0}),
    },
}
# openai/clip-vit-large-patch14, config.json (and preprocessor_config.json: 224 px, OpenAI mean/std)
CLIP_VIT_L14 = {
    "text_config": _CLIP_L_TEXT,
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    },
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
}
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Salesforce/blip-image-captioning-base, config.json (and preprocessor_config.json: 384 px, OpenAI
# CLIP mean/std); tokenizer: bert-base-uncased's 30,522 WordPiece tokens + [DEC] (30522) and [ENC]
BLIP_BASE = {
    "text_config": {
        "vocab_size": 30524,
        "hidden_size": 768,
        "encoder_hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "projection_dim": 768,
        "bos_token_id": 30522,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "sep_token_id": 102,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 384,
        "patch_size": 16,
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
    },
    "projection_dim": 512,
    "image_text_hidden_size": 256,
    "logit_scale_init_value": 2.6592,
}
# facebookresearch/sscd-copy-detection, sscd/models/model.py and README: both released models use a
# Classy Vision backbone (CV_RESNEXT101 = resnext101_32x4d, CV_RESNET50), GlobalGeMPool2d(3),
# Linear(2048, dims), L2Norm.
SSCD_MODELS = {
    "disc_large": {
        "layers": [3, 4, 23, 3],
        "groups": 32,
        "width_per_group": 4,
        "dims": 1024,
        "pool_param": 3.0,
    },
    "disc_mixup": {
        "layers": [3, 4, 6, 3],
        "groups": 1,
        "width_per_group": 64,
        "dims": 512,
        "pool_param": 3.0,
    },
}


# --------------------------------------------------------------------------------------------
# Reduced widths
# --------------------------------------------------------------------------------------------


def _check_scale(width_scale: float) -> float:
    s = float(width_scale)
    if not 0 < s <= 1:
        raise ValueError(f"width_scale must be in (0, 1], got {width_scale!r}")
    return s


def scaled(n: int, s: float, multiple: int = 1) -> int:
    """``n * s`` rounded to a positive multiple of `multiple`; `n` itself when ``s == 1``."""
    if s == 1:
        return n
    return max(multiple, round(n * s / multiple) * multiple)


def _heads(heads: int, width: int, s: float) -> int:
    """A head count for `width` near ``heads * s`` that divides it."""
    return heads if s == 1 else math.gcd(max(1, round(heads * s)), width)


def scale_unet(cfg: dict, s: float, cross_attention_dim: int) -> dict:
    cfg = copy.deepcopy(cfg)
    groups = cfg["norm_num_groups"]
    channels = [scaled(c, s, groups) for c in cfg["block_out_channels"]]
    heads = cfg["attention_head_dim"]
    if isinstance(heads, list):
        heads = [_heads(h, c, s) for h, c in zip(heads, channels)]
    else:
        heads = _heads(heads, math.gcd(*channels), s)
    return {
        **cfg,
        "block_out_channels": channels,
        "attention_head_dim": heads,
        "cross_attention_dim": cross_attention_dim,
    }


def scale_vae(cfg: dict, s: float) -> dict:
    groups = cfg["norm_num_groups"]
    return {
        **copy.deepcopy(cfg),
        "block_out_channels": [scaled(c, s, groups) for c in cfg["block_out_channels"]],
    }


def scale_transformer(cfg: dict, s: float) -> dict:
    """A text or vision tower's config at width ``s``: hidden, intermediate and projection sizes
    shrink (the hidden size to a multiple of 8 and of the head count); layers, vocabulary and positions stay."""
    if s == 1:
        return dict(cfg)
    heads = max(1, round(cfg["num_attention_heads"] * s))
    hidden = scaled(cfg["hidden_size"], s, math.lcm(heads, 8))
    out = {**cfg, "hidden_size": hidden, "num_attention_heads": heads}
    out["intermediate_size"] = hidden * cfg["intermediate_size"] // cfg["hidden_size"]
    for key in ("projection_dim", "encoder_hidden_size"):
        if key in cfg:
            out[key] = scaled(cfg[key], s, 8)
    return out


def sd_configs(variant: str, width_scale: float = 1.0) -> dict:
    """The unet / vae / text_encoder (/ text_encoder_2 for SDXL) configs of an SD `variant` at
    `width_scale`. The UNet's cross-attention width follows the text encoders' (SDXL: both, and its
    added embedding takes the pooled projection of the second)."""
    if variant not in SD_MODELS:
        raise ValueError(f"rehearsal_sd: unknown variant {variant!r}; known: {', '.join(SD_MODELS)}")
    s = _check_scale(width_scale)
    spec = SD_MODELS[variant]
    texts = {k: scale_transformer(spec[k], s) for k in ("text_encoder", "text_encoder_2") if k in spec}
    unet = scale_unet(spec["unet"], s, sum(t["hidden_size"] for t in texts.values()))
    if "addition_time_embed_dim" in unet:
        unet["addition_time_embed_dim"] = scaled(unet["addition_time_embed_dim"], s, 8)
        pooled = texts["text_encoder_2"]["projection_dim"]
        unet["projection_class_embeddings_input_dim"] = 6 * unet["addition_time_embed_dim"] + pooled
    return {"unet": unet, "vae": scale_vae(spec["vae"], s), **texts}


def sd3_configs(variant: str = "sd35_medium", width_scale: float = 1.0) -> dict:
    """The transformer / vae / text_encoder / text_encoder_2 / text_encoder_3 (T5) configs of an SD 3.x
    `variant` at `width_scale`. Heads shrink with the width, each keeping its published size; the
    transformer's joint attention width follows T5's and its pooled input the two CLIP projections."""
    if variant not in SD3_MODELS:
        raise ValueError(f"rehearsal_sd3: unknown variant {variant!r}; known: {', '.join(SD3_MODELS)}")
    s = _check_scale(width_scale)
    spec = SD3_MODELS[variant]
    texts = {k: scale_transformer(spec[k], s) for k in ("text_encoder", "text_encoder_2")}
    t5, tr = dict(spec["text_encoder_3"]), dict(spec["transformer"])
    if s != 1:
        t5.update(
            d_model=scaled(t5["d_model"], s, 8),
            d_ff=scaled(t5["d_ff"], s, 8),
            num_heads=max(1, round(t5["num_heads"] * s)),
        )
        tr["num_attention_heads"] = max(1, round(tr["num_attention_heads"] * s))
    tr.update(
        caption_projection_dim=tr["num_attention_heads"] * tr["attention_head_dim"],
        joint_attention_dim=t5["d_model"],
        pooled_projection_dim=sum(t["projection_dim"] for t in texts.values()),
    )
    if sum(t["hidden_size"] for t in texts.values()) > t5["d_model"]:  # the pipeline pads CLIP to T5
        raise ValueError(f"rehearsal_sd3: width_scale {width_scale} makes T5 narrower than the CLIP states")
    return {"transformer": tr, "vae": scale_vae(spec["vae"], s), **texts, "text_encoder_3": t5}


def clip_config(base: dict, width_scale: float = 1.0) -> dict:
    """CLIP ViT-L/14's or BLIP base's config at `width_scale` (the text tower attends to the vision
    tower's width in BLIP: ``encoder_hidden_size`` follows it)."""
    s = _check_scale(width_scale)
    vision = scale_transformer(base["vision_config"], s)
    text = scale_transformer(base["text_config"], s)
    if "encoder_hidden_size" in text:
        text["encoder_hidden_size"] = vision["hidden_size"]
    out = {**base, "text_config": text, "vision_config": vision}
    out["projection_dim"] = scaled(base["projection_dim"], s, 8)
    if "image_text_hidden_size" in base:
        out["image_text_hidden_size"] = scaled(base["image_text_hidden_size"], s, 8)
    return out


# --------------------------------------------------------------------------------------------
# Modules (on any device: "meta" for counting)
# --------------------------------------------------------------------------------------------


def sd_modules(variant: str, width_scale: float = 1.0) -> dict:
    """``{"unet", "vae", "text_encoder"[, "text_encoder_2"]}`` modules of an SD variant, initialised
    on torch's current default device (wrap in ``torch.device("meta")`` to count without allocating)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfgs = sd_configs(variant, width_scale)
    modules = {
        "unet": UNet2DConditionModel(**cfgs["unet"]),
        "vae": AutoencoderKL(**cfgs["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfgs["text_encoder"])),
    }
    if "text_encoder_2" in cfgs:
        modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["text_encoder_2"]))
    return modules


def sd3_modules(variant: str = "sd35_medium", width_scale: float = 1.0, t5: bool = True) -> dict:
    """``{"transformer", "vae", "text_encoder", "text_encoder_2"[, "text_encoder_3"]}`` of an SD 3.x
    variant on torch's current default device; ``t5=False`` leaves T5 out."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfgs = sd3_configs(variant, width_scale)
    modules = {
        "transformer": SD3Transformer2DModel(**cfgs["transformer"]),
        "vae": AutoencoderKL(**cfgs["vae"]),
        "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["text_encoder"])),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cfgs["text_encoder_2"])),
    }
    if t5:
        modules["text_encoder_3"] = T5EncoderModel(T5Config(**cfgs["text_encoder_3"]))
    return modules


def clip_module(width_scale: float = 1.0):
    from transformers import CLIPConfig, CLIPModel

    cfg = clip_config(CLIP_VIT_L14, width_scale)
    return CLIPModel(CLIPConfig(**cfg))


def blip_module(width_scale: float = 1.0):
    from transformers import BlipConfig, BlipForConditionalGeneration

    return BlipForConditionalGeneration(BlipConfig(**clip_config(BLIP_BASE, width_scale)))


def sscd_module(variant: str, width_scale: float = 1.0):
    """The SSCD network of `variant` (:mod:`diffrep.sscdnet`).

    At ``width_scale`` s < 1 the trunk's stem and stage widths shrink by s (the group count too,
    each group keeping its width); the projection keeps its published output size.
    """
    from diffrep.sscdnet import SSCDNet, resnet_trunk

    if variant not in SSCD_MODELS:
        raise ValueError(f"rehearsal_sscd: unknown variant {variant!r}; known: {', '.join(SSCD_MODELS)}")
    spec, s = SSCD_MODELS[variant], _check_scale(width_scale)
    base = scaled(64, s, 8)
    groups = max(1, round(spec["groups"] * s))
    per_group = spec["width_per_group"] * spec["groups"] // groups  # torchvision: base_width per 64 planes
    trunk, features = resnet_trunk(spec["layers"], groups, per_group, base)
    return SSCDNet(trunk, features, spec["dims"], spec["pool_param"])


def count(module) -> dict:
    """``{"parameters": all, "trainable": requires_grad}`` of a module."""
    params = list(module.parameters())
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def parameter_counts(width_scale: float = 1.0) -> dict:
    """Parameter counts of every rehearsal architecture at `width_scale`, built on the meta device
    (no weights allocated): ``{"sd21": {"unet": {...}, ...}, "sscd_disc_large": {...}, ...}``."""
    import torch

    out: dict = {}
    with torch.device("meta"):
        for variant in SD_MODELS:
            out[variant] = {k: count(m) for k, m in sd_modules(variant, width_scale).items()}
        for variant in SD3_MODELS:
            out[variant] = {k: count(m) for k, m in sd3_modules(variant, width_scale).items()}
        for variant in SSCD_MODELS:
            out[f"sscd_{variant}"] = count(sscd_module(variant, width_scale))
        out["clip_vit_l14"] = count(clip_module(width_scale))
        out["blip_base"] = count(blip_module(width_scale))
    return out


# --------------------------------------------------------------------------------------------
# Tokenizers and processors
# --------------------------------------------------------------------------------------------


def clip_tokenizer(seed: int, pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer (77 positions) whose BPE is trained on the mini captions (the real CLIP
    vocabulary is not available offline); any text still encodes, byte by byte."""
    from transformers import CLIPTokenizer

    from diffrep import minidata
    from diffrep.tinysd import train_bpe

    vocab, merges = train_bpe(minidata.caption_corpus(seed))
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77, pad_token=pad_token)


def blip_vocabulary(seed: int, size: int = 30524) -> list[str]:
    """A WordPiece vocabulary of `size` tokens with bert-base-uncased's special-token ids ([PAD] 0,
    [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103) and BLIP's [DEC] / [ENC] as the last two: the
    mini captions' words, then filler words, so that a random decoder's samples decode to text."""
    from diffrep import minidata
    from diffrep.tinysd import _words

    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(tokens)
    for word in sorted({w for c in minidata.caption_corpus(seed) for w in _words(c)}):
        if word not in seen and not word.startswith("[") and len(tokens) < size - 2:
            tokens.append(word)
            seen.add(word)
    tokens += [f"w{i:05d}" for i in range(size - 2 - len(tokens))]
    return tokens + ["[DEC]", "[ENC]"]


def blip_processor(seed: int, tmp: Path, image_size: int):
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(blip_vocabulary(seed)) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    vocab.unlink()
    images = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    return BlipProcessor(image_processor=images, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seed(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _default_dtype(dtype):
    """Modules built inside are created in `dtype` (torch's default floating dtype, restored after)."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _info(builder: str, seed: int, options: dict, counts: dict, source: str) -> str:
    info = {
        "builder": builder,
        "seed": seed,
        "options": options,
        "weights": "seeded random (torch.manual_seed); architecture only, nothing trained",
        "configuration_of": source,
        "parameters": counts,
    }
    return json.dumps(info, indent=1, sort_keys=True) + "\n"


def _no_pickles(folder: Path) -> None:
    stray = [p for p in folder.rglob("*") if p.suffix in (".bin", ".pkl", ".pth")]
    if stray:
        raise RuntimeError(f"save_pretrained wrote pickle files: {stray}")


def _sd_pipeline(variant: str, seed: int, modules: dict):
    """The diffusers pipeline object of an SD variant (StableDiffusionPipeline, or the XL one)."""
    import diffusers
    from transformers import CLIPImageProcessor

    spec = SD_MODELS[variant]
    cls, sched_cfg = spec["scheduler"]
    parts = {
        **{k: m.eval() for k, m in modules.items()},
        "tokenizer": clip_tokenizer(seed, spec["pad_token"]),
        "scheduler": getattr(diffusers, cls).from_config(sched_cfg),  # drops keys the class ignores
    }
    if "text_encoder_2" in modules:
        parts["tokenizer_2"] = clip_tokenizer(seed, spec["pad_token_2"])
        return diffusers.StableDiffusionXLPipeline(**parts, add_watermarker=False)
    return diffusers.StableDiffusionPipeline(
        **parts,
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
        requires_safety_checker=False,
    )


def build_rehearsal_sd(
    out_dir: str | os.PathLike, seed: int, variant: str = "sd21", width_scale: float = 1.0
) -> Path:
    """Builder ``rehearsal_sd``: an SD pipeline folder with the published configuration of `variant`
    (sd21, sd21_base, sd14, sdxl)."""
    with _seed(seed):
        modules = sd_modules(variant, width_scale)
    pipe = _sd_pipeline(variant, seed, modules)
    counts = {k: count(m) for k, m in modules.items()}
    options = {"variant": variant, "width_scale": width_scale}
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _no_pickles(tmp)
        (tmp / "build_info.json").write_text(_info("rehearsal_sd", seed, options, counts, variant))
    return Path(out_dir)


def build_rehearsal_sd3(
    out_dir: str | os.PathLike,
    seed: int,
    variant: str = "sd35_medium",
    width_scale: float = 1.0,
    t5: bool = False,
) -> Path:
    """Builder ``rehearsal_sd3``: a StableDiffusion3Pipeline folder with the published configuration of
    `variant` (sd35_medium).

    ``t5=False``: without T5-XXL, ``text_encoder_3`` and ``tokenizer_3`` listed as absent
    (``[null, null]``), the subset diffusers documents (the pipeline then gives the transformer zeros
    in T5's place); T5-XXL's 4.76 G parameters are counted by :func:`parameter_counts`, not built.
    ``t5=True``: with T5 v1.1 XXL's encoder and a T5 tokenizer (unigram over the mini captions' words:
    T5's vocabulary is not available offline), all weights in bf16, as the hub ships SD 3.5 Medium in
    16 bits (in fp32 the folder would hold 29 GB and the build would not fit in 24 GiB).
    """
    import diffusers
    import torch

    from diffrep import minidata
    from diffrep.tinyfamilies import t5_tokenizer

    dtype = torch.bfloat16 if t5 else torch.float32
    with _seed(seed), _default_dtype(dtype):
        modules = sd3_modules(variant, width_scale, t5=t5)
    spec = SD3_MODELS[variant]
    cls, sched_cfg = spec["scheduler"]
    pipe = diffusers.StableDiffusion3Pipeline(
        **{k: m.eval() for k, m in modules.items()},
        tokenizer=clip_tokenizer(seed, spec["pad_token"]),
        tokenizer_2=clip_tokenizer(seed, spec["pad_token_2"]),
        **({} if t5 else {"text_encoder_3": None}),
        tokenizer_3=t5_tokenizer(minidata.caption_corpus(seed)) if t5 else None,
        scheduler=getattr(diffusers, cls).from_config(sched_cfg),
    )
    counts = {k: count(m) for k, m in modules.items()}
    options = {"variant": variant, "width_scale": width_scale, "t5": t5}
    source = f"{variant} (bf16 weights)" if t5 else f"{variant} without text_encoder_3 (T5-XXL)"
    with staged_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _no_pickles(tmp)
        (tmp / "build_info.json").write_text(_info("rehearsal_sd3", seed, options, counts, source))
    return Path(out_dir)


def build_rehearsal_sscd(
    out_dir: str | os.PathLike, seed: int, variant: str = "disc_large", width_scale: float = 1.0
) -> Path:
    """Builder ``rehearsal_sscd``: ``sscd_<variant>.torchscript.pt`` (torch.jit.script of the network)."""
    import torch

    with _seed(seed):
        net = sscd_module(variant, width_scale).eval()
    scripted = torch.jit.script(net)
    options = {"variant": variant, "width_scale": width_scale}
    with staged_dir(out_dir) as tmp:
        torch.jit.save(scripted, str(tmp / f"sscd_{variant}.torchscript.pt"))
        (tmp / "build_info.json").write_text(
            _info(
                "rehearsal_sscd", seed, options, count(net), "facebookresearch/sscd-copy-detection " + variant
            )
        )
    return Path(out_dir)


def _write_transformers(
    out_dir, builder: str, seed: int, width_scale: float, model, make_processor, source: str
):
    """Save a transformers model and the processor ``make_processor(tmp)`` returns into `out_dir`."""
    with staged_dir(out_dir) as tmp:
        processor = make_processor(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        _no_pickles(tmp)
        info = _info(builder, seed, {"width_scale": width_scale}, count(model), source)
        (tmp / "build_info.json").write_text(info)
    return Path(out_dir)


def build_rehearsal_clip(out_dir: str | os.PathLike, seed: int, width_scale: float = 1.0) -> Path:
    """Builder ``rehearsal_clip``: a CLIPModel + CLIPProcessor folder (openai/clip-vit-large-patch14's config)."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    with _seed(seed):
        model = clip_module(width_scale).eval()
    images = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size=224, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    processor = CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer(seed))
    return _write_transformers(
        out_dir,
        "rehearsal_clip",
        seed,
        width_scale,
        model,
        lambda _tmp: processor,
        "openai/clip-vit-large-patch14",
    )


def build_rehearsal_blip(out_dir: str | os.PathLike, seed: int, width_scale: float = 1.0) -> Path:
    """Builder ``rehearsal_blip``: a BlipForConditionalGeneration + BlipProcessor folder
    (Salesforce/blip-image-captioning-base's config)."""
    with _seed(seed):
        model = blip_module(width_scale).eval()
    size = model.config.vision_config.image_size
    return _write_transformers(
        out_dir,
        "rehearsal_blip",
        seed,
        width_scale,
        model,
        lambda tmp: blip_processor(seed, tmp, size),
        "Salesforce/blip-image-captioning-base",
    )
