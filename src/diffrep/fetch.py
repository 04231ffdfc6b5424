"""Model acquisition: try a model's sources in order, verify every file, write the manifest last.

A models entry of the config (schemas/config.schema.yaml) names a `kind` and ordered `sources`:

- ``modelscope``: ``modelscope.hub.snapshot_download(model_id=repo, revision=...)`` into the
  ModelScope cache; token from MODELSCOPE_API_TOKEN only (never a stored login), never logged;
- ``huggingface``: ``huggingface_hub.snapshot_download(repo_id=repo, revision=...)`` into the
  Hugging Face cache; token from HF_TOKEN only (never a stored login), never logged;
- ``url``: one file over HTTP(S), resumable (HTTP Range), written to a temporary name under
  ``resources/models/.partial/{model}/`` (which survives a failed job, so a retry resumes) and
  renamed once complete and checked against the URL's ``hash_prefix`` and the pinned sha256;
- ``build``: ``diffrep.builders.model_builder(builder)(out_dir, seed=seed, **options)``.

Hub downloads fetch only what the kind's loader needs (:func:`allow_patterns`: safetensors,
configs, tokenizer; never .ckpt/.bin/.h5/.msgpack; the requested weight variant only) into the
hub's own cache, then copy those files into a staging folder; re-running a fetch (after pinning,
or a Snakemake retry) is therefore served from the cache.

Every candidate is checked for completeness and, where ``models.<name>.sha256`` pins hashes,
file by file against the pins (every file must be pinned, every pin present). A failing source
is logged with the reason and the next one is tried; the first that passes is moved to
``resources/models/{model}/`` and only then is the manifest written. If every source fails, the
error lists each source's reason (a hash mismatch names the file, the expected and the actual
hash) and nothing is left under the output names. A hub's refusal (gated or private repository, no
such repository or revision) is reported with what to do (:func:`hub_refusal`).

The hub clients take their endpoint and cache from the environment (``HF_ENDPOINT``, ``HF_HOME``;
``MODELSCOPE_ENDPOINT``, ``MODELSCOPE_CACHE``), so a mirror or another cache folder needs no change
to the config.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from diffrep.checksums import (
    ChecksumError,
    compare,
    folder_files,
    hash_folder,
    sha256_file,
    write_manifest,
)
from diffrep.fileio import staged_dir

log = logging.getLogger("diffrep.fetch")

HF_TOKEN_ENV = "HF_TOKEN"
MODELSCOPE_TOKEN_ENV = "MODELSCOPE_API_TOKEN"
PARTIAL_DIR = ".partial"  # under resources/models/: resumable url downloads, kept across retries
CHUNK = 1 << 20

# Pickled or foreign-framework weights: never downloaded from a hub.
FOREIGN_WEIGHTS = [
    "*.ckpt",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.pb",
    "*.tflite",
    "*.ot",
    "*.mlmodel",
    "*.gguf",
]
TOKENIZER_FILES = [
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
]


# Pipeline components with weights (SD: unet, vae, text_encoder; SDXL adds text_encoder_2; SD3 has a
# transformer instead of a unet, and text_encoder_3 = T5).
DIFFUSERS_WEIGHTED = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


class FetchError(RuntimeError):
    """No source could provide a complete, verified model; the message lists every source's reason."""


class IncompleteDownload(OSError):
    """A url download ended before the announced size (the partial file is kept for resuming)."""


@dataclass(frozen=True)
class FetchJob:
    """What a source fetcher needs to know about the model besides its source entry."""

    name: str  # the model's name in the config (its folder under resources/models/)
    kind: str  # diffusers | blip | clip | sscd | fid_inception | llm
    variant: str | None = None  # hub weight variant (``fp16``); None = full precision
    pins: dict[str, str] = field(default_factory=dict)  # {path in the model folder: sha256}
    partial_dir: Path | None = None  # resumable url downloads, kept across failed jobs
    seed: int = 0  # default seed of build sources
    download_options: dict = field(default_factory=dict)  # download_url's attempts, backoff, timeout


# ---------------------------------------------------------------- what to download


def _variant(name: str, variant: str | None) -> str:
    """``model.safetensors`` -> ``model.fp16.safetensors`` (diffusers' variant naming)."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _weights(stem: str, variant: str | None) -> list[str]:
    """Patterns of one component's safetensors weights, single-file and sharded, in one variant."""
    v = f".{variant}" if variant else ""
    return [
        f"*/{stem}{v}.safetensors",
        f"*/{stem}.safetensors.index{v}.json",
        f"*/{stem}-?????-of-?????{v}.safetensors",
        f"*/{stem}{v}-?????-of-?????.safetensors",
    ]


def allow_patterns(kind: str, variant: str | None = None) -> list[str]:
    """fnmatch patterns (repo-relative paths) of the files a `kind` loader needs.

    diffusers: model_index.json, each component's config, the tokenizer, the scheduler, the
    feature extractor's config, and the UNet / VAE / text-encoder safetensors in `variant`
    (``None`` = full precision, ``"fp16"`` = the ``*.fp16.safetensors`` files only). blip / clip / llm: a
    transformers folder (configs, tokenizer, safetensors). sscd: TorchScript files. fid_inception:
    safetensors or pytorch-fid's released ``pt_inception-*.pth``.
    """
    if kind == "diffusers":
        return [
            "model_index.json",
            "*/config.json",
            "scheduler/scheduler_config.json",
            "feature_extractor/preprocessor_config.json",
            *(
                f"tokenizer*/{f}" for f in TOKENIZER_FILES
            ),  # tokenizer, tokenizer_2 (SDXL, SD3), tokenizer_3 (T5)
            *_weights("diffusion_pytorch_model", variant),
            *_weights("model", variant),
        ]
    if kind in ("blip", "clip", "llm"):
        return [
            "config.json",
            "generation_config.json",
            "preprocessor_config.json",
            *TOKENIZER_FILES,
            _variant("model.safetensors", variant),
            "model.safetensors.index.json",
            "model-?????-of-?????.safetensors",
            # llm: a sentencepiece tokenizer (Gemma) and the chat template, when shipped apart
            *(["tokenizer.model", "chat_template.jinja", "chat_template.json"] if kind == "llm" else []),
        ]
    if kind == "sscd":
        return ["*.torchscript.pt"]
    if kind == "fid_inception":
        return ["*.safetensors", "pt_inception-*.pth"]
    raise ValueError(f"unknown model kind {kind!r}; known: blip, clip, diffusers, fid_inception, llm, sscd")


def ignore_patterns(kind: str) -> list[str]:
    """Patterns never downloaded for `kind` (foreign or pickled weights, minus what the kind loads)."""
    keep = {"sscd": {"*.pt"}, "fid_inception": {"*.pth"}}.get(kind, set())
    return [p for p in FOREIGN_WEIGHTS if p not in keep]


def selected(rel: str, allow: list[str], ignore: list[str]) -> bool:
    """Whether a repo-relative path passes the allow and ignore patterns (fnmatch, as the hubs do)."""
    return any(fnmatch(rel, p) for p in allow) and not any(fnmatch(rel, p) for p in ignore)


def check_complete(kind: str, folder: Path, variant: str | None = None, where: str = "") -> None:
    """Raise FetchError unless `folder` holds what the `kind` loader needs (docs/formats.md)."""
    folder = Path(folder)
    where = where or str(folder)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def fail(what: str):
        shown = ", ".join(files[:20]) + (" ..." if len(files) > 20 else "") or "(no files)"
        raise FetchError(f"{where}: {what}; files present: {shown}")

    if kind == "diffusers":
        if "model_index.json" not in files:
            fail("no model_index.json (not a diffusers pipeline folder)")
        index = json.loads((folder / "model_index.json").read_text())
        for comp in DIFFUSERS_WEIGHTED:
            if not index.get(comp) or index[comp][0] is None:  # absent, or listed as [null, null]
                continue
            weights = [f for f in files if f.startswith(f"{comp}/") and f.endswith(".safetensors")]
            if variant:
                weights = [f for f in weights if f".{variant}" in f]
            if not weights:
                fail(
                    f"component {comp!r} has no safetensors weights"
                    + (f" in variant {variant!r}" if variant else "")
                    + " (diffrep loads safetensors only; .bin/.ckpt files are never fetched)"
                )
            if f"{comp}/config.json" not in files:
                fail(f"component {comp!r} has no config.json")
        for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            if (
                index.get(tok)
                and index[tok][0] is not None
                and not any(f.startswith(f"{tok}/") for f in files)
            ):
                fail(f"no {tok}/ files")
    elif kind in ("blip", "clip", "llm"):
        if "config.json" not in files:
            fail("no config.json (not a transformers model folder)")
        if not any(f.endswith(".safetensors") for f in files):
            fail("no safetensors weights")
    elif kind == "sscd":
        if not any(f.endswith(".pt") for f in files):
            fail("no TorchScript (*.torchscript.pt) file")
    elif kind == "fid_inception":
        if not any(f.endswith(".safetensors") or fnmatch(f, "pt_inception-*.pth") for f in files):
            fail("no InceptionV3 weights (*.safetensors or pt_inception-*.pth)")
    else:
        raise ValueError(f"unknown model kind {kind!r}")


def model_file(
    model: str | os.PathLike, patterns: list[str], what: str, error: type[Exception] = FetchError
) -> Path:
    """The one file of a model folder matching `patterns` (tried in order), or `model` itself if a file.

    Raises `error` naming the folder when it does not exist, or when the first pattern that
    matches anything matches more than one file, or none matches.
    """
    model = Path(model)
    if model.is_file():
        return model
    if not model.is_dir():
        raise error(f"{what} {model} does not exist; fetch or build it with the fetch_model rule")
    found = []
    for pattern in patterns:
        found = sorted(model.glob(pattern))
        if found:
            break
    if len(found) != 1:
        raise error(
            f"{what} folder {model}: expected one {' or '.join(patterns)}, found {[p.name for p in found] or 'none'}"
        )
    return found[0]


def log_files(folder: Path, what: str) -> int:
    """Log every file under `folder` with its size and the total; return the total in bytes."""
    total = 0
    for rel in sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()):
        size = (folder / rel).stat().st_size
        total += size
        log.info("  %12s  %s", _size(size), rel)
    log.info(
        "%s: %d file(s), %s in total", what, sum(1 for p in folder.rglob("*") if p.is_file()), _size(total)
    )
    return total


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ---------------------------------------------------------------- secrets


def scrub(text: str) -> str:
    """`text` with the values of the token environment variables replaced by ``***``."""
    for var in (HF_TOKEN_ENV, MODELSCOPE_TOKEN_ENV):
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


# ---------------------------------------------------------------- hub sources


def hf_snapshot_download(**kwargs):
    """``huggingface_hub.snapshot_download`` (imported late: a dry run never needs it)."""
    import huggingface_hub

    return huggingface_hub.snapshot_download(**kwargs)


def ms_snapshot_download(**kwargs):
    """``modelscope.hub.snapshot_download.snapshot_download`` (imported late)."""
    from modelscope.hub.snapshot_download import snapshot_download

    return snapshot_download(**kwargs)


def copy_selected(snapshot: Path, dest: Path, allow: list[str], ignore: list[str]) -> list[str]:
    """Copy the files of a hub snapshot that pass the patterns into `dest` (symlinks resolved).

    Hub caches may hold more files than this fetch asked for (earlier downloads); only the
    selected ones are copied. Hidden bookkeeping folders are skipped.
    """
    snapshot = Path(snapshot)
    files = [rel for rel in folder_files(snapshot) if selected(rel, allow, ignore)]
    if not files:
        raise FetchError(f"{snapshot}: no downloaded file matches the allow patterns {allow}")
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot / rel, dest / rel)
    return files


def fetch_huggingface(src: dict, dest: Path, job: FetchJob) -> None:
    """Download the needed files of a Hugging Face repo at `revision` and copy them to `dest`."""
    allow, ignore = allow_patterns(job.kind, job.variant), ignore_patterns(job.kind)
    token = os.environ.get(HF_TOKEN_ENV) or False  # False: never fall back to a stored login
    log.info(
        "huggingface: repo %s, revision %s, token %s, allow_patterns %s",
        src["repo"],
        src.get("revision", "main"),
        f"from {HF_TOKEN_ENV}" if token else "none",
        allow,
    )
    kwargs = dict(
        repo_id=src["repo"],
        repo_type="model",
        revision=src.get("revision", "main"),
        allow_patterns=allow,
        ignore_patterns=ignore,
        token=token,
    )
    try:
        plan = hf_snapshot_download(**kwargs, dry_run=True)
        sizes = [(f.filename, f.file_size or 0, f.will_download) for f in plan]
        commits = sorted({f.commit_hash for f in plan if getattr(f, "commit_hash", None)})
        for name, size, will in sorted(sizes):
            log.info("  %12s  %s%s", _size(size), name, "" if will else " (cached)")
        log.info(
            "huggingface: %d file(s), %s in total, %s to download; revision %s resolves to commit %s",
            len(sizes),
            _size(sum(s for _, s, _ in sizes)),
            _size(sum(s for _, s, w in sizes if w)),
            kwargs["revision"],
            ", ".join(commits) or "?",
        )
    except Exception as err:  # the listing is informative only; the download below decides
        log.info("huggingface: could not list files before downloading (%s)", scrub(str(err))[:300])
    try:
        snapshot = hf_snapshot_download(**kwargs)
    except Exception as err:
        reason = hub_refusal("huggingface", err, src, job.name, bool(token))
        if reason is None:
            raise
        raise FetchError(reason) from None
    copy_selected(Path(snapshot), dest, allow, ignore)


def gated_message(repo: str, have_token: bool) -> str:
    """What to do when a gated Hugging Face repo (SD 3.5) refuses the download."""
    why = (
        f"the account of the token in {HF_TOKEN_ENV} has not been granted access"
        if have_token
        else f"{HF_TOKEN_ENV} is not set"
    )
    return (
        f"huggingface {repo} is a gated repository and refused the download ({why}). Accept the licence on "
        f"https://huggingface.co/{repo} (logged in to Hugging Face; the licence text is "
        f"https://huggingface.co/{repo}/blob/main/LICENSE.md), then export {HF_TOKEN_ENV}=<a read token of "
        "that account> and re-run"
    )


def hub_status(err: BaseException | None) -> int | None:
    """The HTTP status behind a hub client's error, or None.

    Looked for on the error, on its ``response``, then on the errors it was raised from
    (``modelscope.hub.snapshot_download`` re-raises the client's errors as ``requests.HTTPError``).
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        response = getattr(err, "response", None)
        for status in (getattr(err, "status_code", None), getattr(response, "status_code", None)):
            if isinstance(status, int):
                return status
        err = err.__cause__ or err.__context__
    return None


def hub_refusal(hub: str, err: Exception, src: dict, model: str, have_token: bool) -> str | None:
    """What the user must do when `hub` refused source `src` of model `model`; None for other errors.

    Refusals: a gated repository (Hugging Face ``GatedRepoError``; ModelScope HTTP 401 / 403), no
    such repository (or a private one the token cannot see), no such revision.
    """
    repo = src["repo"]
    if hub == "huggingface":
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(err, GatedRepoError):  # a RepositoryNotFoundError too: asked first
            return gated_message(repo, have_token)
        if isinstance(err, RevisionNotFoundError):
            return (
                f"huggingface {repo} has no revision {src.get('revision', 'main')!r}: set the revision of this "
                f"source in models.{model}.sources to a branch, a tag or a commit of that repository (its "
                f"history: https://huggingface.co/{repo}/commits/main)"
            )
        if isinstance(err, RepositoryNotFoundError):
            return missing_repo_message(hub, src, model, have_token)
        return None
    status = hub_status(err)
    if status in (401, 403):
        return modelscope_refused_message(repo, status, have_token)
    if status == 404:
        return missing_repo_message(hub, src, model, have_token)
    return None


def missing_repo_message(hub: str, src: dict, model: str, have_token: bool) -> str:
    """What to do when `hub` knows no repository (or, on ModelScope, no revision) of source `src`."""
    env = HF_TOKEN_ENV if hub == "huggingface" else MODELSCOPE_TOKEN_ENV
    what, keys = f"repository {src['repo']}", "the repo"
    if hub == "modelscope":
        what += f" or its revision {src.get('revision', 'master')!r}"
        keys = "repo and revision"
    why = f"the account of the token in {env} cannot see it either" if have_token else f"{env} is not set"
    return (
        f"{hub} {what} was not found ({why}). Check {keys} of this source in models.{model}.sources; if the "
        f"repository is private, export {env}=<a token of an account that can read it> and re-run"
    )


def modelscope_refused_message(repo: str, status: int, have_token: bool) -> str:
    """What to do when ModelScope answers 401 (no or a bad token) or 403 (no access) for `repo`."""
    if not have_token:
        why = f"{MODELSCOPE_TOKEN_ENV} is not set"
    elif status == 401:
        why = f"the token in {MODELSCOPE_TOKEN_ENV} was not accepted"
    else:
        why = f"the account of the token in {MODELSCOPE_TOKEN_ENV} has no access"
    return (
        f"modelscope {repo} refused the download (HTTP {status}: {why}). If the model asks for it, accept its "
        f"licence on https://modelscope.cn/models/{repo} (logged in to ModelScope); then export "
        f"{MODELSCOPE_TOKEN_ENV}=<an access token of that account, from https://modelscope.cn/my/myaccesstoken> "
        "and re-run"
    )


def fetch_modelscope(src: dict, dest: Path, job: FetchJob) -> None:
    """Download the needed files of a ModelScope repo at `revision` and copy them to `dest`."""
    allow, ignore = allow_patterns(job.kind, job.variant), ignore_patterns(job.kind)
    token = os.environ.get(MODELSCOPE_TOKEN_ENV) or ""  # "": no token (None: a stored login)
    log.info(
        "modelscope: repo %s, revision %s, token %s, allow_patterns %s",
        src["repo"],
        src.get("revision", "master"),
        f"from {MODELSCOPE_TOKEN_ENV}" if token else "none",
        allow,
    )
    try:
        snapshot = ms_snapshot_download(
            model_id=src["repo"],
            revision=src.get("revision", "master"),
            allow_patterns=allow,
            ignore_patterns=ignore,
            token=token,
        )
    except Exception as err:
        reason = hub_refusal("modelscope", err, src, job.name, bool(token))
        if reason is None:
            raise
        raise FetchError(reason) from None
    copy_selected(Path(snapshot), dest, allow, ignore)


# ---------------------------------------------------------------- url source


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> (100, 200); ``bytes */200`` -> (None, 200)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _download_once(url: str, part: Path, timeout: float) -> None:
    """One HTTP request: resume `part` with a Range request if it exists, else start afresh.

    Raises IncompleteDownload if the body ends before the announced size.
    """
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "diffrep-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: complete if the server's size agrees
            _, total = _parse_content_range(err.headers.get("Content-Range"))
            if total == have:
                return
            part.unlink()
            raise IncompleteDownload(f"{url}: server refused to resume at byte {have}; restarting") from None
        raise
    with resp:
        if have and resp.status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                raise IncompleteDownload(f"{url}: server resumed at byte {start}, asked for {have}")
            mode = "ab"
            log.info("resuming %s at byte %d", url, have)
        else:
            if have:
                log.info("server ignored the Range request; downloading %s from the start", url)
            have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
        with (
            open(part, mode) as f,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=part.name[:-5], mininterval=5
            ) as bar,
        ):
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise IncompleteDownload(f"{url}: received {size} of {total} bytes")


def download_url(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    part: str | os.PathLike | None = None,
    attempts: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest`, resumably; verify; rename into place only when complete and verified.

    The bytes go to `part` (default ``.{name}.part`` next to `dest`); an existing `part` is resumed
    with an HTTP Range request. Connection errors, 5xx/408/429 answers and short bodies are retried
    `attempts` times in all (waiting `backoff`·2^k s), each attempt resuming where the last stopped.
    Then the sha256 must start with `hash_prefix` (the publisher's, torch.hub style) and equal
    `sha256` (the pin); on a mismatch the partial file is deleted and ChecksumError names the file,
    the expected and the actual hash.
    """
    dest = Path(dest)
    part = Path(part) if part is not None else dest.with_name(f".{dest.name}.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, part, timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code not in (408, 429):
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
            reason = f"HTTP {err.code} {err.reason}"
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, short bodies
            reason = f"{type(err).__name__}: {err}"
        have = part.stat().st_size if part.exists() else 0
        if attempt == attempts:
            raise FetchError(
                f"{url}: download failed after {attempts} attempt(s): {reason} "
                f"({have} bytes kept in {part} for the next run to resume)"
            )
        wait = backoff * 2 ** (attempt - 1)
        log.warning(
            "%s: attempt %d/%d failed (%s); %d bytes so far; retrying in %.0f s",
            url,
            attempt,
            attempts,
            reason,
            have,
            wait,
        )
        time.sleep(wait)
    actual = sha256_file(part)
    problems = []
    if hash_prefix and not actual.startswith(hash_prefix.lower()):
        problems.append(f"expected sha256 starting with {hash_prefix.lower()} (hash_prefix), actual {actual}")
    if sha256 and actual != sha256.lower():
        problems.append(f"expected sha256 {sha256.lower()} (pinned), actual {actual}")
    if problems:
        part.unlink()
        raise ChecksumError(f"{dest.name} (from {url}): sha256 mismatch: " + "; ".join(problems))
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(part, dest)
    log.info("downloaded %s -> %s (%s, sha256 %s)", url, dest, _size(dest.stat().st_size), actual)
    return dest


def url_filename(src: dict) -> str:
    """The file name of a url source: `filename`, else the URL path's last component."""
    name = src.get("filename") or Path(urllib.parse.urlparse(src["url"]).path).name
    if not name or name in (".", "..") or "/" in name:
        raise FetchError(f"url source {src['url']!r}: cannot derive a file name; set 'filename'")
    return name


def fetch_url(src: dict, dest: Path, job: FetchJob) -> None:
    """One file from a URL into `dest/{filename}` (resumable under ``job.partial_dir``)."""
    name = url_filename(src)
    dest.mkdir(parents=True, exist_ok=True)
    download_url(
        src["url"],
        dest / name,
        sha256=job.pins.get(name),
        hash_prefix=src.get("hash_prefix"),
        part=job.partial_dir / f"{name}.part",
        **job.download_options,
    )


# ---------------------------------------------------------------- build source


def fetch_build(src: dict, dest: Path, job: FetchJob) -> None:
    """Make the model locally with a registered diffrep builder (the source's own ``seed`` wins)."""
    from diffrep.builders import model_builder

    seed = int(src.get("seed", job.seed))
    options = dict(src.get("options") or {})
    log.info("build: builder %s, seed %d, options %s", src["builder"], seed, options)
    model_builder(src["builder"])(dest, seed=seed, **options)


# ---------------------------------------------------------------- the model


def describe(src: dict) -> str:
    """A short, secret-free label of a source for logs and errors."""
    if src["type"] in ("modelscope", "huggingface"):
        default = "master" if src["type"] == "modelscope" else "main"
        return f"{src['type']} {src['repo']}@{src.get('revision', default)}"
    if src["type"] == "url":
        return f"url {src['url']}"
    return f"build {src['builder']}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Every source type and its fetcher: fetcher(src, dest, job) writes the model's files into the
# (existing, empty) folder `dest` or raises.
SOURCE_FETCHERS: dict[str, Callable[[dict, Path, FetchJob], None]] = {
    "modelscope": fetch_modelscope,
    "huggingface": fetch_huggingface,
    "url": fetch_url,
    "build": fetch_build,
}


def fetch_source(src: dict, job: FetchJob, out_dir: Path, label: str) -> dict[str, str]:
    """Fetch one source into a staging folder, check it, and only then move it to `out_dir`.

    Checks: completeness for the kind (:func:`check_complete`; a build's own variant naming is
    not checked) and, when pinned, every file's sha256. Returns {path: sha256}; raises on any
    failure, leaving nothing at `out_dir`.
    """
    fetcher = SOURCE_FETCHERS.get(src["type"])
    if fetcher is None:
        raise FetchError(f"unknown source type {src['type']!r}; known: {', '.join(SOURCE_FETCHERS)}")
    with staged_dir(out_dir) as dest:
        fetcher(src, dest, job)
        variant = job.variant if src["type"] != "build" else None
        check_complete(job.kind, dest, variant, where=f"{job.name} ({label})")
        hashes = hash_folder(dest)
        if job.pins:
            compare(hashes, job.pins, where=job.name)
        log_files(dest, f"model {job.name}")
    return hashes


def _log_served(job: FetchJob, i: int, n: int, label: str, failed: list[tuple[str, str]]) -> None:
    log.info(
        "model %s: served by source %d/%d (%s)%s",
        job.name,
        i,
        n,
        label,
        "".join(f"; earlier source {lab} failed: {why.splitlines()[0]}" for lab, why in failed),
    )
    if job.pins:
        log.info("model %s: all %d files match their pinned sha256", job.name, len(job.pins))
    else:
        log.warning(
            "model %s: no sha256 pinned; the manifest records what was received. Pin it with: "
            "python -m diffrep.pin_hashes --config <config.yaml> --model %s",
            job.name,
            job.name,
        )


def fetch_model(
    name: str,
    spec: dict,
    out_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    seed: int = 0,
    download_options: dict | None = None,
) -> dict:
    """Obtain model `name` (a ``models`` entry of the config) into `out_dir`; write `manifest` last.

    Sources are tried in order (:func:`fetch_source`: a staging folder next to `out_dir`, checked
    for completeness and against the pinned hashes ``spec["sha256"]``, {path relative to the model
    folder: sha256}). The first that passes becomes `out_dir` and its manifest (paths prefixed with
    `name`/) is written. Returns ``{"source": label, "index": i, "files": {path: sha256},
    "failed": [(label, reason), ...]}``. Raises FetchError listing every source's reason when none
    passes; then neither `out_dir` nor `manifest` exists.
    """
    out_dir, manifest = Path(out_dir), Path(manifest)
    sources = spec["sources"]
    job = FetchJob(
        name=name,
        kind=spec["kind"],
        variant=spec.get("variant"),
        pins={k: v.lower() for k, v in (spec.get("sha256") or {}).items()},
        partial_dir=out_dir.parent / PARTIAL_DIR / name,
        seed=seed,
        download_options=download_options or {},
    )
    _remove(manifest)
    _remove(out_dir)
    log.info(
        "model %s (kind %s%s): %d source(s): %s; %s",
        name,
        job.kind,
        f", variant {job.variant}" if job.variant else "",
        len(sources),
        "; ".join(describe(s) for s in sources),
        f"{len(job.pins)} pinned sha256" if job.pins else "no sha256 pinned",
    )
    failed: list[tuple[str, str]] = []
    for i, src in enumerate(sources, start=1):
        label = describe(src)
        log.info("model %s: trying source %d/%d: %s", name, i, len(sources), label)
        try:
            hashes = fetch_source(src, job, out_dir, label)
        except Exception as err:  # noqa: BLE001 - every failure is reported, the next source tried
            failed.append((label, scrub(f"{type(err).__name__}: {err}")))
            log.warning("model %s: source %d/%d (%s) failed: %s", name, i, len(sources), label, failed[-1][1])
            continue
        _log_served(job, i, len(sources), label, failed)
        write_manifest(manifest, hashes, prefix=name)
        shutil.rmtree(job.partial_dir, ignore_errors=True)
        return {"source": label, "index": i, "files": hashes, "failed": failed}
    msg = f"model {name}: no source provided a complete, verified model:\n" + "\n".join(
        f"  [{i}] {label}: {reason}" for i, (label, reason) in enumerate(failed, start=1)
    )
    log.error(msg)
    raise FetchError(msg)
