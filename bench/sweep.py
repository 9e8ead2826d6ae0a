"""Tuning aid: the steady-state pipeline and the inference bound under different runtime settings.

    python -m bench.sweep                       # workers, session threads, spinning, batch size, fsync
    python -m bench.sweep --n 50 --repeats 5
    python -m bench.sweep --model runs/int8/ddti-fcn-int8.onnx   # the same for another (an int8) model

Each row changes one setting from the runtime's defaults; scans/s are medians over ``--repeats``.
Printed only: the figures steer the defaults in edge_runtime (see bench/README.md, tuning log).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python bench/sweep.py`: run as `python -m bench.sweep`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.sweep")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", type=Path)
    p.add_argument("--batch", type=int, help="batch size of the base setting (default: the runtime's, for folders)")
    p.add_argument("--priority", action="store_true", help="as bench/run.py --priority")
    p.add_argument("--work", type=Path, help="as bench/run.py --work")
    args = p.parse_args()

    from bench.common import ddti_root, pick_scans, stage_scans
    from bench.report import table
    from bench.run import busy_processes, file_create_ms, take_priority

    print(f"CPU priority {take_priority(args.priority)}")

    from bench import inprocess
    from edge_runtime.core.model import OnnxModel, available_cores, default_model_path
    from edge_runtime.job.settings import FOLDER_BATCH_SIZE

    default_batch = FOLDER_BATCH_SIZE
    args.batch = args.batch or default_batch

    model_path = args.model or default_model_path()
    cores = available_cores()
    print(f"{cores} core(s) available; other busy processes: {'; '.join(busy_processes(set())) or 'none'}")
    work = Path(tempfile.mkdtemp(prefix="edge-seg-sweep-", dir=args.work))
    print(f"work folder {work}: creating a file there takes {file_create_ms(work):.3f} ms (median)")
    try:
        in_dir = stage_scans(pick_scans(ddti_root(), args.n), work / "in")
        staged = sorted(in_dir.iterdir())
        rows = []
        models = {}

        def model(threads: int, spinning: bool) -> OnnxModel:
            key = (threads, spinning)
            if key not in models:
                models[key] = OnnxModel(model_path, threads=threads, spinning=spinning)
            return models[key]

        tensors = inprocess.preprocessed(staged, model(cores, True))
        # (label, intra-op threads, spinning, runs at once)
        ways = [("1 thread, 1 run at a time", 1, True, 1)]
        if cores > 1:
            ways += [
                (f"1 thread, {cores} runs at once (the default)", 1, True, cores),
                (f"{cores} threads, 1 run at a time, spinning on", cores, True, 1),
                (f"{cores} threads, 1 run at a time, spinning off", cores, False, 1),
            ]
        for label, threads, spinning, runs in ways:
            b = inprocess.inference_bound(tensors, model(threads, spinning), (1, 4, 8), args.repeats, runs=runs)
            rows.append([f"bound: {label}"] + [f"{b[bs]['scans_per_s']:.1f}" for bs in (1, 4, 8)])
        print(table(["onnxruntime alone", "batch 1 scans/s", "batch 4 scans/s", "batch 8 scans/s"], rows))
        print()

        # (label, pipeline_steady keywords, (intra-op threads, spinning)); one setting changed at a time
        base = {"batch_size": args.batch}
        settings = [("defaults" + (f" (batch {args.batch})" if args.batch != default_batch else ""), {}, (1, True))]
        settings += [(f"workers {n}", {"workers": n}, (1, True)) for n in (1, 2, 3, 4, 6) if n != cores + 1]
        if cores > 1:
            settings += [
                # issue 30's other layout: one run at a time on all the cores, with batches
                (f"1 worker, session on {cores} threads", {"workers": 1}, (cores, True)),
                (f"1 worker, session on {cores} threads, batch 8", {"workers": 1, "batch_size": 8}, (cores, True)),
                (f"session on {cores} threads", {}, (cores, True)),
                (f"session on {cores} threads, spinning off", {}, (cores, False)),
            ]
        settings += [(f"batch {bs}", {"batch_size": bs}, (1, True)) for bs in (1, 2, 4, 8, 16) if bs != args.batch]
        settings += [("no fsync", {"fsync": False}, (1, True))]
        results: dict[str, list[dict]] = {label: [] for label, _, _ in settings}
        for rnd in range(args.repeats):  # round-robin, so changing background load falls on every setting
            print(f"round {rnd + 1}/{args.repeats}", file=sys.stderr)
            inprocess.pipeline_steady(in_dir, model(1, True), work, repeats=1, **base)  # unmeasured warm-up
            for label, kw, key in settings:
                res = inprocess.pipeline_steady(in_dir, model(*key), work, repeats=1, **{**base, **kw})
                results[label].append(res)
        rows = []
        for label, runs in results.items():
            runs = sorted(runs, key=lambda x: x["scans_per_s"])
            mid = runs[len(runs) // 2]
            st = mid["stages_ms"]
            rows.append(
                [
                    label,
                    f"{mid['scans_per_s']:.1f}",
                    f"{runs[0]['scans_per_s']:.1f}-{runs[-1]['scans_per_s']:.1f}",
                    " / ".join(
                        f"{st.get(k, 0):.1f}" for k in ("read", "preprocess", "inference", "postprocess", "write")
                    ),
                ]
            )
        print(
            table(
                ["pipeline setting", "scans/s", "range", "stages ms: read/pre/infer/post/write"],
                rows,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
