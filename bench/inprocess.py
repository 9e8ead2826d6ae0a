"""In-process measurements of the runtime: stage costs, the steady-state pipeline, the inference bound.

Used by ``bench/run.py``; each function returns plain dicts of figures (milliseconds, scans/s).
"""

from __future__ import annotations

import hashlib
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from edge_runtime.core.model import OnnxModel
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.files.durable import sync_dirs, write_atomic
from edge_runtime.files.scans import decode_image, encode_png, read_bytes
from edge_runtime.job.assemble import build_job, opencv_on_caller_threads
from edge_runtime.job.discovery import iter_scans
from edge_runtime.job.ledger import Ledger, ScanState
from edge_runtime.job.settings import FOLDER_BATCH_SIZE, JobRequest, RunOptions


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def session_startup(path: Path, repeats: int = 5, cache_dir: Path | None = None) -> dict[str, float]:
    """Milliseconds to open a one-thread session on ``path`` and run its first scan: the first time, then the median.

    The first figure includes reading the file from disk (or the page cache); the session options
    are the CLI's (``OnnxModel(path, threads=1)``). With ``cache_dir`` (an empty folder) also: opening it
    when the graph cache is built there (``build_ms``, its thread joined) and from the cache then (median).
    """
    times, first = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = OnnxModel(path, threads=1)
        t1 = time.perf_counter()
        m.predict(np.zeros((1, *m.info.size, m.info.channels), np.float32))
        t2 = time.perf_counter()
        times.append((t1 - t0) * 1000.0)
        first.append((t2 - t1) * 1000.0)
    out = {
        "open_first_ms": times[0],
        "open_ms": _median(times[1:] or times),
        "first_run_ms": _median(first[1:] or first),
    }
    if cache_dir is not None:
        t0 = time.perf_counter()
        OnnxModel(path, threads=1, cache_dir=cache_dir).wait_for_cache()
        out["build_ms"] = (time.perf_counter() - t0) * 1000.0
        cached = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            OnnxModel(path, threads=1, cache_dir=cache_dir)
            cached.append((time.perf_counter() - t0) * 1000.0)
        out["open_cached_ms"] = _median(cached)
    return out


def _mark(wall: list[float], cpu: list[float]) -> None:
    wall.append(time.perf_counter())
    cpu.append(time.thread_time())


def serial_stages(scans: list[Path], model: OnnxModel, work: Path) -> dict[str, dict[str, float]]:
    """Median wall and CPU milliseconds per scan for each stage, one scan at a time on one thread (no overlap).

    CPU is this thread's own (``time.thread_time``), so another process's load does not count, but the
    kernel's work for this thread (the fsyncs' system calls) does.
    """
    seg = Segmenter(model)
    names = ["read", "sha256", "decode", "preprocess", "inference", "postprocess", "encode", "write", "write_nofsync"]
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    out = work / "serial"
    out.mkdir(parents=True, exist_ok=True)
    seg.predict(np.zeros((1, *model.info.size, model.info.channels), np.float32))  # warm-up
    for i, path in enumerate(scans):
        t, c = [time.perf_counter()], [time.thread_time()]
        mark = partial(_mark, t, c)
        data, _ = read_bytes(path)
        mark()
        hashlib.sha256(data).hexdigest()
        mark()
        pixels = decode_image(data, path)
        mark()
        tensor = seg.preprocess(pixels)
        mark()
        probs, presence = seg.run(tensor[None])
        mark()
        score = None if presence is None else float(presence[0])
        mask = seg.postprocess(probs[0], pixels.shape[:2], None, score, pixels).masks[seg.threshold]
        mark()
        png = encode_png(mask)
        mark()
        write_atomic(out / f"{i:04d}.png", png, fsync=True)
        mark()
        write_atomic(out / f"{i:04d}-n.png", png, fsync=False)
        mark()
        for k, a, b, ca, cb in zip(names, t, t[1:], c, c[1:], strict=False):
            times[k].append((b - a) * 1000.0)
            cpu[k].append((cb - ca) * 1000.0)
    # the files stay until the caller removes ``work``
    res = {k: {"ms": _median(times[k]), "cpu_ms": _median(cpu[k])} for k in names}
    res["total"] = {f: sum(res[k][f] for k in names if k != "write_nofsync") for f in ("ms", "cpu_ms")}
    return res


def pipeline_steady(
    in_dir: Path,
    model: OnnxModel,
    work: Path,
    repeats: int = 3,
    batch_size: int = FOLDER_BATCH_SIZE,
    fsync: bool = True,
    workers: int | None = None,
) -> dict:
    """``Scheduler.process`` over every scan in ``in_dir`` with the session already loaded and warm.

    Each repeat writes into a fresh OUT (under ``work``) with a fresh ledger. Returns the median wall time and scans/s,
    and the mean of each stage of ``Outcome.timings`` (stages overlap across threads, so these add up
    to more than the wall time per scan).
    """
    seg = Segmenter(model)
    seg.predict(np.zeros((batch_size, *model.info.size, model.info.channels), np.float32))  # warm-up
    opencv_on_caller_threads()  # as the CLI sets it (oneshot.open_job)
    rels = list(iter_scans(in_dir))
    walls: list[float] = []
    cpus: list[float] = []
    stage_sums: dict[str, list[float]] = {}
    ok = 0
    for r in range(repeats):
        out = Path(tempfile.mkdtemp(prefix=f"steady{r}-", dir=work))
        job = build_job(seg, in_dir, out, JobRequest(), RunOptions(workers, batch_size, fsync))
        os.sync()  # the last run's masks go to disk now, not by writeback during this one
        t0, c0 = time.perf_counter(), _process_cpu()
        outcomes = list(job.scheduler.process(rels))
        walls.append(time.perf_counter() - t0)
        cpus.append(_process_cpu() - c0)
        job.close()
        ok = sum(o.status == "ok" for o in outcomes)
        for o in outcomes:
            for k, v in o.timings.items():
                stage_sums.setdefault(k, []).append(v)
        # OUT stays until the caller removes ``work``: deleting files right before the next run makes
        # its file creation slower on some file systems (ext4 without a journal skips recently freed inodes).
    wall = _median(walls)
    return {
        "scans": len(rels),
        "ok": ok,
        "wall_s": wall,
        "scans_per_s": len(rels) / wall,
        "ms_per_scan": wall * 1000.0 / len(rels),
        "stages_ms": {k: float(np.mean(v)) for k, v in stage_sums.items()},
        "walls_s": walls,
        "cpu_ms_per_scan": _median(cpus) * 1000.0 / len(rels),
    }


def _process_cpu() -> float:
    """This process's user + system CPU seconds so far, all threads."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def inference_bound(
    tensors: np.ndarray, model: OnnxModel, batch_sizes=(1, 8), repeats: int = 3, runs: int = 1
) -> dict[int, dict]:
    """onnxruntime alone on already-preprocessed tensors: scans/s and ms/scan at each batch size.

    ``runs`` threads call the session at once, each on its share of the batches -- how the pipeline
    uses a one-thread session (one run per core).
    """
    res = {}
    with ThreadPoolExecutor(runs) as pool:
        for bs in batch_sizes:
            batches = [tensors[i : i + bs] for i in range(0, len(tensors), bs)]
            shares = [batches[k::runs] for k in range(runs)]

            def work(share: list[np.ndarray]) -> None:
                for b in share:
                    model.predict(b)

            list(pool.map(work, [[batches[0]]] * runs))  # warm-up (allocations for this shape)
            walls = []
            for _ in range(repeats):
                os.sync()  # as in pipeline_steady: no writeback of earlier runs during this one
                t0 = time.perf_counter()
                list(pool.map(work, shares))
                walls.append(time.perf_counter() - t0)
            wall = _median(walls)
            res[bs] = {
                "scans_per_s": len(tensors) / wall,
                "ms_per_scan": wall * 1000.0 / len(tensors),
                "walls_s": walls,
            }
    return res


def preprocessed(scans: list[Path], model: OnnxModel) -> np.ndarray:
    """The model's input tensors for ``scans``, stacked NHWC."""
    seg = Segmenter(model)
    return np.stack([seg.preprocess(decode_image(read_bytes(p)[0], p)) for p in scans])


def durability_costs(work: Path, n: int = 200, batch_size: int = FOLDER_BATCH_SIZE) -> dict[str, dict[str, float]]:
    """Wall and thread-CPU ms a scan of what makes a mask durable and recorded, beside the mask write itself.

    As ``Processor`` does it: a "begin" and a "done" ledger record a scan, the mask written atomically
    with fsync, one fsync of the masks' folder and one of the ledger a batch (``batch_size`` scans),
    and the scan's old error file removed. Records are shaped like the pipeline's (same keys).
    """
    out = Path(tempfile.mkdtemp(prefix="durable-", dir=work))
    ledger = Ledger(out)
    png = encode_png(np.zeros((360, 560), np.uint8))
    names = ["ledger", "mask_write", "mask_write_nofsync", "folder_fsync", "ledger_fsync", "error_unlink"]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}

    def timed(key: str, fn: Callable[..., object], *args: object, per: int = 1) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(*args)
        wall[key].append((time.perf_counter() - t0) * 1000.0 / per)
        cpu[key].append((time.thread_time() - c0) * 1000.0 / per)

    for start in range(0, n, batch_size):
        rels = [f"scan{i:05d}.png" for i in range(start, min(n, start + batch_size))]
        for rel in rels:
            state = ScanState(
                rel=rel,
                size=123456,
                mtime_ns=time.time_ns(),
                sha256=hashlib.sha256(rel.encode()).hexdigest(),
                sig="0123456789abcdef",
                model="0123456789abcdef",
                frames=1,
            )
            timed("ledger", ledger.begin, state, [rel])
            timed("mask_write", write_atomic, out / rel, png, True)
            timed("mask_write_nofsync", write_atomic, out / f"n-{rel}", png, False)
            timed("ledger", ledger.done, state, [rel])
            timed("error_unlink", (out / f"{rel}.error.txt").unlink, True)
        timed("folder_fsync", sync_dirs, [out], per=len(rels))
        timed("ledger_fsync", ledger.sync, per=len(rels))
    ledger.close()
    res: dict[str, dict[str, float]] = {}
    for k in names:
        per_scan = 2 if k == "ledger" else 1  # two records a scan
        res[k] = {"ms": _median(wall[k]) * per_scan, "cpu_ms": _median(cpu[k]) * per_scan}
    return res
