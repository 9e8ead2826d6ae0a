"""OUT not taking writes (disk full, read-only, ...): the daemon's back-off until it does again.

Not the scans' fault: nothing is recorded against them; one log line says so, no new scans are taken,
and OUT is probed where the write failed, :data:`RETRY_FIRST` seconds after, doubling up to
:data:`RETRY_MAX`; once it takes writes again, one log line, and the waiting scans go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.files.durable import probe_writable
from edge_runtime.job.outcome import Outcome

log = logging.getLogger(__name__)

RETRY_FIRST = 5.0  #: seconds before OUT is probed again after a write failed, doubling ...
RETRY_MAX = 60.0  #: ... up to this


@dataclass
class Blocked:
    """OUT stopped taking writes: what the status file and the one log line say, and when to look again."""

    problem: str  #: ``"disk full"``, ``"read-only file system"``, ... (:func:`edge_runtime.files.durable.unwritable`)
    detail: str  #: the error, with the file it was about
    folder: Path  #: where the write failed, which the probe tries
    since: float  #: time.time() it began
    delay: float = RETRY_FIRST  #: seconds until the next probe, doubling up to RETRY_MAX
    next_try: float = 0.0  #: time.monotonic() of the next probe


class Backoff:
    """Whether OUT takes writes, as the daemon last found (:attr:`blocked` None: it does)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.blocked: Blocked | None = None

    def block(self, outcome: Outcome) -> bool:
        """A scan's outputs were not taken (``outcome``): blocked from now, unless it is already (False)."""
        if self.blocked is not None:
            return False
        failed_at = outcome.facts.get("path")
        folder = Path(failed_at).parent if failed_at else self.out_dir
        problem = str(outcome.facts.get("problem", "cannot write"))
        self.blocked = Blocked(problem, outcome.reason, folder, time.time(), RETRY_FIRST)
        self.blocked.next_try = time.monotonic() + self.blocked.delay
        log.error(
            "cannot write to %s: %s; not taking new scans, and retrying (every %g s, then up to %g s)",
            self.out_dir,
            outcome.reason,
            RETRY_FIRST,
            RETRY_MAX,
        )
        return True

    def probe(self, waiting: int) -> bool:
        """While blocked, when it is time: is OUT writable again? True (after one log line) when it is."""
        blocked = self.blocked
        if blocked is None or time.monotonic() < blocked.next_try:
            return False
        if probe_writable(blocked.folder) is not None:
            blocked.delay = min(blocked.delay * 2, RETRY_MAX)
            blocked.next_try = time.monotonic() + blocked.delay
            return False
        self.blocked = None
        log.warning(
            "%s can be written again after %.0f s (%s before); taking scans again, %d waiting",
            self.out_dir,
            time.time() - blocked.since,
            blocked.problem,
            waiting,
        )
        return True

    def wait(self, now: float, longest: float) -> float | None:
        """While blocked: how long the loop may sleep before the next probe (at most ``longest``)."""
        return None if self.blocked is None else max(0.05, min(self.blocked.next_try - now, longest))
