"""The scheduler and the processor: several workers give the same outputs as one, in input order; batches,
worker counts, folder syncs before a scan is recorded done; the job defaults for a folder and the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from edge_runtime.job.assemble import Job, open_job
from edge_runtime.job.processor import Processor
from edge_runtime.job.scheduler import Scheduler, default_workers
from edge_runtime.job.settings import JobRequest, RunOptions
from tests.helpers import synthetic, write_png


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[str]]:
    """Nine good scans of different sizes and one corrupt one, in a fixed order."""
    root = tmp_path / "in"
    rels = []
    for i in range(10):
        rel = f"s{i:02d}.png"
        if i == 6:
            (root / rel).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        else:
            write_png(root / rel, synthetic(i, 150 + 9 * i, 170 + 7 * i)[0])
        rels.append(rel)
    return root, rels


def job_for(model: Path, root: Path, out: Path, workers: int | None = None, batch_size: int = 2) -> Job:
    return open_job(root, out, JobRequest(model), RunOptions(workers=workers, batch_size=batch_size))


def run(job: Job, rels: list[str]) -> tuple[list, dict[str, bytes]]:
    out = job.out_dir
    try:
        outcomes = list(job.scheduler.process(rels))
    finally:
        job.close()
    masks = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}
    return outcomes, masks


class SlowFirstBatch:
    """Wraps a model so the first batch finishes last: outcomes must still come in input order."""

    def __init__(self, model):
        self.model = model
        self.threads = 1
        self.info = model.info
        self._calls = 0
        self._lock = threading.Lock()

    def run(self, batch):
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if first:
            time.sleep(0.3)
        return self.model.run(batch)


def test_several_workers_write_the_same_masks_in_input_order(folder, tmp_path, tiny_model):
    root, rels = folder
    serial, serial_masks = run(job_for(tiny_model, root, tmp_path / "one", workers=1), rels)

    slow = job_for(tiny_model, root, tmp_path / "two", workers=3)
    slow.segmenter.model = SlowFirstBatch(slow.segmenter.model)
    parallel, parallel_masks = run(slow, rels)

    assert [o.rel for o in parallel] == rels == [o.rel for o in serial]
    assert [o.status for o in parallel] == [o.status for o in serial]
    assert [o.status for o in parallel].count("ok") == 9 and parallel[6].status == "failed"
    assert len(parallel_masks) == 9
    assert parallel_masks == serial_masks  # byte for byte


def test_default_workers_follow_the_session_threads(tmp_path, tiny_model, monkeypatch):
    import edge_runtime.job.scheduler as scheduler

    monkeypatch.setattr(scheduler, "available_cores", lambda: 4)
    assert default_workers(1) == 5  # one-thread session: a worker per core, plus one
    assert default_workers(4) == 2  # a session on all four cores: one running, one loading
    (tmp_path / "in").mkdir()
    job = job_for(tiny_model, tmp_path / "in", tmp_path / "out")
    job.close()
    assert job.scheduler.workers == 5  # the job's session runs on one thread
    assert Scheduler(job.processor, job.naming, job.scheduler.recorder, workers=7).workers == 7


def test_an_inference_failure_is_each_scans_fail_outcome_not_the_end_of_the_run(folder, tmp_path, tiny_model):
    """Issue 15: per-scan problems are a FAIL line and the run goes on (a batch that fails is tried scan by scan)."""
    root, rels = folder
    job = job_for(tiny_model, root, tmp_path / "out", workers=2)

    class Broken:
        threads = 1
        info = job.segmenter.model.info

        def run(self, batch):
            raise RuntimeError("onnxruntime fell over")

    job.segmenter.model = Broken()
    outcomes, masks = run(job, rels)
    assert [o.rel for o in outcomes] == rels and not masks and all(o.status == "failed" for o in outcomes)
    reasons = {o.rel: o.reason for o in outcomes if o.rel != "s06.png"}  # s06 is corrupt: its own reason
    assert set(reasons.values()) == {"inference failed: RuntimeError: onnxruntime fell over"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings are Linux-only")
def test_daemon_allocator_settings_are_accepted():
    # In a child process, so the test run's own allocator is left alone.
    code = (
        "from edge_runtime.memory import settle_allocator, release_free_memory\n"
        "import numpy as np\n"
        "ok = settle_allocator()\n"
        "a = np.ones(10_000_000); del a\n"
        "release_free_memory()\n"
        "print(ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("argv", "daemon", "batch", "workers"),
    [
        ([], False, 1, None),  # a folder: one scan a run too (batches of 4 held twice the memory for 1.5% of time)
        ([], True, 1, None),  # the daemon: each scan as soon as it is ready
        (["--batch-size", "4"], False, 4, None),  # a folder asking for batches of 4
        (["--batch-size", "8", "--threads", "3"], True, 8, 4),
    ],
)
def test_job_defaults_for_a_folder_and_for_the_daemon(tmp_path, tiny_model, argv, daemon, batch, workers):
    from edge_runtime.cli import build_parser, settings_from_args

    (tmp_path / "in").mkdir()
    cv2.setNumThreads(-1)  # OpenCV's default pool, whatever an earlier test set
    assert cv2.getNumThreads() > 1 or (os.cpu_count() or 1) == 1
    where = ["--watch", str(tmp_path / "in")] if daemon else [str(tmp_path / "in")]
    argv = [*where, "--out", str(tmp_path / "out"), "--model", str(tiny_model), *argv]
    settings = settings_from_args(build_parser().parse_args(argv), argv)
    job = open_job(settings.in_dir, settings.out_dir, settings.job, settings.run, daemon=daemon)
    job.close()
    assert job.options.batch_size == batch
    assert job.options.workers == workers
    assert job.segmenter.model.threads == 1  # one-thread runs, side by side
    assert cv2.getNumThreads() == 1  # and OpenCV on the workers' own threads


@pytest.mark.parametrize("batch", [1, 3])
def test_folders_are_synced_before_a_scan_is_recorded_done(folder, tmp_path, tiny_model, monkeypatch, batch):
    import edge_runtime.job.processor as processor
    from edge_runtime.files.durable import sync_dirs

    root, rels = folder
    rels = rels[:6]  # all readable
    out = tmp_path / "out"
    calls: list[tuple[set[Path], set[str], set[str]]] = []  # folders, masks on disk, scans recorded done

    def spy(folders):
        done = set(ledger.done_rels())
        calls.append(({Path(f) for f in folders}, {p.name for p in out.glob("*.png")}, done))
        sync_dirs(folders)

    monkeypatch.setattr(processor, "sync_dirs", spy)
    job = job_for(tiny_model, root, out, workers=1, batch_size=batch)
    ledger = job.ledger
    outcomes = list(job.scheduler.process(rels))
    job.close()
    assert [o.status for o in outcomes] == ["ok"] * len(rels)
    # batch 3, one worker: [s00 s01 s02], then the last three one a batch (they finish together)
    assert len(calls) == (6 if batch == 1 else 4)  # once per batch, not once per scan
    for rel in rels:
        first = next(c for c in calls if rel in c[1])  # the first sync after its mask was written
        assert first[0] == {out}  # the masks' folder
        assert rel not in first[2]  # synced first, recorded done after
    sync_dirs([tmp_path / "no such folder", out, out])  # missing folders are skipped, repeats synced once


@pytest.mark.parametrize(
    ("n", "batch", "workers", "sizes"),
    [
        (10, 2, 2, [2, 2, 2, 1, 1, 1, 1]),  # a long run: full batches, then the last workers x batch one a batch
        (17, 4, 3, [4] + [1] * 13),
        (12, 4, 3, [4, 4, 4]),  # a short run (a daemon's group: workers x batch): one batch per worker
        (5, 4, 3, [2, 2, 1]),  # split evenly over the workers
        (7, 1, 3, [1] * 7),
    ],
)
def test_batches_end_so_that_the_workers_finish_together(tmp_path, tiny_model, monkeypatch, n, batch, workers, sizes):
    root = tmp_path / "in"
    rels = [f"s{i:02d}.png" for i in range(n)]
    for i, rel in enumerate(rels):
        write_png(root / rel, synthetic(i, 40, 50)[0])
    seen: list[list[str]] = []
    real_work = Processor.work

    def spy(self, b, known=None):
        seen.append([getattr(item, "rel", item) for item in b])  # the names each scan goes with
        return real_work(self, b, known)

    monkeypatch.setattr(Processor, "work", spy)
    job = job_for(tiny_model, root, tmp_path / "out", workers=workers, batch_size=batch)
    outcomes = list(job.scheduler.process(rels))
    job.close()
    assert [o.rel for o in outcomes] == rels and all(o.status == "ok" for o in outcomes)
    seen.sort(key=lambda b: rels.index(b[0]))  # the workers may start them in any order
    assert [len(b) for b in seen] == sizes
    assert [rel for b in seen for rel in b] == rels  # consecutive scans, each once
