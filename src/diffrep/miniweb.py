"""The mini study's "web": the mini base model's own pretraining pictures as a LAION-layout collection
(and a prepared dataset's pictures as one, :func:`write_dataset_web`: the rehearsal's web).

Stable Diffusion was pretrained on LAION, and the CVPR'23 study searches its generations against
LAION. The mini base model (builder ``mini_sd``, diffrep.tinysd) was pretrained on a procedural base
image set, so that set is its web: :func:`write_pretraining_web` redraws it from the model's
``build_info.json`` (seed and options: the same pictures, bit for bit), writes each picture as a PNG
and a metadata parquet in LAION's layout (``URL``, ``TEXT``, ``picture``). The URLs are ``file:``
URLs of the PNGs relative to the working directory, ``file:resources/webscale/<name>/web/00000.png``
(the downloader, urllib, reads them like any URL, so ``make mini`` needs no server; relative, so the
study's files are the same in any checkout and on a cluster's shared disk), or, with ``url_base``,
``{url_base}/{name}`` for a server over the folder (the tests serve it on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffrep.fileio import atomic_path, staged_dir
from diffrep.webshards import ShardError

BUILDER = "mini_sd"


def pretraining_rows(models: dict, model: str, where: str) -> int:
    """Pictures in the pretraining set of ``models[model]`` (a ``mini_sd`` build), from its config:
    the shard count is known before the model is built. ``where`` names the config key in errors."""
    from diffrep.tinysd import mini_options

    sources = models.get(model, {}).get("sources", [])
    build = next((s for s in sources if s.get("type") == "build"), None)
    if model not in models or build is None or build.get("builder") != BUILDER:
        raise ShardError(
            f"{where}: {model!r} is not a models entry built by builder {BUILDER!r} (only that builder's "
            "pretraining pictures are known)"
        )
    options = dict(build.get("options") or {})
    micro = bool(options.pop("micro", False))
    return int(mini_options(micro, options)["n_base_images"])


def write_pretraining_web(model_dir, out_dir, out_parquet, url_base: str | None = None) -> int:
    """Write the pretraining pictures of the mini model in ``model_dir`` as PNGs into ``out_dir`` and
    their metadata parquet (URL, TEXT, picture); return the number of pictures."""
    import pandas as pd
    from PIL import Image

    from diffrep.tinysd import base_set

    info_path = Path(model_dir) / "build_info.json"
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{info_path} not found: the model was not built by builder {BUILDER!r}") from None
    if info.get("builder") != BUILDER:
        raise ShardError(f"{info_path}: built by {info.get('builder')!r}, not {BUILDER!r}")
    base = base_set(int(info["seed"]), info["options"])
    names = [f"{i:05d}.png" for i in range(len(base.train))]
    with staged_dir(out_dir, replace=True) as tmp:
        for name, picture in zip(names, base.train):
            Image.fromarray(picture).save(Path(tmp) / name, format="PNG")
    root = Path(out_dir).as_posix()
    urls = [f"{url_base.rstrip('/')}/{n}" if url_base else f"file:{root}/{n}" for n in names]
    frame = pd.DataFrame({"URL": urls, "TEXT": base.train_captions, "picture": range(len(names))})
    with atomic_path(out_parquet, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return len(names)


def write_dataset_web(metadata, images_dir, out_parquet, n_rows: int, where: str) -> int:
    """Write the metadata parquet (URL, TEXT, id) of a prepared dataset's pictures, in its metadata
    order: ``file:`` URLs of ``images_dir``'s files (relative, as the mini's), each picture's first
    caption (empty when it has none). The count must be the configured ``n_rows`` (``where`` names
    that key): the shards were planned from it."""
    import pandas as pd

    from diffrep.datasets import read_metadata

    meta = read_metadata(metadata)
    if len(meta) != n_rows:
        raise ShardError(
            f"{where}: {n_rows} rows configured, but {metadata} lists {len(meta)} pictures; set it to "
            f"{len(meta)} (the shards are planned from it)"
        )
    root = Path(images_dir).as_posix()
    frame = pd.DataFrame(
        {
            "URL": [f"file:{root}/{f}" for f in meta["file"]],
            "TEXT": [caps[0] if caps else "" for caps in meta["captions"]],
            "id": meta["id"].astype(str),
        }
    )
    with atomic_path(out_parquet, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return len(frame)


def mini_web_path(ws: str | os.PathLike, collection: str) -> dict[str, str]:
    """Where a pretraining collection's pictures and parquet go."""
    return {"images": f"{ws}/{collection}/web", "parquet": f"{ws}/{collection}/web.parquet"}
