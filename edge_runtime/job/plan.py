"""Which scans need work, and whose outputs are whose: the decisions made before a scan is read."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from edge_runtime.errors import ScanError
from edge_runtime.job.ledger import Ledger
from edge_runtime.outputs.base import OutputWriter
from edge_runtime.outputs.layout import output_key

#: How the error records of scans that failed for want of a writable OUT begin (older versions recorded
#: a full disk as the scan's error).
WRITE_FAILURES = ("cannot write its outputs", "cannot record its outputs", "cannot write its error record")


class Planner:
    """Decides from the ledger whether a scan needs work, and reserves each scan's output names.

    Args:
        in_dir: the input folder the scans' relative paths start from.
        ledger: the job's ledger.
        signature: the job signature (:attr:`edge_runtime.job.settings.JobSpec.signature`).
        thresholds: how many thresholds the job writes (with one, outputs go straight under OUT).
        writers: the job's output writers, whose folders under OUT input folders must not shadow.
    """

    def __init__(
        self, in_dir: Path, ledger: Ledger, signature: str, thresholds: int, writers: list[OutputWriter]
    ) -> None:
        self.in_dir = in_dir
        self.ledger = ledger
        self.signature = signature
        self.thresholds = thresholds
        self.folders = [(w.folder, w.kind) for w in writers if w.folder]
        self._claims: dict[str, str] = {}
        self._write_retried: set[str] = set()
        for rel in ledger.done_rels():
            self._claims.setdefault(output_key(rel), rel)

    def needs_work(self, rel: str, retry_failed: bool = True) -> bool:
        """False when the scan's outputs are up to date (or, unless ``retry_failed``, it failed as it is)."""
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

    def claim(self, rel: str) -> None:
        """Reserve the scan's output names; raise :class:`ScanError` if another scan in IN already writes them."""
        parts = PurePosixPath(rel).parts
        if self.thresholds == 1 and len(parts) > 1:
            for folder, kind in self.folders:
                if parts[0] == folder:
                    raise ScanError(
                        rel,
                        f"its mask would go to OUT/{folder}/, the folder of the {kind}; "
                        f"rename the input folder {folder!r} or run without the {kind}",
                    )
        key = output_key(rel)
        owner = self._claims.get(key)
        if owner is not None and owner != rel and (self.in_dir / owner).exists():
            raise ScanError(
                rel, f"its outputs would overwrite those of {owner} (same folder and name stem); rename one of the two"
            )
        self._claims[key] = rel
