"""Every family's pipeline through one code path: load it, encode its prompts, perturb the embeddings.

Generation (:mod:`diffrep.generation`) uses three functions, the same for every family of
:mod:`diffrep.families`: :func:`load_pipeline`, :func:`encode_prompts` (the family's
``encode_prompt``, returning the embeddings as the pipeline's keyword arguments, pooled ones
included) and :func:`noisy_embeddings` (the gaussnoise inference mitigation on every embedding
tensor).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffrep.families import FAMILIES, family_of
from diffrep.mitigations import add_embedding_noise


def weight_variant(model_dir) -> str | None:
    """``fp16`` when the folder's denoiser ships only ``*.fp16.safetensors`` weights (a variant fetch)."""
    model_dir = Path(model_dir)
    for comp in ("unet", "transformer"):
        files = [p.name for p in (model_dir / comp).glob("*.safetensors")]
        if files:
            return "fp16" if all(".fp16." in f for f in files) else None
    return None


def load_pipeline(model_dir, device: str, dtype, family: str | None = None):
    """The model folder's pipeline (its family's class), safetensors only, offline, on `device`.

    Components that ``model_index.json`` lists as absent (``[null, null]``, e.g. SD3 without T5)
    are passed as None, as diffusers documents for ``text_encoder_3=None, tokenizer_3=None``.
    """
    import diffusers

    family = family or family_of(model_dir)
    fam = FAMILIES[family]
    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
    kwargs = {**absent, **dict(fam.load_kwargs)}
    variant = weight_variant(model_dir)
    if variant:
        kwargs["variant"] = variant
    pipe = (
        getattr(diffusers, fam.pipeline)
        .from_pretrained(model_dir, local_files_only=True, use_safetensors=True, dtype=dtype, **kwargs)
        .to(device)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_prompts(pipe, family: str, prompts: list[str], device, do_cfg: bool, negative: str | None) -> dict:
    """The prompt embeddings as the pipeline's keyword arguments (pooled ones for sdxl and sd3).

    Keys: prompt_embeds, negative_prompt_embeds (None without CFG) and, for sdxl / sd3,
    pooled_prompt_embeds, negative_pooled_prompt_embeds.
    """
    neg = [negative] * len(prompts) if negative else None
    if family == "sd":
        pe, ne = pipe.encode_prompt(prompts, device, 1, do_cfg, negative_prompt=neg)
        return {"prompt_embeds": pe, "negative_prompt_embeds": ne if do_cfg else None}
    kwargs = dict(
        prompt=prompts,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=do_cfg,
        negative_prompt=neg,
    )
    if family == "sd3":
        kwargs.update(prompt_2=None, prompt_3=None)
    elif family != "sdxl":
        raise ValueError(f"encode_prompts: family {family!r}; allowed: {', '.join(FAMILIES)}")
    pe, ne, ppe, npe = pipe.encode_prompt(**kwargs)
    return {
        "prompt_embeds": pe,
        "negative_prompt_embeds": ne if do_cfg else None,
        "pooled_prompt_embeds": ppe,
        "negative_pooled_prompt_embeds": npe if do_cfg else None,
    }


EMBEDDING_ORDER = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def noisy_embeddings(embeds: dict, lam: float, generators: list) -> dict:
    """gaussnoise: ``λ·N(0, 1)`` added to every embedding tensor (both CFG halves, pooled included).

    Tensors are perturbed in :data:`EMBEDDING_ORDER`, each row drawing from its own generator
    (one per image), so an image's noise depends only on its own seed.
    """
    out = dict(embeds)
    for key in EMBEDDING_ORDER:
        if out.get(key) is not None:
            hidden = out[key]
            flat = hidden.ndim == 2  # pooled: batch x dim
            noisy = add_embedding_noise(hidden[:, None] if flat else hidden, lam, generators)
            out[key] = noisy[:, 0] if flat else noisy
    return out
