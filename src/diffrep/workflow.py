"""Glue between a Snakemake `script:` job and the library: logging, errors, atomic writes."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("diffrep")


def setup_logging(snakemake) -> logging.Logger:
    """Send this job's logging, warnings, stderr and stdout to the rule's first log file.

    Progress bars (tqdm writes to stderr) land in the log too, so a user can follow a long job
    with `tail -f`.
    """
    path = Path(snakemake.log[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)
    sys.stderr = stream
    sys.stdout = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    log.info("rule %s, wildcards %s", snakemake.rule, dict(snakemake.wildcards))
    return log


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
