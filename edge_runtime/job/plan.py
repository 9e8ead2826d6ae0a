"""Which scans need work: the ledger's say, before a scan is read (who writes which output names is
:mod:`edge_runtime.outputs.naming`'s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.job.ledger import Ledger

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part

#: How the error records of scans that failed for want of a writable OUT begin (older versions recorded
#: a full disk as the scan's error).
WRITE_FAILURES = ("cannot write its outputs", "cannot record its outputs", "cannot write its error record")


class Planner:
    """Decides from the ledger whether a scan needs work.

    Args:
        in_dir: the input folder the scans' relative paths start from.
        ledger: the job's ledger.
        signature: the job signature (:attr:`edge_runtime.job.settings.JobSpec.signature`).
        part: the share of the scans this process does (``--num-parts``); the others never need work here.
    """

    def __init__(
        self,
        in_dir: Path,
        ledger: Ledger,
        signature: str,
        part: Part | None = None,
    ) -> None:
        self.in_dir = in_dir
        self.ledger = ledger
        self.signature = signature
        self.part = part
        self._write_retried: set[str] = set()

    def needs_work(self, rel: str, retry_failed: bool = True) -> bool:
        """False when the scan's outputs are up to date (or, unless ``retry_failed``, it failed as it is),
        or it is another part's."""
        if self.part is not None and not self.part.owns(rel):
            return False
        try:
            st = os.stat(self.in_dir / rel)
        except OSError:
            return True  # let the processor report it
        if self.ledger.up_to_date(rel, st.st_size, st.st_mtime_ns, self.signature):
            return False
        if retry_failed or not self.ledger.known_failure(rel, st.st_size, st.st_mtime_ns):
            return True
        # Failing to write (OUT full, say) is not the scan's fault: tried again once by each new process.
        reason = str((self.ledger.get(rel) or {}).get("reason", ""))
        if reason.startswith(WRITE_FAILURES) and rel not in self._write_retried:
            self._write_retried.add(rel)
            return True
        return False
