"""Which scans need work: the ledger's say, before a scan is read (who writes which output names is
:mod:`edge_runtime.outputs.naming`'s)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import ErrorKind
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.ledger_migrate import error_kind

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part


@dataclass
class Plan:
    """A listing sorted by the planner: this process's scans that need work, those up to date, and how
    many are another part's (``--num-parts``)."""

    todo: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    others: int = 0


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
        self._retrying: set[str] = set()  #: write failures let through by needs_work, not yet taken

    def plan(self, rels: list[str], force: bool = False) -> Plan:
        """Sort a listing (the one-shot's): each scan is another part's, needs work (all of this part's
        with ``force``), or is up to date."""
        plan = Plan()
        for rel in rels:
            if not self._ours(rel):
                plan.others += 1
            elif force or self._stale(rel, retry_failed=True):
                plan.todo.append(rel)
            else:
                plan.up_to_date.append(rel)
        return plan

    def needs_work(self, rel: str, retry_failed: bool = True) -> bool:
        """False when the scan's outputs are up to date (or, unless ``retry_failed``, it failed as it is),
        or it is another part's."""
        return self._ours(rel) and self._stale(rel, retry_failed)

    def _ours(self, rel: str) -> bool:
        """The one place ``--num-parts`` filters: is the scan this process's to do?"""
        return self.part is None or self.part.owns(rel)

    def _stale(self, rel: str, retry_failed: bool) -> bool:
        try:
            st = os.stat(self.in_dir / rel)
        except OSError:
            return True  # let the processor report it
        if self.ledger.up_to_date(rel, st.st_size, st.st_mtime_ns, self.signature):
            return False
        if retry_failed or not self.ledger.known_failure(rel, st.st_size, st.st_mtime_ns):
            return True
        # Failing to write (OUT full, say) is not the scan's fault: tried again once by each new process --
        # once it is taken for work (:meth:`taking`), not merely once it is first asked about (a daemon asks
        # when it finds the scan and again when it takes it).
        if error_kind(self.ledger.get(rel) or {}) == ErrorKind.WRITE and rel not in self._write_retried:
            self._retrying.add(rel)
            return True
        return False

    def taking(self, rels: list[str]) -> None:
        """These scans go to work now: the one retry of a write failure this process gives each is used."""
        for rel in rels:
            if rel in self._retrying:  # (only such scans are remembered: a daemon's memory stays flat)
                self._retrying.discard(rel)
                self._write_retried.add(rel)
