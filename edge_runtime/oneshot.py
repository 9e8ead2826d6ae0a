"""One-shot folder conversion: ``edge-seg IN --out OUT``."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from edge_runtime.job.assemble import open_job
from edge_runtime.job.outcome import Outcome, Status, log_failures, log_outcome, log_summary
from edge_runtime.job.run_record import RunRecord
from edge_runtime.job.settings import RunSettings
from edge_runtime.job.sources import list_folder

log = logging.getLogger(__name__)


def summary_line(counts: Counter, seconds: float, out_dir: object) -> str:
    done = counts[Status.OK]
    rate = f", {done / seconds:.1f} scans/s" if done and seconds > 0 else ""
    return (
        f"done: {done} segmented, {counts[Status.SKIPPED]} up to date, {counts[Status.FAILED]} failed "
        f"in {seconds:.1f} s{rate}; masks in {out_dir}"
    )


def run_once(settings: RunSettings) -> int:
    """Every scan under IN that needs work, then a summary; the exit code (0 all done, 1 some failed)."""
    t0 = time.perf_counter()
    job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run)
    force = settings.run.force
    record = RunRecord(job, ["edge-seg", *settings.argv]) if "reports" in job.spec.outputs else None
    record_failed = False
    try:
        rels = list_folder(job.in_dir)
        if not rels:
            log.warning(
                "no scans found under %s (looked for .png .jpg .jpeg .bmp .tif .tiff .dcm .dicom)", settings.in_dir
            )
        part = settings.run.part
        if part is not None:
            found = len(rels)
            rels = [r for r in rels if part.owns(r)]
            log.info("%s: %d of the %d scans under %s", part, len(rels), found, settings.in_dir)
        todo = [r for r in rels if force or job.planner.needs_work(r)]
        counts: Counter = Counter({Status.SKIPPED: len(rels) - len(todo)})
        if record is not None:
            for rel in sorted(set(rels) - set(todo)):
                rec = job.ledger.get(rel) or {}
                record.add(Outcome(rel, Status.SKIPPED, list(rec.get("outputs", [])), "up to date"))
        failures: list[Outcome] = []
        for outcome in _progress(job.scheduler.process(todo), len(todo)):
            if outcome.status == Status.CHANGED:  # one-shot does not wait: report it
                outcome.status = Status.FAILED
            log_outcome(outcome)
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
    log_summary(summary_line(counts, time.perf_counter() - t0, settings.out_dir))
    if failures:
        log_failures(failures)
        return 1
    return 1 if record_failed else 0


def _progress(outcomes: Iterable[Outcome], total: int) -> Iterator[Outcome]:
    """A tqdm progress bar on a terminal for more than a handful of scans; plain iteration otherwise."""
    if total < 10 or not sys.stderr.isatty():
        yield from outcomes
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, unit="scan", dynamic_ncols=True, leave=False) as bar:
        for outcome in outcomes:
            bar.update(1)
            yield outcome
