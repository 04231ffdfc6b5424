"""A web-scale reference collection as shards: LAION-layout metadata, webdataset tars, their reader.

The collection is a list of parquet files in LAION's layout (a URL column, a caption column and
whatever ids they carry: ``URL``, ``TEXT``, ``hash``/``key`` in LAION's files). Their rows,
concatenated in list order, are numbered 0, 1, ... (the row's *index*, the id of a reference image
in every result). Shard ``i`` holds the rows ``[i * shard_size, (i + 1) * shard_size)``: the split is
a pure function of the files and the shard size, so it is known before any download.

A downloaded shard is a webdataset tar (the layout img2dataset writes): per fetched row the image
bytes ``{key}.{ext}`` (``ext`` from the image's format: jpg, png, webp, ...), its caption
``{key}.txt`` and ``{key}.json`` (url, caption, index, shard, ids), where ``key`` is the index
zero-padded to 9 digits. Beside it ``{shard}_stats.json`` counts, as img2dataset's ``_stats.json``
does, ``count``, ``successes``, ``failed_to_download`` and the reasons (``status_dict``), lists every
failure, and records the tar's sha256. The tar is written deterministically (sorted members, mtime 0),
so a re-download of the same bytes has the same sha256.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diffrep.checksums import read_manifest, sha256_file
from diffrep.fileio import atomic_path
from diffrep.imagefetch import download_all
from diffrep.images import EXTENSIONS, IMAGE_SUFFIXES, MODE_NAMES

log = logging.getLogger(__name__)
KEY_DIGITS = 9
BAD_IMAGE_POLICIES = ("fail", "drop")


class ShardError(RuntimeError):
    """A collection, shard or shard member that cannot be used; the message names the file."""


# ---------------------------------------------------------------- metadata and sharding


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except FileNotFoundError:
        raise ShardError(f"reference collection: parquet {path} not found") from None
    except Exception as err:
        raise ShardError(f"reference collection: {path} is not a readable parquet file ({err})") from err


def check_columns(path: str | os.PathLike, url_col: str, caption_col: str, id_cols=()) -> None:
    """Raise :class:`ShardError` naming `path` when it lacks the url, caption or an id column."""
    names = _parquet_columns(Path(path))
    wanted = {"url_col": url_col, "caption_col": caption_col, **{f"id_cols[{c}]": c for c in id_cols}}
    missing = [f"{c!r} ({key})" for key, c in wanted.items() if c not in names]
    if missing:
        raise ShardError(
            f"reference collection: {path} has no column {', '.join(missing)}; its columns are "
            f"{', '.join(names)} (set url_col / caption_col / id_cols to the file's names)"
        )


def row_counts(parquets) -> list[int]:
    """Rows of each parquet file, read from the footers (no data is read)."""
    import pyarrow.parquet as pq

    counts = []
    for p in parquets:
        _parquet_columns(Path(p))  # a clear error for a missing or unreadable file
        counts.append(pq.ParquetFile(p).metadata.num_rows)
    return counts


def collection_files(patterns) -> list[Path]:
    """The parquet files of a collection: each entry a path or a glob pattern (expanded, sorted), in order."""
    import glob

    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [pattern]
        files.extend(Path(p) for p in matched)
    return files


def collection_rows(cfg: dict, name: str) -> int:
    """Rows of collection `name` (a webscale.collections entry): from the parquet footers when the files
    are on disk, else the configured ``n_rows``; a clear error when neither is there."""
    files = [p for p in collection_files(cfg["parquets"]) if p.is_file()]
    if files and len(files) == len(collection_files(cfg["parquets"])):
        return sum(row_counts(files))
    if cfg.get("n_rows"):
        return int(cfg["n_rows"])
    raise ShardError(
        f"webscale.collections.{name}: no parquet file of {cfg['parquets']} is on disk (or some are "
        "missing); put them there, or set n_rows to plan the shards without them"
    )


def shard_count(cfg: dict, name: str) -> int:
    """Shards of collection `name`: rows / shard_size, or, for img2dataset shards already on disk
    (``on_disk``), img2dataset's count (each parquet cut on its own; from n_rows while the parquets
    are not on disk, which ignores the per-file remainders)."""
    files = collection_files(cfg.get("parquets", []))
    if cfg.get("on_disk") and files and all(p.is_file() for p in files):
        return len(img2dataset_ranges(row_counts(files), cfg["shard_size"]))
    return n_shards(collection_rows(cfg, name), cfg["shard_size"])


def n_shards(n_rows: int, shard_size: int) -> int:
    """Number of shards of `n_rows` rows with `shard_size` rows each (the last may be shorter)."""
    if shard_size < 1:
        raise ShardError(f"shard_size must be >= 1, got {shard_size}")
    return -(-int(n_rows) // int(shard_size))


def shard_rows(
    parquets, shard: int, shard_size: int, url_col: str = "URL", caption_col: str = "TEXT", id_cols=()
):
    """The rows of shard `shard` as a DataFrame (index, url, caption, id columns), in row order.

    Rows ``[shard * shard_size, (shard + 1) * shard_size)`` of the parquet files concatenated in
    list order; the ``index`` column is the row's number in that concatenation.
    """

    counts = row_counts(parquets)
    total = sum(counts)
    if not 0 <= shard < max(1, n_shards(total, shard_size)):
        raise ShardError(
            f"shard {shard} out of range: {total} rows make {n_shards(total, shard_size)} shards"
        )
    lo, hi = shard * shard_size, min((shard + 1) * shard_size, total)
    return rows_between(parquets, lo, hi, url_col, caption_col, id_cols, counts)


def rows_between(parquets, lo: int, hi: int, url_col="URL", caption_col="TEXT", id_cols=(), counts=None):
    """Rows ``[lo, hi)`` of the concatenated parquets as a DataFrame (index, url, caption, id columns)."""
    import pandas as pd

    counts = row_counts(parquets) if counts is None else counts
    parts, start = [], 0
    for path, n in zip(parquets, counts):
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            check_columns(path, url_col, caption_col, id_cols)
            cols = [url_col, caption_col, *id_cols]
            df = pd.read_parquet(path, columns=cols).iloc[a - start : b - start]
            df = df.rename(columns={url_col: "url", caption_col: "caption"}).reset_index(drop=True)
            df.insert(0, "index", range(a, b))
            parts.append(df)
        start += n
    if not parts:
        raise ShardError(f"rows {lo}..{hi - 1} are out of range: the collection has {sum(counts)} rows")
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- shards already on disk (img2dataset)
#
# img2dataset (output_format webdataset) cuts each input file into pieces of number_sample_per_shard
# rows (the last piece of every file may be shorter) and numbers the pieces on across the files, in
# sorted order when given a folder; a sample's key is ``10 ** sample_digits * shard + row in shard``,
# zero-padded, and its ``.json`` holds url, caption, key and status but no row number.

IMG2DATASET = "img2dataset"


def img2dataset_ranges(counts, shard_size: int) -> list[tuple[int, int]]:
    """The collection rows ``[lo, hi)`` of each img2dataset shard, in shard order."""
    ranges, start = [], 0
    for n in counts:
        ranges += [(start + a, start + min(a + shard_size, n)) for a in range(0, n, shard_size)]
        start += n
    return ranges


def sample_digits(shard_size: int) -> int:
    """Digits of the row-in-shard part of an img2dataset key (its ``oom_sample_per_shard``)."""
    return math.ceil(math.log10(shard_size)) if shard_size > 1 else 0


def register_shard(
    tar_path,
    stats_path,
    parquets,
    shard: int,
    shard_size: int,
    out_stats,
    url_col: str = "URL",
    caption_col: str = "TEXT",
    manifest=None,
) -> dict:
    """Check an img2dataset shard already on disk against the collection and record it.

    Every member's key must belong to shard `shard` and its url equal the url of the row it maps to
    (so the folder was made from these parquets, in this order, with number_sample_per_shard =
    `shard_size`); img2dataset's counts must match the rows and the tar. Writes `out_stats`:
    img2dataset's ``_stats.json`` counts plus the tar's sha256, its rows and the layout, which
    :func:`read_shard` uses to number the images. Nothing is copied.
    """
    tar_path = Path(tar_path)
    try:
        stats = json.loads(Path(stats_path).read_text())
    except FileNotFoundError:
        raise ShardError(
            f"shard {shard}: {stats_path} is missing (img2dataset did not finish the shard?); "
            "run img2dataset on it again"
        ) from None
    counts = row_counts(parquets)
    ranges = img2dataset_ranges(counts, shard_size)
    if not 0 <= shard < len(ranges):
        raise ShardError(
            f"shard {shard}: the collection's {sum(counts)} rows make {len(ranges)} img2dataset shards"
        )
    lo, hi = ranges[shard]
    rows = rows_between(parquets, lo, hi, url_col, caption_col, (), counts)
    digits = sample_digits(shard_size)
    members = _members(tar_path, shard, redownload_advice(tar_path, on_disk=True))
    for key, parts in sorted(members.items()):
        if "json" not in parts:
            raise ShardError(f"shard {shard}: {tar_path} member {key}.*: has no .json")
        meta = json.loads(parts["json"])
        owner, row = divmod(int(key), 10**digits)
        if owner != shard or row >= hi - lo:
            raise ShardError(
                f"shard {shard}: {tar_path} member {key}: its key is row {row} of shard {owner}, not of "
                f"this shard's {hi - lo} rows (was img2dataset run with number_sample_per_shard = "
                f"shard_size = {shard_size}, on these parquets?)"
            )
        if meta.get("url") != rows["url"][row]:
            raise ShardError(
                f"shard {shard}: {tar_path} member {key}: url {meta.get('url')!r}, but collection row "
                f"{lo + row} has {rows['url'][row]!r} (img2dataset's input must be these parquets, in "
                "this order)"
            )
    if stats.get("count", hi - lo) != hi - lo or stats.get("successes") != len(members):
        raise ShardError(
            f"shard {shard}: {stats_path} counts {stats.get('count')} rows and {stats.get('successes')} "
            f"images, but the shard has {hi - lo} rows and {tar_path} holds {len(members)} images "
            "(an incomplete or mismatched shard)"
        )
    _check_recorded(tar_path, shard, recorded_sha256(manifest, tar_path), manifest)
    record = {
        **{k: stats[k] for k in ("count", "successes", "failed_to_download", "status_dict") if k in stats},
        "shard": int(shard),
        "layout": IMG2DATASET,
        "tar": str(tar_path),
        "rows": [int(lo), int(hi)],
        "sample_digits": digits,
        "sha256": sha256_file(tar_path),
    }
    with atomic_path(out_stats) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    log.info("shard %d: %s holds %d of %d rows (img2dataset)", shard, tar_path, len(members), hi - lo)
    return record


def key_of(index: int) -> str:
    """A reference image's webdataset key: its row index, zero-padded."""
    return f"{int(index):0{KEY_DIGITS}d}"


# ---------------------------------------------------------------- writing a shard


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _extension(data: bytes) -> str:
    """The file extension of image bytes' format; ``jpg`` when the header cannot be read (the reader
    then reports the member as corrupt)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return EXTENSIONS.get(im.format, "jpg")
    except Exception:
        return "jpg"


def write_shard(tar_path: str | os.PathLike, rows, images: dict[int, bytes], shard: int) -> None:
    """Write the webdataset tar of `rows` (shard_rows' frame) with the fetched `images` {index: bytes}.

    Rows without image bytes are left out. Members are in index order with mtime 0 (deterministic).
    """
    id_cols = [c for c in rows.columns if c not in ("index", "url", "caption")]
    with (
        atomic_path(tar_path, suffix=".tar") as tmp,
        tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for row in rows.itertuples(index=False):
            data = images.get(int(row.index))
            if data is None:
                continue
            key = key_of(row.index)
            meta = {"key": key, "index": int(row.index), "shard": int(shard), "url": row.url}
            meta.update({"caption": row.caption, **{c: _plain(getattr(row, c)) for c in id_cols}})
            _tar_add(tar, f"{key}.{_extension(data)}", data)
            _tar_add(tar, f"{key}.txt", str(row.caption).encode())
            _tar_add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())


def _plain(value):
    """A parquet cell as a JSON value (numpy scalars to Python)."""
    return value.item() if hasattr(value, "item") else value


def recorded_sha256(manifest, tar_path) -> str | None:
    """The sha256 a collection's manifest (``sha256sum`` format, names relative to the shards folder,
    e.g. ``cd shards && sha256sum *.tar``) records for a shard tar, or None (no manifest, no line)."""
    if not manifest:
        return None
    return read_manifest(manifest).get(Path(tar_path).name)


def _check_recorded(tar_path: Path, shard: int, expected: str | None, manifest) -> None:
    """Remove the tar and raise when its sha256 differs from the recorded one."""
    actual = sha256_file(tar_path)
    if expected and actual != expected:
        tar_path.unlink()
        raise ShardError(
            f"shard {shard}: downloaded {tar_path} has sha256 {actual}, but {manifest} records {expected}: "
            "the web content changed since the manifest was written (dead or replaced links); remove its "
            "line from the manifest to accept the new content"
        )


def download_shard(
    rows,
    shard: int,
    tar_path,
    stats_path,
    threads: int = 8,
    timeout: float = 10.0,
    retries: int = 1,
    manifest=None,
    engine: str = "diffrep",
) -> dict:
    """Fetch a shard's URLs into its tar; write and return its stats.

    `engine`: ``diffrep`` (diffrep.imagefetch) or ``img2dataset`` (diffrep.datasets.fetch_with_img2dataset,
    in its own conda env; no resizing or re-encoding, one retry); both keep the fetched bytes.

    A shard of which no image could be fetched raises :class:`ShardError` naming the shard and the
    commonest reasons; partial shards are written and their failures counted in the stats. With a
    `manifest` that records the tar's sha256, a tar with other content is removed and raises.
    """
    Path(tar_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".shard{shard}.", dir=Path(tar_path).parent) as cache:
        items = [(key_of(i), u) for i, u in zip(rows["index"], rows["url"])]
        if engine == "img2dataset":
            from diffrep.datasets import fetch_with_img2dataset

            results = fetch_with_img2dataset(items, Path(cache), threads=threads, timeout=timeout)
        elif engine == "diffrep":
            results = download_all(items, cache, threads=threads, timeout=timeout, retries=retries)
        else:
            raise ShardError(f"download engine {engine!r}; allowed: diffrep, img2dataset")
        images = {int(k): Path(r).read_bytes() for k, r in results.items() if not isinstance(r, str)}
    failures = [{"index": int(k), "reason": r} for k, r in results.items() if isinstance(r, str)]
    status = Counter(f["reason"] for f in failures)
    if not images:
        raise ShardError(
            f"shard {shard}: no image of its {len(rows)} URLs could be fetched "
            f"(rows {rows['index'].min()}..{rows['index'].max()}); reasons: {dict(status.most_common(3))}"
        )
    write_shard(tar_path, rows, images, shard)
    _check_recorded(Path(tar_path), shard, recorded_sha256(manifest, tar_path), manifest)
    stats = {
        "shard": int(shard),
        "count": len(rows),
        "successes": len(images),
        "failed_to_download": len(failures),
        "status_dict": dict(status),
        "failures": failures,
        "sha256": sha256_file(tar_path),
        "engine": engine,
    }
    with atomic_path(stats_path) as tmp:
        tmp.write_text(json.dumps(stats, indent=1))
    log.info("shard %d: %d of %d images fetched", shard, len(images), len(rows))
    return stats


def record_failed_shard(rows, shard: int, tar_path, stats_path, error: str) -> dict:
    """Record a shard that fetched nothing: an empty tar and stats with 0 successes and the error.

    Used when the user allows missing shards; every later step treats the shard as missing.
    """
    write_shard(tar_path, rows, {}, shard)
    stats = {
        "shard": int(shard),
        "count": len(rows),
        "successes": 0,
        "failed_to_download": len(rows),
        "error": error,
        "sha256": sha256_file(tar_path),
    }
    with atomic_path(stats_path) as tmp:
        tmp.write_text(json.dumps(stats, indent=1))
    log.error("%s (recorded as a missing shard: allow_missing_shards)", error)
    return stats


# ---------------------------------------------------------------- reading a shard


@dataclass(frozen=True)
class ShardImage:
    """One image of a shard: its key, the bytes and the metadata of its ``.json`` member."""

    key: str
    member: str
    data: bytes
    meta: dict


def image_problem(data: bytes) -> str | None:
    """Why image bytes are not a usable 8-bit RGB image (a reason), or None when they are."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
    except Exception as err:  # PIL raises many types for undecodable data
        return f"corrupt: {type(err).__name__}: {err}"
    if mode != "RGB":
        return f"non-RGB: mode {mode} ({MODE_NAMES.get(mode, 'not 8-bit RGB')})"
    return None


def stats_path_of(tar_path) -> Path:
    """The stats file beside a shard tar: ``{shard}_stats.json`` for ``{shard}.tar`` (the name both
    the downloader and img2dataset use)."""
    tar_path = Path(tar_path)
    return tar_path.with_name(f"{tar_path.stem}_stats.json")


def tar_path_of(stats_path) -> Path:
    """The shard tar beside a downloaded shard's stats file (the inverse of :func:`stats_path_of`)."""
    stats_path = Path(stats_path)
    return stats_path.with_name(stats_path.name.removesuffix("_stats.json") + ".tar")


def redownload_advice(tar_path, stats_path=None, on_disk: bool = False) -> str:
    """What to do about a shard tar that is broken or not the one its stats record: delete the tar and
    its stats (both named) and re-run, so that download_shard fetches the shard again; for an
    img2dataset shard on disk (`on_disk`), fetch it again with img2dataset."""
    stats_path = stats_path_of(tar_path) if stats_path is None else stats_path
    if on_disk:
        return (
            f"fetch the shard again with img2dataset (it rewrites {tar_path} and its _stats.json), then "
            "re-run snakemake: register_shard checks the new tar"
        )
    return (
        f"delete {tar_path} and {stats_path}, then re-run snakemake: download_shard fetches the shard again"
    )


def _after(member: tarfile.TarInfo | None) -> str:
    """Where in a tar a header is: after which member (or at its start)."""
    return f"after member {member.name}" if member is not None else "at the start of the file"


def _end_problem(tar_path: Path, offset: int, size: int, last: tarfile.TarInfo | None) -> str | None:
    """Why the bytes where tarfile stopped reading (`offset`) are not the end-of-archive marker (a zero
    block), or None when they are. tarfile stops quietly at a missing, cut or invalid header after
    the first member, so this tells a whole tar from a cut or corrupt one."""
    with open(tar_path, "rb") as f:
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) == tarfile.BLOCKSIZE and block == tarfile.NUL * tarfile.BLOCKSIZE:
        return None
    if not block:
        return f"truncated: the file ends at byte {size}, {_after(last)}, without the end-of-archive marker"
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated: the file ends at byte {size}, inside the header {_after(last)}"
    return f"corrupt: the header at byte {offset}, {_after(last)}, is not a tar header"


def _broken_member(info, last, size: int, err: Exception) -> str:
    """Where a tar broke while tarfile read `info`'s data (or, with `info` None, the header after
    `last`), for a file of `size` bytes."""
    if info is not None:
        start, stop = info.offset_data, info.offset_data + info.size
        if size < stop:
            return (
                f"truncated: the file ends at byte {size}, inside member {info.name} (bytes {start}..{stop})"
            )
        return f"corrupt: member {info.name} at byte {start} cannot be read ({err})"
    if last is not None and size < last.offset_data + last.size + tarfile.BLOCKSIZE:
        return f"truncated: the file ends at byte {size}, inside the padding of member {last.name}"
    return f"corrupt: {_after(last)} ({err})"


def tar_members(tar_path) -> tuple[dict[str, dict[str, bytes]], str | None]:
    """Read a tar member by member: ``({key: {extension: bytes}}, problem)``, where `problem` says how
    the tar is truncated or corrupt (the member being read and the byte where it broke), or is None
    for a whole tar (every member read and the end-of-archive marker found)."""
    tar_path = Path(tar_path)
    size = tar_path.stat().st_size
    if size == 0:
        return {}, "truncated: the file is empty (0 bytes)"
    found: dict[str, dict[str, bytes]] = {}
    info = last = None
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                if info.isfile():
                    data = tar.extractfile(info).read()
                    key, _, ext = info.name.partition(".")
                    found.setdefault(key, {})[ext] = data
                last, info = info, None
            end = tar.offset
    except tarfile.TarError as err:
        if last is None and info is None:  # the first header: tarfile.open reads it
            return found, _end_problem(tar_path, 0, size, None) or f"corrupt: {err}"
        return found, _broken_member(info, last, size, err)
    return found, _end_problem(tar_path, end, size, last)


def _members(tar_path: Path, shard: int, advice: str | None = None) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of a tar; a truncated or corrupt tar raises naming the member, the
    byte where it broke and what to do (`advice`, by default :func:`redownload_advice`)."""
    found, problem = tar_members(tar_path)
    if problem:
        raise ShardError(f"shard {shard}: {tar_path} is {problem}; {advice or redownload_advice(tar_path)}")
    return found


def _check_against_stats(tar_path: Path, shard: int, members: dict, stats: dict, advice: str) -> None:
    """Raise when a whole tar is not the one its stats record: another sha256 (checked first: it
    names the cause), or another number of images."""
    actual = sha256_file(tar_path) if stats.get("sha256") else None
    if actual and actual != stats["sha256"]:
        raise ShardError(
            f"shard {shard}: {tar_path} has sha256 {actual}, but its stats record {stats['sha256']} "
            f"(re-downloaded with different content?); {advice}"
        )
    if len(members) != stats.get("successes", len(members)):
        raise ShardError(
            f"shard {shard}: {tar_path} holds {len(members)} images but its stats record "
            f"{stats['successes']} (a tar from another download?); {advice}"
        )


def read_shard(
    tar_path: str | os.PathLike,
    shard: int,
    stats: dict | None = None,
    bad_images: str = "drop",
    stats_path: str | os.PathLike | None = None,
) -> tuple[list[ShardImage], list[dict]]:
    """The usable images of a shard tar, in key order, and the bad ones (shard, member, reason).

    The tar is read member by member first: a truncated or corrupt tar raises naming the member and
    the byte where it broke. Then `stats` (the shard's ``_stats.json``, at `stats_path`, named in the
    messages): its ``sha256`` must be the tar's and its ``successes`` the images found. `bad_images`:
    ``fail`` raises on a corrupt or non-RGB image naming shard and member, ``drop`` lists it.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ShardError(f"bad_images {bad_images!r}; allowed: {', '.join(BAD_IMAGE_POLICIES)}")
    tar_path = Path(tar_path)
    on_disk = bool(stats) and stats.get("layout") == IMG2DATASET
    advice = redownload_advice(tar_path, stats_path, on_disk=on_disk)
    members = _members(tar_path, shard, advice)
    if stats:
        _check_against_stats(tar_path, shard, members, stats, advice)
    good, bad = [], []
    for key in sorted(members):
        parts = members[key]
        ext = next((e for e in parts if f".{e.lower()}" in IMAGE_SUFFIXES), None)
        if ext is None or "json" not in parts:
            raise ShardError(f"shard {shard}: {tar_path} member {key}.*: needs an image and a .json")
        member = f"{key}.{ext}"
        reason = image_problem(parts[ext])
        if reason is None:
            meta = json.loads(parts["json"])
            if stats and stats.get("layout") == IMG2DATASET:  # img2dataset's key -> the collection row
                meta["index"] = stats["rows"][0] + int(key) % 10 ** stats["sample_digits"]
            # the image's key is its row's (key_of), whatever the tar calls it
            good.append(ShardImage(key_of(meta["index"]), member, parts[ext], meta))
        elif bad_images == "fail":
            raise ShardError(f"shard {shard}: {tar_path} member {member}: {reason} (bad_images is 'fail')")
        else:
            bad.append({"shard": int(shard), "member": member, "reason": reason})
    return good, bad
