"""In-process measurements of the runtime: stage costs, the steady-state pipeline, the inference bound.

Used by ``bench/run.py``; each function returns plain dicts of figures (milliseconds, scans/s).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_runtime.core.model import OnnxModel
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import decode_image, encode_png, read_bytes
from edge_runtime.job.assemble import build_job, opencv_on_caller_threads
from edge_runtime.job.discovery import iter_scans
from edge_runtime.job.settings import FOLDER_BATCH_SIZE, JobRequest, RunOptions


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def serial_stages(scans: list[Path], model: OnnxModel, work: Path) -> dict[str, float]:
    """Median milliseconds per scan for each stage, one scan at a time on one thread (no overlap)."""
    seg = Segmenter(model)
    names = ["read", "sha256", "decode", "preprocess", "inference", "postprocess", "encode", "write", "write_nofsync"]
    times: dict[str, list[float]] = {k: [] for k in names}
    out = work / "serial"
    out.mkdir(parents=True, exist_ok=True)
    seg.predict(np.zeros((1, *model.info.size, model.info.channels), np.float32))  # warm-up
    for i, path in enumerate(scans):
        t = [time.perf_counter()]
        data, _ = read_bytes(path)
        t.append(time.perf_counter())
        hashlib.sha256(data).hexdigest()
        t.append(time.perf_counter())
        pixels = decode_image(data, path)
        t.append(time.perf_counter())
        tensor = seg.preprocess(pixels)
        t.append(time.perf_counter())
        prob = seg.predict(tensor[None])[0]
        t.append(time.perf_counter())
        mask = seg.postprocess(prob, pixels.shape[:2]).masks[seg.threshold]
        t.append(time.perf_counter())
        png = encode_png(mask)
        t.append(time.perf_counter())
        write_atomic(out / f"{i:04d}.png", png, fsync=True)
        t.append(time.perf_counter())
        write_atomic(out / f"{i:04d}-n.png", png, fsync=False)
        t.append(time.perf_counter())
        for k, a, b in zip(names, t, t[1:], strict=False):
            times[k].append((b - a) * 1000.0)
    res = {k: _median(v) for k, v in times.items()}  # the files stay until the caller removes ``work``
    res["total"] = sum(res[k] for k in names if k != "write_nofsync")
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
    walls, stage_sums, ok = [], {}, 0
    for r in range(repeats):
        out = Path(tempfile.mkdtemp(prefix=f"steady{r}-", dir=work))
        job = build_job(seg, in_dir, out, JobRequest(), RunOptions(workers, batch_size, fsync))
        os.sync()  # the last run's masks go to disk now, not by writeback during this one
        t0 = time.perf_counter()
        outcomes = list(job.scheduler.process(rels))
        walls.append(time.perf_counter() - t0)
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
    }


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
