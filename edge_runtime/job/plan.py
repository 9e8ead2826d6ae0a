"""Which scans need work, and whose outputs are whose: the decisions made before a scan is read."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from edge_runtime.errors import ScanError
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.parts import Part
from edge_runtime.outputs.base import OutputWriter
from edge_runtime.outputs.layout import output_key


class Planner:
    """Decides from the ledger whether a scan needs work, and reserves each scan's output names.

    Args:
        in_dir: the input folder the scans' relative paths start from.
        ledger: the job's ledger.
        signature: the job signature (:attr:`edge_runtime.job.settings.JobSpec.signature`).
        thresholds: how many thresholds the job writes (with one, outputs go straight under OUT).
        writers: the job's output writers, whose folders under OUT input folders must not shadow.
        part: the share of the scans this process does (``--num-parts``); the others never need work here.
    """

    def __init__(
        self,
        in_dir: Path,
        ledger: Ledger,
        signature: str,
        thresholds: int,
        writers: list[OutputWriter],
        part: Part | None = None,
    ) -> None:
        self.in_dir = in_dir
        self.ledger = ledger
        self.signature = signature
        self.thresholds = thresholds
        self.folders = [(w.folder, w.kind) for w in writers if w.folder]
        self.part = part
        #: output keys claimed by this run; those of earlier runs are looked up in the ledger (a row at a time)
        self._claims: dict[str, str] = {}

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
        return retry_failed or not self.ledger.known_failure(rel, st.st_size, st.st_mtime_ns)

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
        owner = self._claims.get(key) or self.ledger.done_with_key(key, other_than=rel)
        if owner is not None and owner != rel and (self.in_dir / owner).exists():
            raise ScanError(
                rel, f"its outputs would overwrite those of {owner} (same folder and name stem); rename one of the two"
            )
        self._claims[key] = rel
