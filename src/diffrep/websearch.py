"""Sharded exact search of generations against a web-scale reference collection, and its merge.

Per shard (diffrep.webshards): the shard's images are embedded (the embedders of
diffrep.embeddings, over the images read from the tar) into ``{shard}.npz`` (docs/formats.md, ids =
keys) with their metadata in ``{shard}.parquet`` (key, index, url, caption); then every generation's
top-k within the shard is found exactly with ``faiss.knn`` (diffrep.similarity.exact_search, which
holds no second copy of the shard). The merge keeps, per
generation, the k most similar of all shards' candidates (exact ties broken by the lower row index:
deterministic, where a monolithic search may order exact ties differently). Because each shard
contributes its own top-k, the global top-k is among the candidates: the merge equals one exact
search over the whole collection, and holds at most one shard's results plus the running top-k in
memory (2 × generations × k rows).

Shards that are missing (no result, or a download that fetched nothing) stop the merge unless the
user allows them (``allow_missing_shards``); then every table written names them.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from diffrep.embeddings import read_embeddings, write_embeddings
from diffrep.fileio import atomic_path
from diffrep.similarity import exact_search
from diffrep.webshards import IMG2DATASET, ShardError, read_shard, tar_path_of

log = logging.getLogger(__name__)
MATCH_COLUMNS = ("generation", "rank", "similarity", "shard", "index", "url", "caption")


# ---------------------------------------------------------------- per shard


def _write_parquet(frame, path) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)


def embed_shard(
    embedder,
    tar_path,
    shard: int,
    out_npz,
    out_meta,
    stats: dict | None = None,
    bad_images: str = "drop",
    stats_path=None,
    **kw,
) -> dict:
    """Embed a shard tar's usable images; write ``out_npz`` (descriptors) and ``out_meta`` (parquet).

    `stats` is the shard's ``_stats.json`` (read from `stats_path`, which error messages name); a
    truncated, corrupt or replaced tar raises (:func:`diffrep.webshards.read_shard`). ``kw`` goes to
    ``embedder.embed`` (batch_size, device, num_workers). Returns a summary with the bad images
    dropped (shard, member, reason).
    """
    import pandas as pd

    if stats is not None and stats.get("successes") == 0:  # a recorded failed download: a missing shard
        log.error("shard %d: no images (%s); writing an empty result", shard, stats.get("error"))
        write_embeddings(out_npz, [], np.zeros((0, 0), np.float32), embedder.name, embedder.preprocess)
        _write_parquet(pd.DataFrame({"key": [], "index": [], "url": [], "caption": []}), out_meta)
        return {"shard": shard, "n": 0, "dim": 0, "bad_images": []}
    images, bad = read_shard(tar_path, shard, stats=stats, bad_images=bad_images, stats_path=stats_path)
    for b in bad:
        log.warning("shard %d: dropped %s: %s", shard, b["member"], b["reason"])
    if not images:
        raise ShardError(f"shard {shard}: {tar_path} holds no usable image ({len(bad)} bad)")
    emb = embedder.embed([io.BytesIO(im.data) for im in images], **kw)
    write_embeddings(out_npz, [im.key for im in images], emb, embedder.name, embedder.preprocess)
    meta = pd.DataFrame(
        {
            "key": [im.key for im in images],
            "index": [int(im.meta["index"]) for im in images],
            "url": [im.meta["url"] for im in images],
            "caption": [im.meta["caption"] for im in images],
        }
    )
    _write_parquet(meta, out_meta)
    return {"shard": shard, "n": len(images), "dim": int(emb.shape[1]), "bad_images": bad}


def search_shard(gen_ids: Sequence[str], gen_emb: np.ndarray, ref_emb: np.ndarray, meta, shard: int, k: int):
    """Top-`k` references of one shard per generation (exact inner product) as a matches frame.

    `ref_emb` rows are in `meta` order (key, index, url, caption). Columns: MATCH_COLUMNS, rank 0 best.
    """
    import pandas as pd

    if len(meta) != len(ref_emb):
        raise ShardError(f"shard {shard}: {len(ref_emb)} descriptors but {len(meta)} metadata rows")
    sims, rows = exact_search(ref_emb, gen_emb, k)  # the shard once in memory, not twice
    kk = sims.shape[1]
    take = rows.ravel()
    return pd.DataFrame(
        {
            "generation": np.repeat(np.asarray(list(gen_ids), dtype=object), kk),
            "rank": np.tile(np.arange(kk), len(gen_ids)),
            "similarity": sims.ravel().astype(np.float32),
            "shard": np.full(take.size, int(shard)),
            "index": meta["index"].to_numpy()[take],
            "url": meta["url"].to_numpy()[take],
            "caption": meta["caption"].to_numpy()[take],
        }
    )


def search_shard_files(generations_npz, shard_npz, shard_meta, shard: int, k: int, out) -> None:
    """:func:`search_shard` from files (the generations' and the shard's npz, the shard's parquet)."""
    import pandas as pd

    gen, ref = read_embeddings(generations_npz), read_embeddings(shard_npz)
    if gen["embedder"] != ref["embedder"] or gen["preprocess"] != ref["preprocess"]:
        raise ShardError(
            f"{generations_npz} ({gen['embedder']}, {gen['preprocess']}) and {shard_npz} "
            f"({ref['embedder']}, {ref['preprocess']}) come from different embedders"
        )
    meta = pd.read_parquet(shard_meta)
    if meta.empty:  # a missing shard (its download fetched nothing): an empty result the merge reports
        _write_parquet(pd.DataFrame({c: [] for c in MATCH_COLUMNS}), out)
        return
    _write_parquet(search_shard(gen["ids"], gen["embeddings"], ref["embeddings"], meta, shard, k), out)


# ---------------------------------------------------------------- merge


def _keep_topk(frame, k: int):
    """Per generation the `k` rows of highest similarity (ties: lower index first), ranks renumbered."""
    frame = frame.sort_values(
        ["generation", "similarity", "index"], ascending=[True, False, True], kind="stable"
    )
    frame = frame.groupby("generation", sort=False).head(k).reset_index(drop=True)
    frame["rank"] = frame.groupby("generation", sort=False).cumcount()
    return frame


def merge_topk(frames: Iterable, k: int):
    """The global top-`k` per generation of per-shard matches frames, read one at a time.

    Memory: the running top-k (generations × k rows) plus one shard's frame.
    """
    import pandas as pd

    running = None
    for frame in frames:
        running = frame if running is None else pd.concat([running, frame], ignore_index=True)
        running = _keep_topk(running, k)
    if running is None:
        raise ShardError("merge: no shard results to merge")
    return running[list(MATCH_COLUMNS)]


def missing_shards(expected: int, present: Iterable[int]) -> list[int]:
    """Shard numbers in ``range(expected)`` without a result."""
    return sorted(set(range(int(expected))) - {int(s) for s in present})


def check_complete(
    expected: int, present: Iterable[int], allow_missing: bool, where: str = "merge", stats_paths=None
) -> list[int]:
    """The missing shards; raises naming them and how to retry them (:func:`retry_advice`, from the
    shards' download stats {shard: path}) unless `allow_missing` (then they are logged, with it)."""
    missing = missing_shards(expected, present)
    if missing and not allow_missing:
        raise ShardError(
            f"{where}: {len(missing)} of {expected} shards have no result: {_shard_list(missing)}; "
            f"{retry_advice(missing, stats_paths)}; or set allow_missing_shards: true to merge without "
            "them (every table then names the missing shards)"
        )
    if missing:
        log.warning(
            "%s: merging without %d missing shard(s): %s; %s",
            where,
            len(missing),
            _shard_list(missing),
            retry_advice(missing, stats_paths),
        )
    return missing


def _recorded_failure(stats_path) -> dict | None:
    """A shard's stats when they record a download that fetched nothing (``successes: 0``), else None."""
    try:
        stats = json.loads(Path(stats_path).read_text())
    except (OSError, ValueError):
        return None
    return stats if stats.get("successes") == 0 else None


def retry_advice(missing: Sequence[int], stats_paths=None, limit: int = 10) -> str:
    """How to get results for the `missing` shards, given their download stats {shard: path}.

    A download that fetched nothing and was recorded (allow_missing_shards: ``successes: 0`` in its
    stats) is up to date for Snakemake, so a plain re-run never fetches it again: the advice names
    its tar and stats (those of the first `limit` shards) to delete first; for an img2dataset shard
    on disk, img2dataset must fetch it again. Other missing shards only lack a result file, which a
    re-run makes.
    """
    failed = {s: _recorded_failure(stats_paths[s]) for s in missing if s in (stats_paths or {})}
    failed = {s: st for s, st in failed.items() if st is not None}
    if not failed:
        return "re-run snakemake to compute them"
    shards = sorted(failed)
    if any(failed[s].get("layout") == IMG2DATASET for s in shards):
        tars = " ".join(str(failed[s].get("tar", "")) for s in shards[:limit])
        return (
            f"shard(s) {_shard_list(shards)} hold no image: fetch them again with img2dataset ({tars}), "
            "then re-run snakemake"
        )
    files = " ".join(f"{tar_path_of(stats_paths[s])} {stats_paths[s]}" for s in shards[:limit])
    more = f" and the same two files of the other {len(shards) - limit} shards" if len(shards) > limit else ""
    return (
        f"the download of shard(s) {_shard_list(shards)} fetched no image (the error is in each stats "
        f"file) and a plain re-run does not download them again: delete {files}{more}, then re-run "
        "snakemake to download them"
    )


def missing_text(missing: Sequence[int]) -> str:
    """The missing shards as every table writes them: ``"2,3"`` (empty: none missing)."""
    return ",".join(str(int(s)) for s in missing)


def _shard_list(shards: Sequence[int], limit: int = 20) -> str:
    text = ", ".join(str(s) for s in shards[:limit])
    return text + (f", ... ({len(shards)} in all)" if len(shards) > limit else "")


# ---------------------------------------------------------------- replication rate


def replication_rate(top1: Sequence[float], threshold: float, n_boot: int = 1000, seed: int = 0, level=0.95):
    """Fraction of generations whose top-1 similarity is strictly above `threshold`, with a bootstrap CI.

    Percentile bootstrap over generations (``n_boot`` resamples with replacement, numpy generator
    seeded with `seed`). Returns {"rate", "ci_low", "ci_high", "n", "threshold", "n_boot", "level"}.
    """
    x = np.asarray(top1, dtype=np.float64).ravel() > threshold
    if x.size == 0:
        raise ShardError("replication rate: no generations")
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, size=(int(n_boot), x.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {
        "rate": float(x.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(x.size),
        "threshold": float(threshold),
        "n_boot": int(n_boot),
        "level": float(level),
    }


def _has_rows(path) -> bool:
    """Whether a shard's result exists and holds matches (an empty one is a missing shard's)."""
    import pyarrow.parquet as pq

    return os.path.exists(path) and pq.ParquetFile(path).metadata.num_rows > 0


def merge_files(
    results: dict[int, str | os.PathLike],
    n_shards: int,
    k: int,
    out_matches,
    out_summary,
    *,
    label: dict,
    threshold: float,
    allow_missing: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    prompt_rows: dict[str, int] | None = None,
    stats_paths: dict[int, str | os.PathLike] | None = None,
) -> dict:
    """Merge per-shard matches parquets {shard: path}; write the global top-k and the summary.

    Shards in ``range(n_shards)`` absent from `results` (or whose file is absent) are missing: see
    :func:`check_complete`, whose messages say from the shards' download stats (`stats_paths`,
    {shard: path}) how to fetch them again. `label` (model, collection, embedder, preprocess) and the missing shards
    are written into every output: columns of the matches table, keys of the summary JSON.
    `prompt_rows` ({generation: the collection row its prompt was taken from}, for prompts sampled
    from the collection itself) adds ``prompt_index`` and ``own_image`` (the match is the image of
    the generation's own caption) to the matches, and to the summary the share of generations whose
    top-1 (``own_image_top1``) or any top-k match (``own_image_topk``) is that image.
    """
    import pandas as pd

    present = {s: p for s, p in results.items() if p is not None and _has_rows(p)}
    missing = check_complete(n_shards, present, allow_missing, stats_paths=stats_paths)
    merged = merge_topk((pd.read_parquet(present[s]) for s in sorted(present)), k)
    for key, value in label.items():
        merged[key] = value
    merged["missing_shards"] = missing_text(missing)
    top1 = merged.loc[merged["rank"] == 0, "similarity"]
    summary = {
        **label,
        **replication_rate(top1, threshold, n_boot=n_boot, seed=seed, level=level),
        "top_k": int(k),
        "n_shards": int(n_shards),
        "missing_shards": missing,
    }
    if prompt_rows is not None:
        merged["prompt_index"] = merged["generation"].map(prompt_rows).astype("Int64")
        merged["own_image"] = (merged["index"] == merged["prompt_index"]).fillna(False).astype(bool)
        own = merged.groupby("generation")["own_image"]
        summary["own_image_top1"] = float(merged.loc[merged["rank"] == 0, "own_image"].mean())
        summary["own_image_topk"] = float(own.any().mean())
    _write_parquet(merged, out_matches)
    with atomic_path(out_summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------- tables


def shard_report(stats: dict[int, dict], missing: Sequence[int]):
    """Per shard its download counts (img2dataset's count / successes / failed_to_download), its
    download error if it fetched nothing, and whether the merge went without it."""
    import pandas as pd

    rows = [
        {
            "shard": int(s),
            "count": st.get("count"),
            "successes": st.get("successes"),
            "failed_to_download": st.get("failed_to_download"),
            "error": st.get("error", ""),
            "missing": int(s) in set(missing),
        }
        for s, st in sorted(stats.items())
    ]
    return pd.DataFrame(rows)


def webscale_table(summaries: Sequence[dict], approx: Sequence[dict] = ()):
    """One row per search (its summary JSON); ``missing_shards`` as text so every row names them.

    ``approx``: per search with an approximate index, its columns (diffrep.webapprox.table_columns:
    ``search`` and ``approx_…``: recall reached, target, below it or not, settings chosen), joined on
    ``search``; empty for the searches without one.
    """
    import pandas as pd

    table = pd.DataFrame([{**s, "missing_shards": missing_text(s["missing_shards"])} for s in summaries])
    if len(approx):
        table = table.merge(pd.DataFrame(list(approx)), on="search", how="left", validate="one_to_one")
    return table.sort_values("search").reset_index(drop=True) if "search" in table else table
