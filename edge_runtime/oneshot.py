"""One-shot folder conversion: ``edge-seg IN --out OUT``."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from edge_runtime.job.assemble import open_job
from edge_runtime.job.outcome import Outcome, Status, log_failures, log_outcome, log_summary
from edge_runtime.job.progress import show_progress
from edge_runtime.job.run_record import RunRecord
from edge_runtime.job.settings import RunSettings
from edge_runtime.job.sources import list_folder

log = logging.getLogger(__name__)


def summary_line(counts: Counter, seconds: float, out_dir: object, settings_changed: list[str] | None = None) -> str:
    done = counts[Status.OK]
    rate = f", {done / seconds:.1f} scans/s" if done and seconds > 0 else ""
    changed = f"; OUT's settings changed: {'; '.join(settings_changed)}" if settings_changed else ""
    return (
        f"done: {done} segmented, {counts[Status.SKIPPED]} up to date, {counts[Status.FAILED]} failed "
        f"in {seconds:.1f} s{rate}; masks in {out_dir}{changed}"
    )


def run_once(settings: RunSettings) -> int:
    """Every scan under IN (or the one file of a single-file run) that needs work, then a summary.

    Returns the exit code: 0 all done, 1 some failed.
    """
    t0 = time.perf_counter()
    job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run, scan=settings.scan)
    force = settings.run.force
    record = RunRecord(job, ["edge-seg", *settings.argv]) if "reports" in job.spec.outputs else None
    record_failed = False
    try:
        rels = [settings.scan] if settings.scan is not None else list_folder(job.in_dir)
        if not rels:
            log.warning(
                "no scans found under %s (looked for .png .jpg .jpeg .bmp .tif .tiff .dcm .dicom)", settings.in_dir
            )
        todo = [r for r in rels if force or job.planner.needs_work(r)]
        counts: Counter = Counter({Status.SKIPPED: len(rels) - len(todo)})
        if record is not None or log.isEnabledFor(logging.DEBUG):  # -v lists the up-to-date scans too
            for rel in sorted(set(rels) - set(todo)):
                rec = job.ledger.get(rel) or {}
                skipped = Outcome(rel, Status.SKIPPED, list(rec.get("outputs", [])), "up to date")
                log_outcome(skipped)
                if record is not None:
                    record.add(skipped)
        failures: list[Outcome] = []
        for outcome in show_progress(_no_waiting(job.scheduler.process(todo)), len(todo)):
            counts[outcome.status] += 1
            if outcome.status == Status.FAILED:
                failures.append(outcome)
            if record is not None:
                record.add(outcome)
        if record is not None:
            try:
                written = record.write(1 if failures else 0)
                log.info("run summary: %s; provenance: %s", written[0], written[1].name)
            except OSError as exc:
                log.error("cannot write the run summary and provenance: %s", exc)
                record_failed = True
    finally:
        job.close()
    log_summary(summary_line(counts, time.perf_counter() - t0, settings.out_dir, job.settings_changed))
    if failures:
        log_failures(failures)
        return 1
    return 1 if record_failed else 0


def _no_waiting(outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
    """A scan modified while being read is a failure here: one-shot does not wait for it to settle."""
    for outcome in outcomes:
        if outcome.status == Status.CHANGED:
            outcome.status = Status.FAILED
        yield outcome
