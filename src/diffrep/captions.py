"""Caption files per conditioning style (upstream datasets.py ``--class_prompt``; docs/formats.md).

- ``nolevel``: every image is ``"An image"``;
- ``classlevel``: ``"An image of {class}"`` (needs class labels: an error names the dataset otherwise);
- ``instancelevel_blip``: the image's caption [0] first (on LAION the original caption), then its
  variants: LLM rewordings of caption [0] (``llm.parquet``, :mod:`diffrep.llmcaptions`) when the
  dataset has ``llm_captions: true``, the dataset's own captions [1:], then BLIP captions
  (``blip.parquet``) when the dataset has ``blip_captions: true``; ``n_captions`` in all. Fewer is an error unless BLIP captions were
  asked for. Where no BLIP captions are used the file says so (``"variants": "dataset"``): in the
  mini study the dataset's own caption variants stand in for BLIP captions, visibly;
- ``instancelevel_random``: ``random_per_image`` captions per image, each the decoding of
  ``random_tokens`` uniformly random token ids in ``[0, min(vocab_limit, len(tokenizer)))``, the
  start and end tokens left out (:func:`diffrep.mitigations.random_token_ids`; SD 2.x's "!" pad
  token is drawn, as upstream draws it), with the base model's own tokenizer
  (upstream stores the id lists and decodes them with the same tokenizer at training time; the
  text is the same). Seeded: same seed, same captions.

The training loop picks among an image's captions (caption [0], or a random one under
``dup_image`` / ``allcaps``); this module only writes the lists.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep import mitigations
from diffrep.config import CONDITIONINGS

log = logging.getLogger(__name__)
NOLEVEL = "An image"
CLASSLEVEL = "An image of {cls}"


class CaptionError(ValueError):
    """Captions that cannot be made; the message names the dataset and what is missing."""


def load_tokenizer(model_dir: str | Path):
    """The base model's tokenizer, from its ``tokenizer/`` subfolder (offline)."""
    from transformers import AutoTokenizer

    path = Path(model_dir) / "tokenizer"
    if not path.is_dir():
        raise CaptionError(
            f"no tokenizer folder {path}: instancelevel_random needs the base model's tokenizer"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def random_captions(
    ids, tokenizer, per_image: int = 10, n_tokens: int = 4, vocab_limit: int = 49400, seed: int = 0
) -> dict[str, list[str]]:
    """{id: `per_image` decoded captions of `n_tokens` random token ids}, in the order of `ids`."""
    rng = np.random.default_rng(seed)
    return {
        i: [mitigations.random_tokens(tokenizer, n_tokens, rng, vocab_limit) for _ in range(per_image)]
        for i in ids
    }


def make_captions(
    meta: pd.DataFrame,
    conditioning: str,
    dataset: str = "dataset",
    n_captions: int = 21,
    blip: dict[str, list[str]] | None = None,
    tokenizer=None,
    llm: dict[str, list[str]] | None = None,
    random_per_image: int = 10,
    random_tokens: int = 4,
    vocab_limit: int = 49400,
    seed: int = 0,
) -> dict:
    """The caption file of one conditioning style as a dict (docs/formats.md).

    `meta`: metadata.parquet (columns id, class, captions); `blip`: {id: BLIP captions} or None;
    `llm`: {id: LLM rewordings of caption [0]} or None.
    """
    if conditioning not in CONDITIONINGS:
        raise CaptionError(f"conditioning {conditioning!r}; allowed: {', '.join(CONDITIONINGS)}")
    ids = [str(i) for i in meta["id"]]
    out: dict = {"conditioning": conditioning, "dataset": dataset}
    if conditioning == "nolevel":
        caps = {i: [NOLEVEL] for i in ids}
    elif conditioning == "classlevel":
        classes = meta["class"] if "class" in meta.columns else pd.Series([None] * len(meta))
        missing = [i for i, c in zip(ids, classes) if c is None or pd.isna(c)]
        if missing:
            raise CaptionError(
                f"classlevel captions: dataset {dataset!r} has no class labels ({len(missing)} of {len(ids)} "
                f"images without a class, e.g. {missing[0]}); use an imagefolder dataset (one sub-folder per "
                "class) or a builder that writes classes.json, with has_classes: true"
            )
        caps = {i: [CLASSLEVEL.format(cls=c)] for i, c in zip(ids, classes)}
    elif conditioning == "instancelevel_blip":
        caps = {}
        for i, own in zip(ids, meta["captions"]):
            lst = list(own) if own is not None else []
            if llm is not None:
                if i not in llm:
                    raise CaptionError(
                        f"instancelevel_blip: image {i} of dataset {dataset!r} has no LLM captions"
                    )
                lst = lst[:1] + list(llm[i]) + lst[1:]
            if blip is not None:
                lst += list(blip.get(i, []))
            if not lst:
                raise CaptionError(
                    f"instancelevel_blip: image {i} of dataset {dataset!r} has no caption"
                    + ("" if blip is not None else " (set blip_captions: true to caption it with BLIP)")
                )
            if len(lst) < n_captions and blip is None and llm is None:
                raise CaptionError(
                    f"instancelevel_blip: image {i} of dataset {dataset!r} has {len(lst)} caption(s), "
                    f"n_captions is {n_captions}; lower datasets.{dataset}.n_captions or set blip_captions: true"
                )
            caps[i] = lst[:n_captions]
        short = sum(len(c) < n_captions for c in caps.values())
        if short:
            log.warning(
                "%d image(s) have fewer than n_captions=%d captions even with BLIP captions",
                short,
                n_captions,
            )
        out["variants"] = " + ".join(
            [*(["llm"] if llm is not None else []), "dataset", *(["blip"] if blip is not None else [])]
        )
        if blip is None:
            log.info(
                "instancelevel_blip: caption variants are the dataset's own captions [1:] (no BLIP captioning)"
            )
    else:
        if tokenizer is None:
            raise CaptionError("instancelevel_random needs the base model's tokenizer")
        caps = random_captions(ids, tokenizer, random_per_image, random_tokens, vocab_limit, seed)
        out["random_tokens"] = random_tokens
        out["vocab_limit"] = mitigations.token_limit(tokenizer, vocab_limit)
    out["captions"] = caps
    return out


def read_blip(path: str | Path) -> dict[str, list[str]]:
    """blip.parquet (columns id, captions) as {id: [caption, ...]}."""
    df = pd.read_parquet(path)
    return {str(i): list(c) for i, c in zip(df["id"], df["captions"])}


def write_captions(data: dict, path: str | Path) -> None:
    from diffrep.fileio import atomic_path

    with atomic_path(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def read_caption_file(path: str | Path) -> dict:
    """A caption file (docs/formats.md) as a dict: ``conditioning``, ``dataset``, ``captions`` ({id: [caption, ...]}), ..."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("captions"), dict):
        raise CaptionError(
            f"{path}: not a caption file (expected a JSON object whose 'captions' maps image ids to caption lists)"
        )
    return data


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """{id: captions} of a caption file."""
    return read_caption_file(path)["captions"]
