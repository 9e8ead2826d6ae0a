"""What splitting a two-stage model into one graph a stage would save (issue 30): the runtime feeds the stage
it does not run an empty batch, because both stages sit in one graph and onnxruntime wants every input.

    python -m bench.split                  # the bundled model; --model M for another two-stage model

Cuts the graph in two with ``onnx.utils.extract_model`` (the ``onnx`` package, which the runtime does not
depend on), opens each piece and the whole graph as the CLI does (one thread, optimisations ALL), and
times each stage both ways at batch 1 and 4, interleaved, median of ``--repeats`` calls; the outputs are
compared too. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np


def timed(run, repeats: int) -> float:
    run()  # the first call pays for allocations
    xs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        xs.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a two-stage ONNX model (default: the bundled one)")
    p.add_argument("--repeats", type=int, default=40)
    args = p.parse_args()

    import onnxruntime as ort

    from bench.run import busy_processes
    from edge_runtime.core.model import OnnxModel, default_model_path
    from export.stages import split_stages

    path = (args.model or default_model_path()).resolve()
    whole = OnnxModel(path, threads=1)
    info, spec = whole.info, whole.info.refine
    if spec is None or spec.file is not None:
        why = "has no second stage" if spec is None else "is two files already"
        raise SystemExit(f"{path} {why}: give a two-stage model in one graph (edge-seg-export --refine)")
    first_out = [info.output_name] + ([info.presence_output] if info.presence_output else [])
    with tempfile.TemporaryDirectory() as tmp:
        one, two = split_stages(path, Path(tmp) / "m.onnx")  # the files the runtime would open
        opts = whole.session.get_session_options()  # the CLI's: one thread, level ALL
        s1 = ort.InferenceSession(str(one), opts, providers=["CPUExecutionProvider"])
        s2 = ort.InferenceSession(str(two), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = []
    for bs in (1, 4):
        x = rng.random((bs, *info.size, info.channels), dtype=np.float32)
        r = rng.random((bs, *spec.size, spec.channels), dtype=np.float32)
        no_x = np.zeros((0, *info.size, info.channels), np.float32)
        no_r = np.zeros((0, *spec.size, spec.channels), np.float32)
        calls = {
            "first whole": (whole.session, first_out, {info.input_name: x, spec.input_name: no_r}),
            "first split": (s1, first_out, {info.input_name: x}),
            "second whole": (whole.session, [spec.output_name], {info.input_name: no_x, spec.input_name: r}),
            "second split": (s2, [spec.output_name], {spec.input_name: r}),
        }
        got = {k: sess.run(outs, feed) for k, (sess, outs, feed) in calls.items()}
        same = all(
            np.array_equal(u, v)
            for stage in ("first", "second")
            for u, v in zip(got[f"{stage} whole"], got[f"{stage} split"], strict=True)
        )
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(3):  # interleaved rounds: a drift in the machine's speed falls on both ways alike
            for k, (sess, outs, feed) in calls.items():
                times[k].append(timed(partial(sess.run, outs, feed), args.repeats // 3 or 1))
        m = {k: statistics.median(v) for k, v in times.items()}
        rows.append((bs, m, same))
    print(f"model {info.describe()}; onnxruntime one thread, level ALL; median ms a call")
    print("other busy processes: " + ("; ".join(busy_processes(set())) or "none"))
    print()
    print("| batch | first stage, one graph (second fed empty) | first stage alone | second stage, one graph "
          "(first fed empty) | second stage alone | outputs equal |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for bs, m, same in rows:
        print(
            f"| {bs} | {m['first whole']:.2f} | {m['first split']:.2f} | {m['second whole']:.2f} | "
            f"{m['second split']:.2f} | {'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
