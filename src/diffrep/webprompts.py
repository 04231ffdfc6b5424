"""The prompts of a web-scale search (docs/webscale.md, "Prompts").

Besides the captions of a configured dataset (drawn as the dataset's runs draw them), a search can be
prompted by

- ``collection``: captions sampled with a seed from the searched collection's own metadata (what the
  CVPR'23 study did: Stable Diffusion prompted with captions of its training set). Rows whose caption
  is missing or blank are not drawn; each drawn row keeps its index, url and shard, so a match of a
  generation to its own prompt's image can be told apart;
- ``prompt_file``: prompts drawn with a seed from a prompt table (``memorization.prompt_files``, the
  normalised ``resources/prompts/<name>.parquet``).

``n`` rows are drawn without replacement (``numpy.random.default_rng(seed).choice``) when the source
has as many, else with replacement (logged). The result is a prompts table: one row per generation
with ``index``, ``source_id``, ``prompt`` and the image's ``seed`` (``generation.image_seed``), which
:func:`diffrep.generation.generate` generates row by row.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from diffrep.fileio import atomic_path
from diffrep.generation import PROMPT_COLUMNS as COLUMNS
from diffrep.generation import PromptError, image_seed, read_prompt_table
from diffrep.webshards import ShardError, check_columns, row_counts

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "PromptError", "collection_prompts", "file_prompts", "read_prompts", "search_prompts"]


def draw(n_available: int, n: int, seed: int, where: str) -> np.ndarray:
    """`n` positions among `n_available`: without replacement when there are as many, else with."""
    if n_available == 0:
        raise PromptError(f"{where}: no usable prompt to draw from")
    rng = np.random.default_rng(seed)
    if n > n_available:
        log.warning("%s: %d prompts asked, %d available: drawing with replacement", where, n, n_available)
    return rng.choice(n_available, size=n, replace=n > n_available)


def _table(source_ids, prompts, seed: int, **extra) -> pd.DataFrame:
    n = len(prompts)
    return pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "source_id": [str(s) for s in source_ids],
            "duplicated": np.zeros(n, dtype=bool),
            "dup_set": np.zeros(n, dtype=bool),
            "prompt": [str(p) for p in prompts],
            "seed": [image_seed(seed, i) for i in range(n)],
            **extra,
        }
    )


def _usable(captions) -> np.ndarray:
    """Positions of the non-missing, non-blank strings of an arrow array, without a Python object per
    row (a LAION file holds millions)."""
    import pyarrow.compute as pc

    if not (pa.types.is_string(captions.type) or pa.types.is_large_string(captions.type)):
        captions = pc.cast(captions, pa.string())
    ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(captions)), 0), False)
    return np.flatnonzero(ok.to_numpy(zero_copy_only=False))


def collection_prompts(
    parquets, n: int, seed: int, shard_size: int, url_col: str = "URL", caption_col: str = "TEXT"
) -> pd.DataFrame:
    """`n` captions of a collection's rows, sampled with `seed`; columns COLUMNS + url, shard.

    ``source_id`` is the row's index in the collection (the parquets concatenated in order), the
    number its reference image carries in every search result. One file's caption column is in
    memory at a time.
    """
    import pyarrow.parquet as pq

    parquets = [Path(p) for p in parquets]
    counts = row_counts(parquets)
    usable, start = [], 0
    for path, count in zip(parquets, counts):
        check_columns(path, url_col, caption_col)
        usable.append(_usable(pq.read_table(path, columns=[caption_col]).column(0)) + start)
        start += count
    rows = np.concatenate(usable) if usable else np.zeros(0, np.int64)
    log.info("collection: %d of %d rows have a caption", len(rows), start)
    chosen = rows[draw(len(rows), n, seed, f"collection {', '.join(map(str, parquets))}")]
    url, caption = [None] * n, [None] * n
    start = 0
    for path, count in zip(parquets, counts):
        here = np.flatnonzero((chosen >= start) & (chosen < start + count))
        if len(here):
            table = pq.read_table(path, columns=[url_col, caption_col]).take(chosen[here] - start)
            for j, u, c in zip(here, table.column(0).to_pylist(), table.column(1).to_pylist()):
                url[j], caption[j] = u, c
        start += count
    return _table(
        chosen,
        caption,
        seed,
        url=url,
        shard=[f"{int(r) // int(shard_size):05d}" for r in chosen],
    )


def file_prompts(table_path: str | os.PathLike, n: int, seed: int) -> pd.DataFrame:
    """`n` prompts of a normalised prompt table, sampled with `seed`; columns COLUMNS + label.

    ``source_id`` is the prompt's row in the table.
    """
    try:
        table = pd.read_parquet(table_path)
    except FileNotFoundError:
        raise PromptError(f"prompt file {table_path} not found") from None
    if "prompt" not in table:
        raise PromptError(f"prompt file {table_path} has no 'prompt' column; its columns: {', '.join(table)}")
    rows = _usable(pa.array(table["prompt"], from_pandas=True))
    chosen = rows[draw(len(rows), n, seed, f"prompt file {table_path}")]
    labels = table["label"].iloc[chosen].tolist() if "label" in table else [None] * n
    return _table(chosen, table["prompt"].iloc[chosen].tolist(), seed, label=labels)


def search_prompts(source: str, inputs: dict, n: int, seed: int, **collection) -> pd.DataFrame:
    """The prompts table of a search whose prompts come from `source` (collection or prompt_file).

    `inputs`: ``parquets`` (collection) or ``table`` (prompt_file); `collection`: shard_size, url_col,
    caption_col of the collection.
    """
    if source == "collection":
        try:
            table = collection_prompts(inputs["parquets"], n, seed, **collection)
        except ShardError as err:
            raise PromptError(str(err)) from None
    elif source == "prompt_file":
        table = file_prompts(inputs["table"], n, seed)
    else:
        raise PromptError(
            f"prompts.source {source!r} makes no prompts table; allowed: collection, prompt_file"
        )
    log.info(
        "%d prompts from the %s (seed %d), %d distinct",
        len(table),
        source,
        seed,
        table["source_id"].nunique(),
    )
    return table


def write_prompts(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)


def read_prompts(path: str | os.PathLike) -> pd.DataFrame:
    """A prompts table (:func:`diffrep.generation.read_prompt_table`)."""
    return read_prompt_table(path)
