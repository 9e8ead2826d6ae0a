"""Keeping a job's review page (``OUT/index.html``) written: once at the end of a one-shot run, every few
seconds by a daemon when something changed. The page itself is :mod:`edge_runtime.outputs.page`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from edge_runtime.job.assemble import Job
from edge_runtime.outputs.page import ReviewPage, RunInfo

log = logging.getLogger(__name__)

#: A daemon rewrites the page at most this often (seconds), and only when a scan was done or failed.
PAGE_EVERY = 5.0
#: ... and waits at least this many times as long as the last write took, so that a large OUT's page
#: (about 1 s for 2,000 scans, bench/README.md) never takes more than a sixth of the daemon's time.
PAGE_SHARE = 5.0


class PageKeeper:
    """Writes the review page of ``job``; a failed write is logged, never raised (the scans are done)."""

    def __init__(
        self, job: Job, argv: list[str], watch: bool = False, every: float = PAGE_EVERY, started: float | None = None
    ) -> None:
        info = job.spec.model
        self.page = ReviewPage(job.out_dir, newest_first=watch, fsync=job.options.fsync)
        self.info = RunInfo(
            command=argv,
            started=time.time() if started is None else started,
            mode="watch" if watch else "one-shot",
            model=f"{info.name} {info.version} ({info.path.name})",
            thresholds=[f"{t:g}" for t in job.spec.thresholds],
        )
        self.every = every
        self.dirty = True
        self._last = float("-inf")
        self._wait = every  #: seconds between rewrites: :attr:`every`, longer when the page is slow to write

    def write(self, counts: Mapping[str, int] | None = None, finished: bool = False) -> bool:
        """Write the page now; True when it was written."""
        if finished:
            self.info.finished = time.time()
        if counts is not None:
            self.info.counts = dict(counts)
        t0 = time.monotonic()
        try:
            pages = self.page.write(self.info)
        except OSError as exc:
            log.error("cannot write the review page %s: %s", self.page.out_dir / "index.html", exc)
            return False
        finally:
            self._last = time.monotonic()
            self._wait = max(self.every, PAGE_SHARE * (self._last - t0))
        self.dirty = False
        level = logging.DEBUG if self.info.mode == "watch" else logging.INFO
        log.log(level, "review page: %s (%d page%s)", pages[0], len(pages), "" if len(pages) == 1 else "s")
        return True

    def changed(self) -> None:
        """A scan was done or failed: the page is out of date."""
        self.dirty = True

    def maybe_write(self) -> bool:
        """Rewrite the page if it is out of date and the last write is old enough (:data:`PAGE_SHARE`)."""
        if self.dirty and time.monotonic() - self._last >= self._wait:
            return self.write()
        return False

    def due_in(self) -> float | None:
        """Seconds until an out-of-date page is rewritten (None when it is up to date)."""
        return max(0.0, self._last + self._wait - time.monotonic()) if self.dirty else None
