"""Writing results so that a killed or failing job never leaves a half-written output.

One helper for a file (`atomic_path`), one for a folder (`staged_dir`) and one for a folder that a
re-run resumes (`resumable_dir`): all write next to the target under a hidden temporary name and
rename onto the target only on success; published files are world-readable (0644, folders 0755)
whatever the umask of the temporary file was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `target`; rename it onto `target` only on success.

    A killed or failing job therefore never leaves a half-written file under the final name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix or ".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o644)  # mkstemp makes 0600: results would be unreadable by the rest of a group
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, out_dir: Path, replace: bool) -> None:
    """Make the staged folder `tmp` world-readable and rename it onto `out_dir`."""
    for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; published files are world-readable
        p.chmod(0o755 if p.is_dir() else 0o644)
    if out_dir.exists() and replace:
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.rmdir()  # empty (checked by the caller)
    os.replace(tmp, out_dir)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike, replace: bool = False):
    """Yield a temporary folder next to `out_dir`; move it to `out_dir` only on success.

    `out_dir` may exist if it is empty (a caller's fresh folder); a non-empty one is an error, unless
    `replace`: then it is replaced on success (and left as it was on failure).
    """
    out_dir = Path(out_dir)
    if not replace and out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: output folder exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield tmp
        _publish(tmp, out_dir, replace)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def resumable_dir(out_dir: str | os.PathLike, key: str):
    """Yield a staging folder ``.{name}.partial`` next to `out_dir` that survives a failed job.

    What a killed or failing job finished stays there, so that the next run with the same `key`
    (a fingerprint of the settings) continues where it stopped; a folder left by other settings is
    emptied first, and hidden leftovers of interrupted writes (:func:`atomic_path` temporaries) are
    removed. On success the folder replaces `out_dir`.
    """
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    marker = staging / ".fingerprint"
    if staging.exists() and (not marker.is_file() or marker.read_text() != key):
        log.info("%s holds files of other settings: removed", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for p in staging.glob(".*"):
        if p.is_dir():
            shutil.rmtree(p)
        elif p != marker:
            p.unlink()
    marker.write_text(key)
    yield staging
    marker.unlink()
    _publish(staging, out_dir, replace=True)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike, names) -> int:
    """Give `dst` every file of the folder `src` under the top-level `names` as a hard link, or a copy
    where the filesystem cannot link (another device); return the bytes linked.

    For unchanged parts of a model written beside its base (a finetune's VAE and text encoder): the
    same bytes, no second copy on disk. Inputs are never written in place (every writer here renames
    a new file onto its target), so a link cannot change under its other name.
    """
    src, dst = Path(src), Path(dst)
    linked = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] not in names or path.is_dir():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
            linked += path.stat().st_size
        except OSError:
            shutil.copy2(path, target)
    return linked
