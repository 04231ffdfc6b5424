"""Writing results so that a killed or failing job never leaves a half-written output.

One helper for a file (`atomic_path`) and one for a folder (`staged_dir`): both write next to the
target under a hidden temporary name and rename onto the target only on success; published files
are world-readable (0644, folders 0755) whatever the umask of the temporary file was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


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


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike):
    """Yield a temporary folder next to `out_dir`; move it to `out_dir` only on success.

    `out_dir` may exist if it is empty (a caller's fresh folder); a non-empty one is an error.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: output folder exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; published files are world-readable
            p.chmod(0o755 if p.is_dir() else 0o644)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
