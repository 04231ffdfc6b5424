"""Glue between a Snakemake `script:` job and the library: the job's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("diffrep")


def setup_logging(snakemake) -> logging.Logger:
    """Send this job's logging, warnings, stderr and stdout to the rule's first log file.

    Progress bars (tqdm writes to stderr) land in the log too, so a user can follow a long job
    with `tail -f`.
    """
    path = Path(snakemake.log[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 (the job's log stays open for its lifetime)
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
