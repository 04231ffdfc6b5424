"""LLM caption variants: a small instruction model writes N faithful rewordings of each caption.

A caption source beside BLIP (Somepalli et al., NeurIPS'23: generalised or diversified training
captions reduce replication). The rule ``llm_captions`` runs once per dataset with
``datasets.<ds>.llm_captions: true``: for every image, the instruction model of ``captions.llm.model``
(a transformers causal LM folder, e.g. google/gemma-3-1b-it, kind ``llm``) is asked to reword the
image's caption [0] (:data:`INSTRUCTION`, through the tokenizer's chat template when it has one)
and samples ``n_variants`` answers. Each answer is cleaned (:func:`clean_variant`: its first
non-empty line, without list markers, quotes or a ``Caption:`` prefix).

Seeded per image: torch's RNG is seeded with ``derive_seed(seed, "llm", image_id)`` before the
image's answers are sampled, so an image's variants depend on its id, caption and the settings,
never on which images came before. The file is ``captions/llm.parquet`` with columns ``id``,
``caption`` (the caption that was reworded) and ``captions`` (the ``n_variants`` variants), the
format of ``blip.parquet`` plus ``caption``. :func:`read_llm_captions` checks it.

The instancelevel_blip caption file puts the variants right after caption [0] (diffrep.captions),
so that conditioning and the ``allcaps`` mitigation (a random caption of the image per step) use
them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from diffrep.config import derive_seed
from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Rewrite this image caption in other words. Keep every fact it states (objects, colours, "
    "numbers, positions, style) and add none. Answer with the new caption only.\n\nCaption: {caption}"
)
DEFAULTS = {"n_variants": 10, "max_new_tokens": 48, "temperature": 0.8, "top_p": 0.95, "instruction": None}
_MARKER = re.compile(r"^(?:\d+[.):]\s*|[-*•]\s*|caption:\s*|new caption:\s*)+", re.IGNORECASE)


class LLMCaptionError(ValueError):
    """LLM captions that cannot be made or read; the message names the file, image or setting."""


def load_llm(model_dir, device: str = "cpu"):
    """(tokenizer, model) of a transformers causal-LM folder: offline, safetensors only, eval mode, on
    `device` (bf16 on a GPU, float32 on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise LLMCaptionError(f"{model_dir}: no config.json; not a transformers model folder (kind llm)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype
    )
    return tokenizer, model.to(device).eval()


def build_prompt(tokenizer, caption: str, instruction: str | None = None) -> tuple[str, bool]:
    """The model's input text for one caption and whether it is chat-formatted (then it carries its
    own special tokens)."""
    text = (instruction or INSTRUCTION).format(caption=caption)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
    return text + "\n", False


def clean_variant(text: str) -> str:
    """An answer's first non-empty line without list markers, a ``Caption:`` prefix or quotes."""
    for line in text.splitlines():
        line = _MARKER.sub("", line.strip()).strip().strip("\"“”'").strip()
        if line:
            return line
    return ""


def caption_variants(tokenizer, model, caption: str, n: int, seed: int, settings: dict) -> list[str]:
    """`n` sampled rewordings of `caption`, seeded by `seed` (raw answers, not yet cleaned)."""
    import torch

    prompt, chat = build_prompt(tokenizer, caption, settings.get("instruction"))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)  # CPU and GPU generators alike
        out = model.generate(
            **inputs,
            do_sample=True,
            temperature=float(settings["temperature"]),
            top_p=float(settings["top_p"]),
            top_k=0,
            max_new_tokens=int(settings["max_new_tokens"]),
            min_new_tokens=1,
            num_return_sequences=int(n),
            pad_token_id=pad,
        )
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def llm_captions(
    meta: pd.DataFrame,
    model_dir,
    settings: dict,
    seed: int,
    dataset: str = "dataset",
    device: str | None = None,
):
    """The llm.parquet table of a dataset: ``id``, ``caption`` (its caption [0]) and ``captions``
    (``settings["n_variants"]`` cleaned variants). An image without a caption [0], or an answer that
    is empty once cleaned, is an error naming the image. `device`: default a GPU when one is visible."""
    from diffrep.devices import resolve_device

    settings = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    n = int(settings["n_variants"])
    if n < 1:
        raise LLMCaptionError(f"captions.llm.n_variants is {n}; it must be at least 1")
    tokenizer, model = load_llm(model_dir, resolve_device(device))
    rows = []
    for image_id, own in zip(meta["id"], meta["captions"]):
        image_id = str(image_id)
        if own is None or len(own) == 0 or not str(own[0]).strip():
            raise LLMCaptionError(
                f"llm_captions: image {image_id} of dataset {dataset!r} has no caption [0] to reword"
            )
        caption = str(own[0])
        raw = caption_variants(tokenizer, model, caption, n, derive_seed(seed, "llm", image_id), settings)
        variants = [clean_variant(t) for t in raw]
        empty = [t for t, v in zip(raw, variants) if not v]
        if empty:
            raise LLMCaptionError(
                f"llm_captions: the model wrote {len(empty)} empty answer(s) for image {image_id} of "
                f"dataset {dataset!r} (caption {caption!r}), e.g. {empty[0]!r}; raise "
                "captions.llm.max_new_tokens or check the instruction"
            )
        rows.append({"id": image_id, "caption": caption, "captions": variants})
    log.info("llm_captions: %d images x %d variants", len(rows), n)
    return pd.DataFrame(rows, columns=["id", "caption", "captions"])


def write_llm_captions(table: pd.DataFrame, path) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)


def read_llm_captions(path, n_variants: int | None = None) -> dict[str, list[str]]:
    """llm.parquet as ``{id: [variant, ...]}``; columns, list lengths (`n_variants` when given) and
    empty variants are checked, naming the file and the image."""
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise LLMCaptionError(f"cannot read {path}: {err}") from None
    missing = {"id", "captions"} - set(df.columns)
    if missing:
        raise LLMCaptionError(f"{path}: columns {sorted(missing)} missing (docs/formats.md, llm.parquet)")
    out = {}
    for image_id, caps in zip(df["id"], df["captions"]):
        caps = [str(c) for c in (caps if caps is not None else [])]
        if n_variants is not None and len(caps) != n_variants:
            raise LLMCaptionError(
                f"{path}: image {image_id} has {len(caps)} variant(s), captions.llm.n_variants is {n_variants}"
            )
        if not all(c.strip() for c in caps):
            raise LLMCaptionError(f"{path}: image {image_id} has an empty variant")
        out[str(image_id)] = caps
    return out
