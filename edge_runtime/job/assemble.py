"""Putting a job together: check the folders, load the model and the ledger, build the parts that run it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from edge_runtime.core.segmenter import Segmenter
from edge_runtime.errors import ScanError
from edge_runtime.job.discovery import check_folders
from edge_runtime.job.ledger import Ledger
from edge_runtime.job.outcome import Outcome
from edge_runtime.job.plan import Planner
from edge_runtime.job.processor import Processor
from edge_runtime.job.recorder import Recorder
from edge_runtime.job.scheduler import Scheduler
from edge_runtime.job.settings import JobRequest, JobSpec, RunOptions
from edge_runtime.job.settings_file import check_and_record
from edge_runtime.outputs.base import OutputSetup
from edge_runtime.outputs.layout import STATE_DIR
from edge_runtime.outputs.naming import Naming, folds_case
from edge_runtime.outputs.writers import make_writers

if TYPE_CHECKING:
    from edge_runtime.job.cluster import DaskExecutor

log = logging.getLogger(__name__)


@dataclass
class Job:
    """Everything a run needs before its first scan; :meth:`close` releases the output folder."""

    in_dir: Path
    out_dir: Path
    spec: JobSpec
    options: RunOptions
    segmenter: Segmenter
    ledger: Ledger
    planner: Planner
    naming: Naming
    processor: Processor
    scheduler: Scheduler
    #: what differs from the settings OUT was made with, in words (:mod:`edge_runtime.job.settings_file`)
    settings_changed: list[str] = field(default_factory=list)
    #: the Dask cluster the batches run on (``--cluster``), or None: threads of this process
    cluster: DaskExecutor | None = None

    def fail(self, error: ScanError) -> Outcome:
        """Record ``error`` as its scan's failure (error file and ledger record): its outcome."""
        return self.scheduler.recorder.fail(error.path, error)

    def close(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.close()
        finally:
            self.ledger.close()


def open_job(
    in_dir: Path,
    out_dir: Path,
    request: JobRequest,
    options: RunOptions,
    daemon: bool = False,
    scan: str | None = None,
) -> Job:
    """Check the folders, load the model and the ledger (which takes OUT's lock), and build the job's parts.

    ``daemon``: for ``--watch``, which idles most of the time: the session's idle threads sleep instead
    of spinning. ``scan``: a single-file run on ``in_dir / scan`` (:func:`check_folders`).
    """
    in_dir, out_dir = check_folders(in_dir, out_dir, scan)
    # One intra-op thread per session run, and a worker per core (plus one) taking whole batches
    # through the pipeline (Scheduler.process): cheaper than one run split over all cores (bench/README.md).
    segmenter = Segmenter(request.model, threads=1, spinning=not daemon, cache_dir=options.cache_dir)
    opencv_on_caller_threads()  # the workers are the parallelism
    return build_job(segmenter, in_dir, out_dir, request, options, daemon=daemon)


def build_job(
    segmenter: Segmenter,
    in_dir: Path,
    out_dir: Path,
    request: JobRequest,
    options: RunOptions,
    *,
    daemon: bool = False,
) -> Job:
    """The job's parts around a loaded model, for folders already checked (``request.model`` is not read).

    ``daemon``: a scan modified while being read waits to settle (:class:`Recorder`), else it fails.
    """
    spec = request.resolve(segmenter.info)
    # Joins the output folder's writers (alone on it, it first clears what killed ones left).
    ledger = Ledger(out_dir, options.part)
    cluster = None
    try:
        changed = check_and_record(out_dir, spec)
        writers = make_writers(
            OutputSetup(out_dir, spec.thresholds, spec.model, spec.kinds, options.fsync, spec.pixel_spacing)
        )
        planner = Planner(in_dir, ledger, spec.signature, options.part)
        folders = [(w.folder, w.kind) for w in writers if w.folder]
        naming = Naming(in_dir, ledger, len(spec.thresholds), folders, folds_case(ledger.dir))
        recorder = Recorder(ledger, in_dir, out_dir, spec.signature, options.fsync, waits_for_changes=daemon)
        if options.cluster is None:
            processor = Processor(segmenter, spec, options, writers, in_dir, out_dir, begin=ledger.begin)
            scheduler = Scheduler(processor, naming, recorder, options.workers)
        else:
            from edge_runtime.job.cluster import SCANS_PER_TASK, TAIL_SCANS_PER_TASK, connect

            # The workers build their own processors; this one only gives the scheduler its settings.
            processor = Processor(segmenter, spec, options, writers, in_dir, out_dir)
            recorder.keep_outputs = True  # a worker lost mid-write leaves temporary files to sweep at the end
            cluster = dask = connect(options.cluster, request, spec, options, in_dir, out_dir)
            scheduler = Scheduler(
                processor,
                naming,
                recorder,
                dask.workers,
                executor=lambda _workers: dask,
                work=dask.work,
                batch_size=max(SCANS_PER_TASK, options.batch_size),
                tail_size=TAIL_SCANS_PER_TASK,
            )
    except BaseException:
        ledger.close()
        raise
    return Job(
        in_dir,
        out_dir,
        spec,
        options,
        segmenter,
        ledger,
        planner=planner,
        naming=naming,
        processor=processor,
        scheduler=scheduler,
        settings_changed=changed,
        cluster=cluster,
    )


def opencv_on_caller_threads() -> None:
    """Make OpenCV run each call on the thread that makes it, for a process whose work goes through
    :meth:`Scheduler.process`.

    The workers already keep every core busy; OpenCV's own pool would split their resizes over more
    threads, which then spin (``sched_yield``) waiting for the next call, taking CPU from the workers:
    0.1-0.2 ms a scan (bench/README.md, tuning log). Process-wide, so the CLI calls it, not the library.
    """
    cv2.setNumThreads(1)


def close_job(job: Job) -> bool:
    """Close the job (the ledger's last records go to disk); False, with one line, if OUT would not take them."""
    try:
        job.close()
    except OSError as exc:
        log.error(
            "cannot save the ledger's last records in %s: %s; the scans they record are done again by the next run",
            job.out_dir / STATE_DIR,
            exc.strerror or exc,
        )
        return False
    return True
