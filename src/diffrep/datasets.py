"""Dataset preparation: images + metadata.parquet + images.sha256 + report.json (docs/formats.md).

Sources (``datasets.<name>.source`` in the config):

- ``folder``, ``layout: laion`` — upstream's LAION-10k: image files (any depth) and a caption JSON
  ``{file: [original caption, BLIP caption 1, ...]}`` (``captions_file``, default
  ``captions.json``). Keys may be paths relative to the folder, bare file names or the absolute
  paths of the machine that wrote the JSON (upstream keys by full path): an image matches the key
  equal to its relative path, else a key ending in ``/<relative path>``, else a unique key with its
  file name. An optional ``classes.json`` ``{file: class}`` gives class labels.
- ``folder``, ``layout: imagefolder`` — Imagenette: one sub-folder per class; the class is the
  folder name, except that Imagenette's WordNet ids are named as upstream names them
  (``n01440764`` → ``tench``, :data:`IMAGENETTE_CLASSES`). A ``captions_file`` is optional.
- ``build`` — ``diffrep.builders.dataset_builder(name)(staging_dir, seed=..., **options)`` writes a
  staging folder in the laion layout with ``classes.json``, or, without a ``captions.json``, in the
  imagefolder layout; it is ingested like a user's folder.
- ``urls`` — a table (parquet, csv or tsv) with columns ``url`` and ``caption`` (a string, or a
  list whose [0] is the image's own caption) and optional ``id`` and ``class``. Images are fetched
  by :mod:`diffrep.imagefetch` (``engine: diffrep``, the default: threaded, resumable: finished
  files are kept in ``resources/data/.{name}.download/`` and not fetched again) or by img2dataset
  (``engine: img2dataset``, in its own conda env ``envs/optional/img2dataset.yaml``: it pins
  pandas<3); what could not be fetched is listed in ``report.json`` under ``failed_downloads``.

Every image is checked (:mod:`diffrep.images`); bad ones fail the job naming the file, or are
dropped and listed, as ``bad_images`` says. Kept images are copied byte for byte to
``images/{id}.{ext}``.

Pinning. ``images.sha256`` lists the sha256 of every kept image. When the config pins
``datasets.<name>.sha256`` (``{"images/<file>": sha256}``), the prepared dataset must equal the
pin exactly (same files, same hashes) or the job fails naming the differences. A ``urls`` dataset
without a config pin is pinned by its first successful preparation: the manifest is copied to
``resources/data/{name}.pinned.sha256`` (outside the job's outputs, so it survives re-runs), and a
later re-fetch that differs fails naming the differences; delete that file to accept new data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diffrep.checksums import ChecksumError, compare, format_manifest, read_manifest, sha256_file
from diffrep.fileio import atomic_path, staged_dir
from diffrep.images import (
    EXTENSIONS,
    IMAGE_SUFFIXES,
    ImageInfo,
    apply_policy,
    check_image,
    list_images,
    to_rgb8,
)

log = logging.getLogger(__name__)

# Imagenette's class folders (WordNet ids) and upstream's names for them (datasets.get_classnames).
IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}

METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("class", pa.string()),
        ("captions", pa.list_(pa.string())),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("sha256", pa.string()),
        ("source", pa.string()),
    ]
)


METADATA_COLUMNS = tuple(METADATA_SCHEMA.names)


class DatasetError(ValueError):
    """A dataset that cannot be prepared; the message names the file, key or value."""


@dataclass
class Candidate:
    """One image before checking: where it is, what it is called in reports, its labels."""

    path: Path  # local file
    source: str  # original path or URL (reported, stored in metadata)
    rel: str  # path relative to the source folder (decides the id)
    captions: list[str] = field(default_factory=list)
    cls: str | None = None
    id: str | None = None  # explicit id (urls tables)


# ------------------------------------------------------------------------------------- helpers


def _as_captions(value, where: str) -> list[str]:
    """A caption entry as a list of non-empty strings (a bare string is one caption)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise DatasetError(f"{where}: captions must be a string or a list of strings, got {value!r:.80}")
    return [str(c) for c in value]


def _load_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{what} {path}: expected an object {{file: ...}}, got {type(data).__name__}")
    return data


class _KeyIndex:
    """Match image paths to the keys of a caption/class JSON (relative, suffix or file name)."""

    def __init__(self, mapping: dict):
        self.mapping = mapping
        self.by_name: dict[str, list[str]] = {}
        for key in mapping:
            self.by_name.setdefault(Path(str(key).replace("\\", "/")).name, []).append(key)
        self.used: set[str] = set()

    def find(self, rel: str):
        if rel in self.mapping:
            key = rel
        else:
            keys = self.by_name.get(Path(rel).name, [])
            suffixed = [k for k in keys if str(k).replace("\\", "/").endswith("/" + rel)]
            if len(suffixed) == 1:
                key = suffixed[0]
            elif len(keys) == 1:
                key = keys[0]
            else:
                return None
        self.used.add(key)
        return self.mapping[key]

    def unused(self) -> list[str]:
        return [k for k in self.mapping if k not in self.used]


# ------------------------------------------------------------------------------------- layouts


def collect_laion(folder: Path, captions_file: str | None, policy: str, classes_file: str = "classes.json"):
    """Candidates of a laion-layout folder; returns (candidates, dropped report entries)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist (datasets.*.source.path)")
    cap_path = folder / (captions_file or "captions.json")
    captions = _KeyIndex(_load_json(cap_path, "caption file"))
    classes = (
        _KeyIndex(_load_json(folder / classes_file, "class file"))
        if (folder / classes_file).exists()
        else None
    )
    out, dropped = [], []
    for path in list_images(folder, recursive=True):
        rel = path.relative_to(folder).as_posix()
        caps = captions.find(rel)
        if caps is None:
            dropped.append(apply_policy(path, f"no captions in {cap_path.name}", policy))
            continue
        caps = _as_captions(caps, f"{cap_path}: entry {rel!r}")
        if not caps:
            dropped.append(apply_policy(path, f"empty caption list in {cap_path.name}", policy))
            continue
        cls = classes.find(rel) if classes else None
        out.append(
            Candidate(
                path=path, source=str(path), rel=rel, captions=caps, cls=None if cls is None else str(cls)
            )
        )
    for key in captions.unused():
        dropped.append(apply_policy(key, f"listed in {cap_path.name}, but no such image in {folder}", policy))
    if not out and not dropped:
        raise DatasetError(f"dataset folder {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out, dropped


def collect_imagefolder(folder: Path, captions_file: str | None, policy: str):
    """Candidates of a folder with one sub-folder per class; returns (candidates, dropped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist (datasets.*.source.path)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"imagefolder dataset {folder}: no class sub-folders (layout: imagefolder expects {folder}/<class>/<image>)"
        )
    names = {d.name: d.name for d in class_dirs}
    if all(d.name in IMAGENETTE_CLASSES for d in class_dirs):
        names = {d.name: IMAGENETTE_CLASSES[d.name] for d in class_dirs}
        log.info(
            "Imagenette class folders: named as upstream (%s)",
            ", ".join(f"{k}={v}" for k, v in names.items()),
        )
    captions = _KeyIndex(_load_json(folder / captions_file, "caption file")) if captions_file else None
    out, dropped = [], []
    for path in list_images(folder, recursive=True):
        rel = path.relative_to(folder).as_posix()
        if "/" not in rel:
            dropped.append(apply_policy(path, "not inside a class sub-folder", policy))
            continue
        caps = []
        if captions is not None:
            found = captions.find(rel)
            caps = [] if found is None else _as_captions(found, f"{folder / captions_file}: entry {rel!r}")
        out.append(
            Candidate(path=path, source=str(path), rel=rel, captions=caps, cls=names[rel.split("/")[0]])
        )
    return out, dropped


def read_url_table(path: str | Path) -> pd.DataFrame:
    """The URL table of a ``urls`` source: columns url, caption (+ optional id, class)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"URL table {path} does not exist (datasets.*.source.path)")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    else:
        raise DatasetError(f"URL table {path}: unknown format {path.suffix!r}; allowed: .parquet, .csv, .tsv")
    missing = {"url", "caption"} - set(table.columns)
    if missing:
        raise DatasetError(
            f"URL table {path}: missing column(s) {', '.join(sorted(missing))}; has {', '.join(table.columns)}"
        )
    return table


def fetch_with_img2dataset(
    items: list[tuple[str, str]], cache: Path, threads: int = 4, timeout: float = 10.0
) -> dict:
    """The optional engine: img2dataset (its own conda env) fetches; returns {id: path or reason}.

    img2dataset writes ``{output}/{shard}/{key}.{ext}`` plus one ``{shard}.parquet`` per shard with
    ``key``, ``status`` ("success" or not) and ``error_message``; the diffrep id travels along as
    an additional column. Original bytes are kept (no resizing, no re-encoding).
    """
    try:
        from img2dataset import download
    except ImportError:
        raise DatasetError(
            "datasets.*.source.engine is 'img2dataset', but img2dataset is not installed here; it pins "
            "pandas<3, so it lives in its own env: run with --sdm conda (envs/optional/img2dataset.yaml), "
            "or use engine: diffrep (the built-in downloader)"
        ) from None
    out = cache / "img2dataset"
    cache.mkdir(parents=True, exist_ok=True)
    url_list = cache / "url_list.parquet"
    pd.DataFrame({"url": [u for _, u in items], "diffrep_id": [i for i, _ in items]}).to_parquet(url_list)
    download(
        url_list=str(url_list),
        input_format="parquet",
        url_col="url",
        save_additional_columns=["diffrep_id"],
        output_format="files",
        output_folder=str(out),
        processes_count=1,
        thread_count=max(1, threads),
        resize_mode="no",
        disable_all_reencoding=True,
        timeout=timeout,
        retries=1,
        enable_wandb=False,
        incremental_mode="incremental",
    )
    results: dict = {i: "not attempted by img2dataset" for i, _ in items}
    for shard in sorted(out.glob("*.parquet")):
        for row in pd.read_parquet(shard).to_dict("records"):
            if row.get("status") == "success":
                files = [
                    p for p in (out / shard.stem).glob(f"{row['key']}.*") if p.suffix not in (".txt", ".json")
                ]
                results[str(row["diffrep_id"])] = files[0] if files else "img2dataset: success without a file"
            else:
                results[str(row["diffrep_id"])] = (
                    f"img2dataset: {row.get('error_message') or row.get('status')}"
                )
    return results


def collect_urls(
    table_path: Path, cache: Path, threads: int = 4, timeout: float = 10.0, engine: str = "diffrep"
):
    """Fetch the images of a URL table; returns (candidates, failed_downloads)."""
    from diffrep.imagefetch import download_all

    table = read_url_table(table_path)
    ids = [str(i) for i in table["id"]] if "id" in table.columns else [f"{i:06d}" for i in range(len(table))]
    ids = [_safe_id(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"URL table {table_path}: ids are not unique")
    items = list(zip(ids, table["url"].astype(str)))
    if engine == "img2dataset":
        results = fetch_with_img2dataset(items, cache, threads=threads, timeout=timeout)
    elif engine == "diffrep":
        results = download_all(items, cache, threads=threads, timeout=timeout)
    else:
        raise DatasetError(f"datasets.*.source.engine {engine!r}; allowed: diffrep, img2dataset")
    out, failed = [], []
    for i, (id_, row) in enumerate(zip(ids, table.to_dict("records"))):
        res = results[id_]
        if isinstance(res, str):
            failed.append({"url": row["url"], "reason": res})
            continue
        caps = row["caption"]
        caps = list(caps) if not isinstance(caps, str) and hasattr(caps, "__len__") else caps
        cls = row.get("class")
        cls = None if cls is None or (isinstance(cls, float) and cls != cls) else str(cls)
        out.append(
            Candidate(
                path=res,
                source=row["url"],
                rel=id_,
                captions=_as_captions(caps, f"{table_path}: row {i}"),
                cls=cls,
                id=id_,
            )
        )
    return out, failed


# ------------------------------------------------------------------------------------- sources


def _from_folder(name: str, src: dict, policy: str, **_) -> tuple[list[Candidate], list[dict], list[dict]]:
    if src.get("layout", "laion") == "laion":
        cands, dropped = collect_laion(Path(src["path"]), src.get("captions_file"), policy)
    else:
        cands, dropped = collect_imagefolder(Path(src["path"]), src.get("captions_file"), policy)
    return cands, dropped, []


def _from_build(name: str, src: dict, policy: str, *, scratch: Path, seed: int, **_):
    from diffrep.builders import dataset_builder

    staging = scratch / "staging"
    dataset_builder(src["builder"])(staging, seed=seed, **src.get("options", {}))
    if (staging / "captions.json").exists():
        cands, dropped = collect_laion(staging, "captions.json", policy)
    else:  # a build without a caption JSON is in the imagefolder layout
        cands, dropped = collect_imagefolder(staging, None, policy)
    for c in cands:
        c.source = f"build:{src['builder']}/{c.rel}"
    return cands, dropped, []


def _from_urls(name: str, src: dict, policy: str, *, cache: Path, threads: int, **_):
    cands, failed = collect_urls(
        Path(src["path"]), cache, threads=threads, engine=src.get("engine", "diffrep")
    )
    return cands, [], failed


# Every source type and its collector: collector(name, src, policy, scratch=, cache=, seed=, threads=)
# returns (candidates, dropped images, failed downloads).
SOURCE_COLLECTORS = {"folder": _from_folder, "build": _from_build, "urls": _from_urls}


def collect(name: str, src: dict, policy: str, **where) -> tuple[list[Candidate], list[dict], list[dict]]:
    """The candidate images of dataset `name`'s source; (candidates, dropped, failed downloads).

    `where`: ``scratch`` (a temporary folder for built datasets), ``cache`` (downloads kept across
    re-runs), ``seed`` (of a builder) and ``threads`` (for downloads).
    """
    if src["type"] not in SOURCE_COLLECTORS:
        raise DatasetError(
            f"datasets.{name}.source.type {src['type']!r}; allowed: {', '.join(SOURCE_COLLECTORS)}"
        )
    if src["type"] in ("folder", "urls") and not Path(src["path"]).exists():
        what = {"folder": f"a folder in the {src.get('layout', 'laion')} layout", "urls": "a URL table"}[
            src["type"]
        ]
        raise DatasetError(
            f"dataset {name}: {src['path']} does not exist; put {what} there or set "
            f"datasets.{name}.source.path (docs: diffrep.datasets)"
        )
    return SOURCE_COLLECTORS[src["type"]](name, src, policy, **where)


# ------------------------------------------------------------------------------------- ingest


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip(".") or "_"


def assign_ids(cands: list[Candidate]) -> None:
    """Ids are file stems (``shapes_000``); where stems collide, the relative path (``a__x``)."""
    stems = [c.id or _safe_id(Path(c.rel).stem) for c in cands]
    if len(set(stems)) != len(stems):
        stems = [c.id or _safe_id(str(Path(c.rel).with_suffix("")).replace("/", "__")) for c in cands]
    if len(set(stems)) != len(stems):
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        raise DatasetError(f"image ids are not unique: {', '.join(dupes[:10])}")
    for c, s in zip(cands, stems):
        c.id = s


def ingest(
    cands: list[Candidate], images: Path, policy: str, min_size: int, max_pixels: int, non_rgb: str = "bad"
):
    """Check every candidate, copy the usable ones into the folder `images`; return (rows, dropped, converted).

    ``non_rgb: convert`` re-encodes decodable non-RGB images as RGB 8-bit PNG (listed in `converted`).
    """
    from tqdm import tqdm

    assign_ids(cands)
    images.mkdir(parents=True, exist_ok=True)
    rows, dropped, converted = [], [], []
    for c in tqdm(cands, desc="checking images", mininterval=5):
        info = check_image(c.path, min_size=min_size, max_pixels=max_pixels)
        if isinstance(info, str) and info.startswith("non-RGB") and non_rgb == "convert":
            file = f"{c.id}.png"
            rgb = to_rgb8(c.path)
            rgb.save(images / file, format="PNG")
            converted.append({"source": c.source, "reason": info})
            info = ImageInfo("PNG", rgb.width, rgb.height)
        elif isinstance(info, str):
            dropped.append(apply_policy(c.source, info, policy))
            continue
        else:
            file = f"{c.id}.{EXTENSIONS.get(info.format, info.format.lower())}"
            shutil.copyfile(c.path, images / file)
        rows.append(
            {
                "id": c.id,
                "file": file,
                "class": c.cls,
                "captions": c.captions,
                "width": info.width,
                "height": info.height,
                "sha256": sha256_file(images / file),
                "source": c.source,
            }
        )
    return rows, dropped, converted


def check_pin(name: str, ds: dict, root: Path, actual: dict[str, str]) -> str | None:
    """Compare the prepared images' {images/file: sha256} with the dataset's pin, if it has one.

    The pin is the config's ``datasets.<name>.sha256``, else, for a ``urls`` dataset, the manifest
    of its first preparation (``{name}.pinned.sha256`` next to the dataset folder). Returns where
    the pin lives (``config``, the lock file's path, or None); raises DatasetError naming every
    changed, missing and new file.
    """
    if ds.get("sha256"):
        pinned, where, pin = ds["sha256"], f"config datasets.{name}.sha256", "config"
    elif ds["source"]["type"] == "urls":
        lock = root.parent / f"{root.name}.pinned.sha256"
        pin = str(lock)
        if not lock.exists():
            return pin
        pinned, where = read_manifest(lock), f"{lock}; delete it to accept the new data"
    else:
        return None
    try:
        compare(actual, pinned, where=str(root))
    except ChecksumError as err:
        raise DatasetError(f"dataset {name} differs from its pin ({where}): {err}") from None
    return pin


def check_kept(
    name: str, ds: dict, rows: list[dict], dropped: list[dict], failed: list[dict], converted: list[dict]
) -> None:
    """Fail unless some image was kept (with a class each when ``has_classes``); log what was not."""
    if not rows:
        raise DatasetError(
            f"dataset {name}: no usable image ({len(dropped)} dropped, {len(failed)} not fetched); see the log"
        )
    if ds.get("has_classes") and any(r["class"] is None for r in rows):
        missing = [r["file"] for r in rows if r["class"] is None]
        raise DatasetError(
            f"dataset {name} has has_classes: true, but {len(missing)} image(s) have no class, e.g. {missing[0]}"
        )
    for d in dropped:
        log.warning("dropped %s: %s", d["source"], d["reason"])
    for f in failed:
        log.warning("not fetched %s: %s", f["url"], f["reason"])
    for f in converted:
        log.info("converted to RGB 8-bit PNG %s: %s", f["source"], f["reason"])


def prepare_dataset(
    name: str,
    ds: dict,
    images_dir: str | Path,
    metadata: str | Path,
    manifest: str | Path,
    report: str | Path,
    seed: int = 0,
    threads: int = 4,
) -> dict:
    """Prepare dataset `name` (its config `ds`, defaults filled) into the four outputs.

    Collect the source's images (:func:`collect`), check and copy them (:func:`ingest`), check the
    pin (:func:`check_pin`). Every output is written under a temporary name and renamed into place
    only when all are complete (the images first, the manifest last), so a failed job leaves
    nothing. Returns the report dict.
    """
    images_dir, metadata, manifest, report = map(Path, (images_dir, metadata, manifest, report))
    root, src, policy = images_dir.parent, ds["source"], ds.get("bad_images", "fail")
    with contextlib.ExitStack() as stack:  # exits in reverse: images, metadata, report, manifest
        tmp_manifest = stack.enter_context(atomic_path(manifest))
        tmp_report = stack.enter_context(atomic_path(report, suffix=".json"))
        tmp_metadata = stack.enter_context(atomic_path(metadata, suffix=".parquet"))
        tmp_images = stack.enter_context(staged_dir(images_dir, replace=True))
        scratch = stack.enter_context(
            tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.prepare.")
        )
        cache = root.parent / f".{root.name}.download"
        cands, dropped, failed = collect(
            name, src, policy, scratch=Path(scratch), cache=cache, seed=seed, threads=threads
        )
        n_input = len(cands) + len(dropped) + len(failed)
        rows, bad, converted = ingest(
            cands,
            tmp_images,
            policy,
            ds.get("min_size", 64),
            ds.get("max_pixels", 100_000_000),
            ds.get("non_rgb", "bad"),
        )
        dropped += bad
        check_kept(name, ds, rows, dropped, failed, converted)
        actual = {f"images/{r['file']}": r["sha256"] for r in rows}
        rep = {
            "n_input": n_input,
            "n_kept": len(rows),
            "dropped": dropped,
            "failed_downloads": failed,
            "bad_images": policy,
            "converted": converted,
            "pin": check_pin(name, ds, root, actual),
        }
        pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), tmp_metadata)
        tmp_report.write_text(json.dumps(rep, indent=1) + "\n")
        tmp_manifest.write_text(format_manifest(actual))
    if rep["pin"] not in (None, "config") and not Path(rep["pin"]).exists():
        shutil.copyfile(manifest, rep["pin"])
        log.info("pinned the fetched dataset: %s (a re-fetch that differs will fail)", rep["pin"])
    log.info(
        "dataset %s: %d of %d images kept, %d dropped, %d not fetched",
        name,
        len(rows),
        n_input,
        len(dropped),
        len(failed),
    )
    return rep


def read_metadata(path: str | Path) -> pd.DataFrame:
    """metadata.parquet with `captions` as Python lists of str.

    Raises DatasetError naming the file and the missing columns when it is not a prepared
    dataset's metadata (docs/formats.md), instead of a bare KeyError somewhere downstream.
    """
    df = pd.read_parquet(path)
    missing = [c for c in METADATA_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: metadata table lacks column(s) {', '.join(missing)}; expected "
            f"{', '.join(METADATA_COLUMNS)} (re-run prepare_dataset)"
        )
    duplicated = df["id"][df["id"].duplicated()].tolist()
    if duplicated:
        raise DatasetError(f"{path}: duplicated image id(s) {', '.join(map(str, duplicated[:5]))}")
    df["captions"] = [list(c) if c is not None else [] for c in df["captions"]]
    return df
