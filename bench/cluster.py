"""Scans/s with the thread executor against 1 and 2 Dask workers, and the Dask scheduler's cost a scan.

    python -m bench.cluster [--n 128] [--repeats 3] [--priority] [--model M.onnx]

Every setting runs the same job (``open_job`` then ``Scheduler.process`` over DDTI frames copied into a
temporary folder, a fresh OUT each round), in interleaved rounds after a warm-up pass, and times the
conversion alone: the cluster is started once per setting (a ``LocalCluster`` of worker processes, as
``--cluster local:N`` starts), and the workers' model sessions are loaded before the clock starts. The
scheduler's cost is measured on the same 2-worker cluster with empty tasks, pipelined as the
executor submits them, and one at a time (a round trip); divided by the scans a task carries
(``SCANS_PER_TASK``), it is the cost a scan. Figures and their meaning for 10 and 100 workers:
bench/README.md, "On a Dask cluster".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python bench/cluster.py`: run as `python -m bench.cluster`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.cluster")

from bench.common import ddti_root, pick_scans, stage_scans


def _noop(x: int) -> int:
    return x


#: seconds the client spent recording scans done (Recorder.record_done), and how many
RECORDING = [0.0, 0]


def timed_recording() -> None:
    """Wrap Recorder.record_done to add up the client's cost a scan (ledger record, error-file check)."""
    from edge_runtime.job.recorder import Recorder

    real = Recorder.record_done

    def record_done(self: Recorder, written: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(self, written)
        finally:
            RECORDING[0] += time.perf_counter() - t0
            RECORDING[1] += 1

    Recorder.record_done = record_done  # type: ignore[method-assign]


def convert(in_dir: Path, out_dir: Path, model: Path | None, cluster: str | None) -> tuple[float, int]:
    """One conversion of every scan in ``in_dir``: (seconds in ``Scheduler.process``, scans done)."""
    from edge_runtime.job.assemble import open_job
    from edge_runtime.job.settings import JobRequest, RunOptions
    from edge_runtime.job.sources import list_folder

    job = open_job(in_dir, out_dir, JobRequest(model), RunOptions(cluster=cluster))
    try:
        rels = list_folder(job.in_dir)
        t0 = time.perf_counter()
        done = sum(o.status == "ok" for o in job.scheduler.process(rels))
        return time.perf_counter() - t0, done
    finally:
        job.close()


def scheduler_cost(client: Any, tasks: int) -> tuple[float, float]:
    """ms a task for empty tasks: pipelined (all submitted, then gathered) and one at a time."""
    from distributed import wait

    t0 = time.perf_counter()
    wait([client.submit(_noop, i, pure=False) for i in range(tasks)])
    pipelined = (time.perf_counter() - t0) * 1000 / tasks
    t0 = time.perf_counter()
    for i in range(tasks // 4):
        client.submit(_noop, i, pure=False).result()
    one = (time.perf_counter() - t0) * 1000 / (tasks // 4)
    return pipelined, one


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128, help="scans a round (DDTI frames)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds a setting")
    p.add_argument("--tasks", type=int, default=400, help="empty tasks for the scheduler's cost")
    p.add_argument("--model", type=Path)
    p.add_argument("--priority", action="store_true", help="as bench/run.py --priority")
    p.add_argument("--work", type=Path, help="as bench/run.py --work")
    args = p.parse_args()

    from bench.run import busy_processes, take_priority

    print(f"CPU priority {take_priority(args.priority)}")
    import logging

    import cv2
    from distributed import Client, LocalCluster

    from edge_runtime.core.model import available_cores
    from edge_runtime.job.cluster import SCANS_PER_TASK, local_threads

    logging.getLogger("distributed").setLevel(logging.ERROR)
    timed_recording()
    cv2.setNumThreads(1)  # as the CLI does (edge_runtime.job.assemble.opencv_on_caller_threads)
    work = Path(tempfile.mkdtemp(prefix="edge-seg-bench-cluster-", dir=args.work))
    try:
        in_dir = stage_scans(pick_scans(ddti_root(), args.n), work / "in")
        cores = available_cores()
        clusters = {
            k: LocalCluster(n_workers=k, threads_per_worker=local_threads(k), processes=True, dashboard_address=":0")
            for k in (1, 2)
        }
        settings = {"threads": None, "dask, 1 worker": clusters[1].scheduler_address}
        settings["dask, 2 workers"] = clusters[2].scheduler_address
        seconds: dict[str, list[float]] = {name: [] for name in settings}
        for name, address in settings.items():  # warm-up: worker sessions loaded, caches warm
            convert(in_dir, work / f"warm-{len(seconds[name])}-{name}", args.model, address)
        for r in range(args.repeats):
            for name, address in settings.items():
                out = work / f"out-{r}-{name.replace(' ', '_')}"
                s, done = convert(in_dir, out, args.model, address)
                assert done == len(list(in_dir.iterdir())), f"{name}: {done} scans done"
                seconds[name].append(s)
                shutil.rmtree(out)
        with Client(clusters[2]) as client:
            pipelined, one = scheduler_cost(client, args.tasks)
        for c in clusters.values():
            c.close()
        print(f"\n{args.n} DDTI scans a round, {args.repeats} interleaved rounds, {cores} cores; median (range)")
        print("| executor | scans/s | s a round | workers x threads |")
        print("| --- | --- | --- | --- |")
        shape = {"threads": f"1 process x {cores + 1} threads", "dask, 1 worker": f"1 x {local_threads(1)}"}
        shape["dask, 2 workers"] = f"2 x {local_threads(2)}"
        for name, secs in seconds.items():
            med = statistics.median(secs)
            print(f"| {name} | {args.n / med:.1f} ({args.n / max(secs):.1f}-{args.n / min(secs):.1f}) "
                  f"| {med:.2f} | {shape[name]} |")  # fmt: skip
        print(f"\nscheduler, {args.tasks} empty tasks on 2 workers: {pipelined:.2f} ms a task pipelined, "
              f"{one:.2f} ms one at a time (round trip)")  # fmt: skip
        print(f"a task carries {SCANS_PER_TASK} scans: {pipelined / SCANS_PER_TASK:.3f} ms a scan pipelined, "
              f"{one / SCANS_PER_TASK:.3f} ms a scan one at a time")  # fmt: skip
        print(f"the client, recording a scan done: {RECORDING[0] * 1000 / max(1, RECORDING[1]):.3f} ms "
              f"(mean of {RECORDING[1]})")  # fmt: skip
        busy = busy_processes({os.getpid()})
        if busy:
            print(f"other busy processes during the run: {busy}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
