"""Processor.process: several workers at once give the same outputs as one, in input order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest

from edge_runtime.ledger import Ledger
from edge_runtime.pipeline import JobOptions, Processor
from edge_runtime.segmenter import Segmenter
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


def run(
    segmenter: Segmenter, root: Path, rels: list[str], out: Path, workers: int | None = None
) -> tuple[list, dict[str, bytes]]:
    ledger = Ledger(out)
    try:
        proc = Processor(segmenter, root, out, JobOptions((segmenter.threshold,), batch_size=2), ledger)
        proc.workers = workers
        outcomes = list(proc.process(rels))
    finally:
        ledger.close()
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
    one = Segmenter(tiny_model, threads=1)
    serial, serial_masks = run(one, root, rels, tmp_path / "one", workers=1)

    slow = Segmenter(tiny_model, threads=1)
    slow.model = SlowFirstBatch(slow.model)
    parallel, parallel_masks = run(slow, root, rels, tmp_path / "two", workers=3)

    assert [o.rel for o in parallel] == rels == [o.rel for o in serial]
    assert [o.status for o in parallel] == [o.status for o in serial]
    assert [o.status for o in parallel].count("ok") == 9 and parallel[6].status == "failed"
    assert len(parallel_masks) == 9
    assert parallel_masks == serial_masks  # byte for byte


def test_default_workers_follow_the_session_threads(tmp_path, tiny_model, monkeypatch):
    import edge_runtime.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_cores", lambda: 4)

    def processor(threads: int) -> Processor:
        ledger = Ledger(tmp_path / f"out{threads}")
        ledger.close()
        return Processor(
            Segmenter(tiny_model, threads=threads), tmp_path, tmp_path / f"out{threads}", JobOptions((0.5,)), ledger
        )

    assert processor(1).worker_count() == 5  # one-thread session: a worker per core, plus one
    assert processor(4).worker_count() == 2  # a session on all four cores: one running, one loading
    p = processor(2)
    p.workers = 7
    assert p.worker_count() == 7


def test_an_inference_failure_reaches_the_caller(folder, tmp_path, tiny_model):
    root, rels = folder
    seg = Segmenter(tiny_model, threads=1)

    class Broken:
        threads = 1
        info = seg.model.info

        def run(self, batch):
            raise RuntimeError("onnxruntime fell over")

    seg.model = Broken()
    with pytest.raises(RuntimeError, match="fell over"):
        run(seg, root, rels, tmp_path / "out", workers=2)


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
        ([], False, 4, None),  # a folder: throughput
        ([], True, 1, None),  # the daemon: each scan as soon as it is ready
        (["--batch-size", "8", "--threads", "3"], True, 8, 4),
    ],
)
def test_job_defaults_for_a_folder_and_for_the_daemon(tmp_path, tiny_model, argv, daemon, batch, workers):
    from edge_runtime.cli import build_parser
    from edge_runtime.oneshot import open_job

    (tmp_path / "in").mkdir()
    cv2.setNumThreads(-1)  # OpenCV's default pool, whatever an earlier test set
    assert cv2.getNumThreads() > 1 or (os.cpu_count() or 1) == 1
    args = build_parser().parse_args(
        [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(tiny_model), *argv]
    )
    processor, ledger = open_job(args, args.input, args.out, daemon=daemon)
    ledger.close()
    assert processor.options.batch_size == batch
    assert processor.workers == workers
    assert processor.segmenter.model.threads == 1  # one-thread runs, side by side
    assert cv2.getNumThreads() == 1  # and OpenCV on the workers' own threads


@pytest.mark.parametrize("batch", [1, 3])
def test_folders_are_synced_before_a_scan_is_recorded_done(folder, tmp_path, tiny_model, monkeypatch, batch):
    import edge_runtime.pipeline as pipeline
    from edge_runtime.scanio import sync_dirs

    root, rels = folder
    rels = rels[:6]  # all readable
    out = tmp_path / "out"
    calls: list[tuple[set[Path], set[str], set[str]]] = []  # folders, masks on disk, scans recorded done

    def spy(folders):
        done = {r["rel"] for r in ledger.records.values() if r["event"] == "done"}
        calls.append(({Path(f) for f in folders}, {p.name for p in out.glob("*.png")}, done))
        sync_dirs(folders)

    monkeypatch.setattr(pipeline, "sync_dirs", spy)
    ledger = Ledger(out)
    seg = Segmenter(tiny_model, threads=1)
    proc = Processor(seg, root, out, JobOptions((seg.threshold,), batch_size=batch), ledger)
    proc.workers = 1
    outcomes = list(proc.process(rels))
    ledger.close()
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

    def spy(self, b):
        seen.append(list(b))
        return real_work(self, b)

    monkeypatch.setattr(Processor, "work", spy)
    ledger = Ledger(tmp_path / "out")
    seg = Segmenter(tiny_model, threads=1)
    proc = Processor(seg, root, tmp_path / "out", JobOptions((seg.threshold,), batch_size=batch), ledger)
    proc.workers = workers
    outcomes = list(proc.process(rels))
    ledger.close()
    assert [o.rel for o in outcomes] == rels and all(o.status == "ok" for o in outcomes)
    seen.sort(key=lambda b: rels.index(b[0]))  # the workers may start them in any order
    assert [len(b) for b in seen] == sizes
    assert [rel for b in seen for rel in b] == rels  # consecutive scans, each once
