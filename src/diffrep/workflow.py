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


def start_job(snakemake) -> int:
    """Start a `script:` job: its log (:func:`setup_logging`), then, for a rule that computes floats
    (it has the ``numerics`` param), the kernel check, thread pin and deterministic settings of
    :func:`diffrep.numerics.enter`, with the platform fingerprint in the log.

    Returns the thread count the job computes with (the study's fixed count in portable mode, the
    job's ``threads`` otherwise).
    """
    setup_logging(snakemake)
    numerics_settings = getattr(snakemake.params, "numerics", None)
    if numerics_settings is None:
        return max(1, int(snakemake.threads))
    from diffrep import numerics
    from diffrep.provenance import log_platform, platform_fingerprint

    try:
        threads = numerics.enter(numerics_settings, snakemake.threads)
    except numerics.NumericsError as err:
        log.error("%s", err)
        raise
    log_platform(log, platform_fingerprint(numerics_settings))
    return threads
