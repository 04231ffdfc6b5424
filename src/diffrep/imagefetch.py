"""Fetch the images of a URL list: threaded, resumable, every failure recorded with its reason.

This is diffrep's default engine for ``urls`` datasets (img2dataset, the field's tool, pins
pandas<3 and pulls wandb and opencv, so it is kept out of the main environment). Each image is
written to ``{cache}/{id}`` through a temporary file renamed on success
(:func:`diffrep.fileio.atomic_path`), so a re-run (a retried job) fetches only what is not there yet. Dead links are the common case with LAION-style lists:
HTTP errors, refused connections, timeouts and bytes that are not an image are returned as reasons
(strings), never raised, and end up in ``report.json`` under ``failed_downloads``.
"""

from __future__ import annotations

import io
import logging
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from diffrep.fileio import atomic_path

log = logging.getLogger(__name__)
USER_AGENT = "diffrep-imagefetch/0.1 (+https://github.com/somepago/DCR replication study)"
MAX_BYTES = 64 * 1024 * 1024  # a single image larger than this is refused


def _is_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        return True
    except Exception:
        return False


def fetch_one(
    url: str, dest: Path, timeout: float = 10.0, retries: int = 1, backoff: float = 0.5
) -> Path | str:
    """Fetch `url` to `dest`; return `dest`, or the reason it could not be fetched.

    Retries (with `backoff` s × attempt) only transient failures: timeouts, refused or reset
    connections and HTTP 5xx/429. `timeout` (s) bounds connecting and each read.
    """
    if dest.exists():
        return dest
    reason = "not attempted"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * attempt)
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                ctype = resp.headers.get("Content-Type", "?")
                data = resp.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                return f"larger than {MAX_BYTES} bytes"
            if not data:
                return "empty response"
            if not _is_image(data):
                return f"not an image (Content-Type {ctype}, {len(data)} bytes)"
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
            return dest
        except urllib.error.HTTPError as err:
            reason = f"HTTP {err.code} {err.reason}"
            if err.code < 500 and err.code != 429:
                return reason
        except TimeoutError:
            reason = f"timeout after {timeout} s"
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                reason = f"timeout after {timeout} s"
            elif isinstance(err.reason, (ConnectionError, OSError)):
                reason = f"connection failed: {err.reason}"
            else:
                return f"bad URL: {err.reason}"
        except (ConnectionError, OSError) as err:
            reason = f"connection failed: {err}"
        except ValueError as err:  # unknown url type, malformed URL
            return f"bad URL: {err}"
    return reason


def download_all(
    items: list[tuple[str, str]], cache: str | Path, threads: int = 4, timeout: float = 10.0, retries: int = 1
) -> dict[str, Path | str]:
    """Fetch ``(id, url)`` items into `cache` with `threads` threads; return {id: path or reason}."""
    from tqdm import tqdm

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    done = sum((cache / i).exists() for i, _ in items)
    if done:
        log.info("resuming: %d of %d images already fetched in %s", done, len(items), cache)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = {i: pool.submit(fetch_one, url, cache / i, timeout, retries) for i, url in items}
        results = {i: f.result() for i, f in tqdm(futures.items(), desc="fetching images", mininterval=5)}
    n_bad = sum(isinstance(r, str) for r in results.values())
    log.info("fetched %d of %d images (%d failed)", len(items) - n_bad, len(items), n_bad)
    return results
