"""One-shot folder conversion: ``edge-seg IN --out OUT``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from edge_runtime.layout import check_folders, iter_scans
from edge_runtime.ledger import Ledger
from edge_runtime.pipeline import Extra, JobOptions, Outcome, Processor, log_outcome, opencv_on_caller_threads
from edge_runtime.scanio import sweep_temp_files
from edge_runtime.segmenter import Segmenter

log = logging.getLogger("edge_seg")


def open_job(args: argparse.Namespace, in_dir: Path, out_dir: Path, daemon: bool = False) -> tuple[Processor, Ledger]:
    """Check the folders, load the model and the ledger: everything a run needs before its first scan.

    ``daemon``: for ``--watch``, which idles most of the time and favours latency over throughput.
    """
    in_dir, out_dir = check_folders(in_dir, out_dir)
    # One intra-op thread per session run, and a worker per core (plus one) taking whole batches
    # through the pipeline (Processor.process): cheaper than one run split over all cores (bench/README.md).
    segmenter = Segmenter(args.model, threads=1, spinning=not daemon)
    opencv_on_caller_threads()  # the workers are the parallelism
    thresholds = tuple(sorted(set(args.threshold))) if args.threshold else (segmenter.threshold,)
    ledger = Ledger(out_dir)  # takes the output folder's lock
    sweep_temp_files(out_dir)
    # A daemon favours latency (one scan a run, the workers still side by side); a folder, throughput.
    batch_size = args.batch_size or (1 if daemon else JobOptions.batch_size)
    options = JobOptions(thresholds=thresholds, batch_size=batch_size, extras=make_extras(args))
    processor = Processor(segmenter, in_dir, out_dir, options, ledger)
    processor.workers = args.threads + 1 if args.threads else None  # None: one per available core, plus one
    return processor, ledger


def make_extras(args: argparse.Namespace) -> tuple[Extra, ...]:
    """The outputs asked for besides the masks; overlays first, so the report can name them."""
    extras: list[Extra] = []
    if getattr(args, "overlay", False):
        from edge_runtime.overlay import OverlayWriter

        extras.append(OverlayWriter())
    if getattr(args, "report", False):
        from edge_runtime.findings import ReportWriter

        extras.append(ReportWriter())
    return tuple(extras)


def summary_line(counts: Counter, seconds: float, out_dir: Path) -> str:
    done = counts["ok"]
    rate = f", {done / seconds:.1f} scans/s" if done and seconds > 0 else ""
    return (
        f"done: {done} segmented, {counts['skipped']} up to date, {counts['failed']} failed "
        f"in {seconds:.1f} s{rate}; masks in {out_dir}"
    )


def run_once(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    processor, ledger = open_job(args, args.input, args.out)
    processor.force = args.force
    record, record_failed = None, False
    if getattr(args, "report", False):
        from edge_runtime.findings import RunRecord

        record = RunRecord(processor, ["edge-seg", *getattr(args, "argv", sys.argv[1:])])
    try:
        rels = list(iter_scans(processor.in_dir))
        if not rels:
            log.warning("no scans found under %s (looked for .png .jpg .jpeg .bmp .tif .tiff .dcm .dicom)", args.input)
        todo = [r for r in rels if args.force or processor.needs_work(r)]
        counts: Counter = Counter(skipped=len(rels) - len(todo))
        if record is not None:
            for rel in sorted(set(rels) - set(todo)):
                rec = ledger.get(rel) or {}
                record.add(Outcome(rel, "skipped", list(rec.get("outputs", [])), "up to date"))
        failures: list[Outcome] = []
        for outcome in _progress(processor.process(todo), len(todo)):
            if outcome.status == "changed":  # one-shot does not wait: report it
                outcome.status = "failed"
            log_outcome(outcome)
            counts[outcome.status] += 1
            if outcome.status == "failed":
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
        ledger.close()
    log.info(summary_line(counts, time.perf_counter() - t0, args.out), extra={"plain": True})
    if failures:
        log.error(
            "%d scan(s) failed; reasons are beside their masks as <name>.error.txt:",
            len(failures),
            extra={"plain": True},
        )
        for f in failures[:20]:
            log.error("  %s: %s", f.rel, f.reason, extra={"plain": True})
        return 1
    return 1 if record_failed else 0


def _progress(outcomes, total: int):
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
