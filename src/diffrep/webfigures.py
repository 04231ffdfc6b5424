"""Figures of a web-scale search: the top-1 similarity histogram and the match gallery.

The gallery is diffrep.figures.gallery: the matched web images are first taken out of their shard
tars (only the shards that hold a shown match are read) into a folder with a metadata table
(id = the image's key), so a web match is drawn exactly as a training match is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from diffrep.webshards import ShardError, key_of, read_shard


def shown_matches(matches: pd.DataFrame, n_generations: int, top_k: int) -> pd.DataFrame:
    """The rows a gallery shows: the top-``top_k`` matches of the ``n_generations`` generations with
    the highest top-1 similarity (diffrep.figures.gallery's choice), with ``train_id`` = the key."""
    top1 = matches[matches["rank"] == 0].sort_values("similarity", ascending=False, kind="stable")
    chosen = set(top1["generation"].head(n_generations))
    shown = matches[matches["generation"].isin(chosen) & (matches["rank"] < top_k)].copy()
    shown["train_id"] = [key_of(i) for i in shown["index"]]
    return shown


def extract_match_images(
    shown: pd.DataFrame,
    shard_tars: dict[int, str | os.PathLike],
    out_dir,
    stats: dict[int, dict] | None = None,
) -> pd.DataFrame:
    """Write the shown matches' images from their shard tars into `out_dir`; return the metadata
    (id, file) that diffrep.figures.gallery reads. A match missing from its tar raises naming both.
    `stats` ({shard: its stats}) number the images of img2dataset shards (diffrep.webshards)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for shard, part in shown.groupby("shard"):
        wanted = set(part["train_id"])
        images, _ = read_shard(shard_tars[int(shard)], int(shard), stats=(stats or {}).get(int(shard)))
        found = {im.key: im for im in images if im.key in wanted}
        missing = sorted(wanted - set(found))
        if missing:
            raise ShardError(
                f"shard {shard}: {shard_tars[int(shard)]} has no usable image {missing[0]} of the matches"
            )
        for key, im in found.items():
            name = f"{key}{Path(im.member).suffix}"  # named by its row, whatever its tar's layout
            (out_dir / name).write_bytes(im.data)
            rows.append({"id": key, "file": name})
    return pd.DataFrame(rows, columns=["id", "file"])


def top1_histogram(matches: pd.DataFrame, threshold: float, label: dict, study: str):
    """Histogram of each generation's top-1 similarity with the threshold, titled with what it measures."""
    import matplotlib.pyplot as plt

    from diffrep.figures import study_title

    top1 = matches.loc[matches["rank"] == 0, "similarity"].astype(float)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(top1, bins=40, color="C0")
    ax.axvline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("top-1 similarity to the reference collection")
    ax.set_ylabel("generations")
    ax.legend(fontsize=7)
    what = ", ".join(f"{k} {v}" for k, v in label.items())
    ax.set_title(study_title(f"Web-scale search: {what}", study), fontsize=7)
    fig.tight_layout()
    return fig
