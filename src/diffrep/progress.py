"""Progress of a long loop as periodic log lines (steps done, steps/s, ETA), for a job's log file.

A tqdm bar in a log file is one line rewritten with carriage returns; these are plain lines that
``tail -f`` and ``grep`` read, written every `every_s` seconds and at the last step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLog:
    """Call :meth:`update` after every step; it logs ``{what}: {done}/{total} steps (p %), values,
    r steps/s, ETA t`` when `every_s` seconds passed since the last line, and at the last step.

    `clock` (seconds, monotonic) is replaceable for tests.
    """

    def __init__(
        self,
        what: str,
        total: int,
        logger: logging.Logger,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.total, self.log, self.every_s, self.clock = what, total, logger, every_s, clock
        self.start = self.last = clock()
        logger.info("%s: %d steps", what, total)

    def update(self, done: int, **values: float) -> None:
        """`done` steps finished; `values` (e.g. ``loss=0.12``) are shown with 4 significant digits."""
        now = self.clock()
        if now - self.last < self.every_s and done < self.total:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = "".join(f", {k} {v:.4g}" for k, v in values.items())
        self.log.info(
            "%s: %d/%d steps (%d %%)%s, %.2f steps/s, %s",
            self.what,
            done,
            self.total,
            100 * done // max(self.total, 1),
            shown,
            rate,
            f"ETA {format_duration(eta)}" if done < self.total else f"done in {format_duration(elapsed)}",
        )
