"""The worker layout, measured: edge-seg's workers against a pipeline of threads with one job each (issue 30).

    python -m bench.layouts                       # 100 DDTI scans, 3 rounds, the bundled model
    python -m bench.layouts --model M.onnx --n 200 --rounds 5 --priority

Every layout runs the runtime's own stages (:class:`edge_runtime.job.processor.Processor`: load = read,
decode and preprocess; infer; postprocess with the second stage; finish = write the outputs, synced; the
ledger records each scan) on the same scans, with the session warm, into a fresh OUT each time:

- **workers** (edge-seg's layout): ``Scheduler.process``, ``W`` worker threads each taking whole batches
  of one scan through every stage, one-thread session runs side by side (W = cores + 1, the default, and
  W = cores);
- **session on all cores**: the same with one worker and a session of ``cores`` intra-op threads;
- **pipeline**: one thread loads (read, decode, preprocess), ``M`` threads run the model (inference and
  the postprocess, whose second stage is a model run too), and the calling thread writes and records --
  the layout where "one thread decodes and encodes while the other runs the model" (M = 1 and M = cores).

Printed: scans/s and ms of wall time a scan (median round), the process's CPU ms a scan. The rounds
alternate the layouts, so a change in background load falls on each alike. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.inprocess import _median, _process_cpu
from edge_runtime.core.model import OnnxModel
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.errors import ScanError
from edge_runtime.files.durable import sync_dirs
from edge_runtime.job.assemble import Job, build_job, opencv_on_caller_threads
from edge_runtime.job.discovery import iter_scans
from edge_runtime.job.processor import Written
from edge_runtime.job.settings import JobRequest, RunOptions
from edge_runtime.outputs.naming import Names

_END = object()


def workers(job: Job, rels: list[str]) -> int:
    """edge-seg's layout: the scheduler's workers, each through every stage; the scans done."""
    return sum(o.status == "ok" for o in job.scheduler.process(rels))


def pipeline(job: Job, rels: list[str], model_threads: int) -> int:
    """One loading thread, ``model_threads`` model threads, and this thread writing and recording; the scans done."""
    proc = job.processor
    loaded: queue.Queue = queue.Queue(maxsize=2 * model_threads)
    inferred: queue.Queue = queue.Queue(maxsize=2 * model_threads)
    grants = {rel: job.naming.grant(rel) for rel in rels}  # (the scheduler grants names on its own thread too)

    def load() -> None:
        for rel in rels:
            item = proc._safe_load(rel)
            assert not isinstance(item, ScanError), item  # the benchmark's scans are all good ones
            loaded.put(item)
        for _ in range(model_threads):
            loaded.put(_END)

    def run_model() -> None:
        while (item := loaded.get()) is not _END:
            pred = proc._safe_infer([item])[0]
            inferred.put((item, pred if isinstance(pred, ScanError) else proc._safe_postprocess([item], [pred])[0]))
        inferred.put(_END)

    threads = [threading.Thread(target=load)] + [threading.Thread(target=run_model) for _ in range(model_threads)]
    for t in threads:
        t.start()
    done, ended = 0, 0
    while ended < model_threads:
        got = inferred.get()
        if got is _END:
            ended += 1
            continue
        item, segs = got
        names = grants[item.rel]
        assert isinstance(names, Names) and isinstance(segs, list), f"{item.rel}: {segs}"
        res = proc._safe_finish(item, segs, names)
        if isinstance(res, Written):
            sync_dirs([(proc.out_dir / o).parent for o in res.outcome.outputs])
        done += sum(o.status == "ok" for o in job.scheduler.recorder.record([res]))
        assert not job.naming.release(item.rel), "the benchmark's scans have distinct names: none waits for one"
    for t in threads:
        t.join()
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="scans (default 100)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model", type=Path)
    p.add_argument("--priority", action="store_true", help="as bench/run.py --priority")
    p.add_argument("--work", type=Path, help="as bench/run.py --work")
    args = p.parse_args()

    from bench.common import ddti_root, pick_scans, stage_scans
    from bench.report import table
    from bench.run import busy_processes, take_priority
    from edge_runtime.core.model import available_cores, default_model_path

    print(f"CPU priority {take_priority(args.priority)}")
    cores = available_cores()
    print(f"{cores} core(s) available; other busy processes: {'; '.join(busy_processes(set())) or 'none'}")
    model_path = args.model or default_model_path()
    work = Path(tempfile.mkdtemp(prefix="edge-seg-layouts-", dir=args.work))
    try:
        in_dir = stage_scans(pick_scans(ddti_root(), args.n), work / "in")
        rels = sorted(iter_scans(in_dir))
        one = OnnxModel(model_path, threads=1)
        wide = OnnxModel(model_path, threads=cores)
        opencv_on_caller_threads()  # as the CLI sets it
        # label -> (session, workers of the scheduler, the run)
        layouts: dict[str, tuple[OnnxModel, int, Callable[[Job, list[str]], int]]] = {
            f"workers: {cores + 1} (edge-seg's default), 1-thread runs": (one, cores + 1, workers),
            f"workers: {cores}, 1-thread runs": (one, cores, workers),
            f"1 worker, session on {cores} threads": (wide, 1, workers),
            "pipeline: 1 loading thread, 1 model thread, 1 writing": (one, 1, lambda j, r: pipeline(j, r, 1)),
        }
        if cores > 1:
            layouts[f"pipeline: 1 loading thread, {cores} model threads, 1 writing"] = (
                one,
                1,
                lambda j, r: pipeline(j, r, cores),
            )
        walls: dict[str, list[float]] = {k: [] for k in layouts}
        cpus: dict[str, list[float]] = {k: [] for k in layouts}
        for rnd in range(args.rounds + 1):  # the first round warms every session up, unmeasured
            print(f"round {rnd}/{args.rounds}{' (warm-up)' if rnd == 0 else ''}", file=sys.stderr)
            for label, (model, n_workers, run) in layouts.items():
                out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
                job = build_job(Segmenter(model), in_dir, out, JobRequest(), RunOptions(n_workers, 1, True))
                os.sync()
                t0, c0 = time.perf_counter(), _process_cpu()
                ok = run(job, rels)
                wall, cpu = time.perf_counter() - t0, _process_cpu() - c0
                job.close()
                if ok != len(rels):
                    sys.exit(f"{label}: {ok} of {len(rels)} scans done")
                if rnd:
                    walls[label].append(wall)
                    cpus[label].append(cpu)
        rows = []
        for label in layouts:
            w = _median(walls[label])
            rows.append(
                [
                    label,
                    f"{len(rels) / w:.1f}",
                    f"{len(rels) / max(walls[label]):.1f}-{len(rels) / min(walls[label]):.1f}",
                    f"{w * 1000 / len(rels):.1f}",
                    f"{_median(cpus[label]) * 1000 / len(rels):.1f}",
                ]
            )
        print(f"{len(rels)} scans, {model_path.name}, {args.rounds} rounds (median):")
        print(table(["layout", "scans/s", "range", "wall ms a scan", "CPU ms a scan"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
