"""One-shot folder conversion: ``edge-seg IN --out OUT``."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from edge_runtime.files.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES
from edge_runtime.job.assemble import close_job, open_job
from edge_runtime.job.discovery import describe_skipped, iter_scans
from edge_runtime.job.outcome import Outcome, ScanStatuses, Status, log_failures, log_outcome, log_summary
from edge_runtime.job.progress import show_progress
from edge_runtime.job.settings import RunSettings
from edge_runtime.stopping import StopSignals

if TYPE_CHECKING:  # imported when a run writes them: Jinja2 for the page, importlib.metadata for the record
    from edge_runtime.job.review import PageKeeper
    from edge_runtime.job.run_record import RunRecord

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
    """Every scan under IN (or the one file of a single-file run) that needs work, then a summary; the exit code.

    0 all done, 1 some failed, 2 OUT stopped taking writes (disk full, ...: the run stops at once, the
    scans not done are done by the next run), 128 + N when stopped by signal N (SIGTERM 143, SIGHUP 129,
    SIGINT 130) after the batches in hand (or before the first, when the signal comes during start-up).
    """
    with StopSignals("finishing the batches in hand, then stopping") as stop:
        return _run_once(settings, stop)


def _run_once(settings: RunSettings, stop: StopSignals) -> int:
    t0, started = time.perf_counter(), time.time()
    job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run, scan=settings.scan)
    record: RunRecord | None = None
    page: PageKeeper | None = None
    if "reports" in job.spec.outputs:
        from edge_runtime.job.run_record import RunRecord

        record = RunRecord(job, ["edge-seg", *settings.argv])
    if "review" in job.spec.outputs:
        from edge_runtime.job.review import PageKeeper

        page = PageKeeper(job, ["edge-seg", *settings.argv], started=started)
    record_failed = False
    skipped: Counter[str] = Counter()
    blocked: Outcome | None = None  # the first scan whose outputs OUT could not take
    try:
        rels = [settings.scan] if settings.scan is not None else list(iter_scans(job.in_dir, skipped=skipped))
        if not rels:
            suffixes = " ".join(sorted(IMAGE_SUFFIXES | DICOM_SUFFIXES))
            log.warning("no scans found under %s (looked for %s and DICOM by content)", settings.in_dir, suffixes)
        plan = job.planner.plan(rels, force=settings.run.force)
        if settings.run.part is not None:
            mine = len(rels) - plan.others
            log.info("%s: %d of the %d scans under %s", settings.run.part, mine, len(rels), settings.in_dir)
        todo = plan.todo
        statuses = ScanStatuses(plan.up_to_date)
        if record is not None or log.isEnabledFor(logging.DEBUG):  # -v lists the up-to-date scans too
            for rel in sorted(plan.up_to_date):
                rec = job.ledger.get(rel) or {}
                up_to_date = Outcome(rel, Status.SKIPPED, list(rec.get("outputs", [])), "up to date")
                log_outcome(up_to_date)
                if record is not None:
                    record.add(up_to_date)

        def halt() -> bool:  # once OUT stops taking writes (disk full, ...), every scan after fails too
            return blocked is not None or stop.requested.is_set()

        for outcome in show_progress(job.scheduler.process(todo, stop=halt), len(todo)):
            if outcome.status == Status.UNWRITTEN:
                blocked = blocked or outcome
            statuses.add(outcome)
            if record is not None:
                record.add(outcome)
        counts = statuses.counts
        cut_short = blocked is not None or stop.requested.is_set()
        if record is not None and not cut_short:
            try:
                written = record.write(1 if statuses.failures else 0)
                log.info("run summary: %s; provenance: %s", written[0], written[1].name)
            except OSError as exc:
                log.error("cannot write the run summary and provenance: %s", exc)
                record_failed = True
        if page is not None and blocked is None:  # (built from disk: right also after a stop signal)
            ran = {"segmented": counts[Status.OK], "up to date": counts[Status.SKIPPED]}
            ran["failed"] = counts[Status.FAILED]
            record_failed = not page.write(ran, finished=True) or record_failed
    finally:
        closed = close_job(job)
    log_summary(summary_line(counts, time.perf_counter() - t0, settings.out_dir, job.settings_changed))
    if skipped:
        log_summary(f"not scans, left alone: {describe_skipped(skipped)} (-v names them)")
    if statuses.failures:
        log_failures(statuses.failures)
    not_done = statuses.not_done(todo)  # (the scans OUT could not take are among them)
    if blocked is not None:
        log.error(
            "cannot write to %s: %s; stopped with %d scan(s) not done, which the next run does; nothing written "
            "is incomplete",
            settings.out_dir,
            blocked.reason,
            not_done,
        )
        return 2
    if not closed:
        return 2
    if stop.signum is not None:
        log_summary(f"stopped by {stop.name}: {not_done} scan(s) not done, which the next run does")
        return stop.exit_code
    if statuses.failures:
        return 1
    return 1 if record_failed else 0
