"""What happened to one scan, and the one console line that says so."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_runtime.outputs.dicom_results import DicomResult

log = logging.getLogger(__name__)

#: The level of a run's closing lines (between INFO and WARNING): ``-q`` shows them, and no ``ok`` lines.
SUMMARY = 25
logging.addLevelName(SUMMARY, "SUMMARY")


class Status(StrEnum):
    """The fate of one scan in a run."""

    OK = "ok"  #: segmented, its outputs written and recorded
    SKIPPED = "skipped"  #: up to date already
    FAILED = "failed"  #: could not be processed; an error record says why
    CHANGED = "changed"  #: modified while being read: the watcher retries it once it settles
    #: OUT could not take its outputs (disk full, read-only, ...): not the scan's fault, nothing recorded;
    #: retried once OUT can be written again
    UNWRITTEN = "unwritten"


@dataclass
class Outcome:
    """What happened to one scan."""

    rel: str
    status: Status
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    facts: dict[str, Any] = field(default_factory=dict)  # from the writers, e.g. the findings' summary
    dicom: list[DicomResult] = field(default_factory=list)  # the DICOM results written, for the outbox

    @property
    def ms(self) -> float:
        return sum(self.timings.values())


class ScanStatuses:
    """Each scan's last status in a run: a scan up to date at its start (``up_to_date``) may yet lose its
    outputs to one named like them, and then counts as failed."""

    def __init__(self, up_to_date: list[str]) -> None:
        self.last: dict[str, Status] = dict.fromkeys(up_to_date, Status.SKIPPED)
        self.failures: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.last[outcome.rel] = outcome.status
        if outcome.status == Status.FAILED:
            self.failures.append(outcome)

    @property
    def counts(self) -> Counter[Status]:
        return Counter(self.last.values())

    def not_done(self, todo: list[str]) -> int:
        """How many of ``todo`` a stop left undone (OUT refused them, or they were never taken)."""
        return sum(self.last.get(rel) not in (Status.OK, Status.FAILED, Status.SKIPPED) for rel in todo)


def describe_outputs(outcome: Outcome) -> str:
    if not outcome.outputs:
        return ""
    extra = f" (+{len(outcome.outputs) - 1} more)" if len(outcome.outputs) > 1 else ""
    return f"{outcome.outputs[0]}{extra}"


def log_outcome(outcome: Outcome, listed: bool = True) -> None:
    """One line per scan: ``ok  a/s1.png -> a/s1.png  23 ms`` / ``FAIL a/bad.png: truncated PNG``.

    This module's logger is the run's own voice: the console prints its lines as they are, with no
    ``error:`` prefix (:mod:`edge_runtime.console`). ``listed`` False: the ``ok`` line only with ``-v``
    (a large one-shot run shows its progress instead, :mod:`edge_runtime.job.progress`); ``FAIL`` lines
    are always shown.
    """
    if outcome.status == Status.OK:
        level = logging.INFO if listed else logging.DEBUG
        log.log(level, "ok   %s -> %s  %.0f ms", outcome.rel, describe_outputs(outcome), outcome.ms)
    elif outcome.status == Status.SKIPPED:
        log.debug("skip %s: %s", outcome.rel, outcome.reason or "up to date")
    elif outcome.status == Status.UNWRITTEN:  # the run says it once for all of them
        log.debug("not written %s: %s", outcome.rel, outcome.reason)
    else:
        log.error("FAIL %s: %s", outcome.rel, outcome.reason)


def log_failures(failures: list[Outcome], shown: int = 20) -> None:
    """The end of a run with failures: how many, where the reasons are, and the first ``shown`` of them."""
    log.error("%d scan(s) failed; reasons are beside their masks as <name>.error.txt:", len(failures))
    for f in failures[:shown]:
        log.error("  %s: %s", f.rel, f.reason)


def log_summary(text: str) -> None:
    """A run's closing line, printed as it is (also with ``-q``)."""
    log.log(SUMMARY, "%s", text)
