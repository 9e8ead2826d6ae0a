"""fp32 against int8 side by side: Dice on a labelled split, ms a scan on one thread, session start-up, file size.

    python -m bench.precision runs/int8/ddti-fcn-int8.onnx              # against the bundled fp32 model
    python -m bench.precision INT8.onnx --fp32 FP32.onnx --split val --rounds 9 --priority

Dice is ``edge-seg-eval``'s (``edge_runtime.evaluate.evaluate``: masks at scan size through the
runtime's post-processing) at each model's default threshold. Speed is a one-thread session
(``OnnxModel(path, threads=1)``, as the CLI runs it) on the split's preprocessed scans at batch 1, the
models measured in alternating rounds, so a change in the machine's speed falls on both alike (a two-stage
model's second pass, on the crop its first stage gives, is timed with its scan); wall
and this thread's CPU time are both given (CPU does not count other processes' load, but a busy
host's shared caches still slow it). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python bench/precision.py`: run as `python -m bench.precision`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.precision")

import numpy as np

from bench.common import ddti_root
from bench.report import met, table
from edge_runtime.core.model import OnnxModel

MAX_DICE_CHANGE = 0.005  #: issue 14's target: the bundled model's test Dice unchanged within this


def speed(
    models: Mapping[str, OnnxModel],
    inputs: Mapping[str, np.ndarray],
    rounds: int,
    crops: Mapping[str, list[np.ndarray | None]] | None = None,
) -> dict[str, dict[str, float]]:
    """Median wall and thread-CPU ms a scan per model at batch 1, over alternating rounds.

    ``inputs`` holds each model's own preprocessed scans (two models may differ in input size);
    ``crops`` a two-stage model's second-stage input per scan (None where the first stage marked nothing),
    whose pass is timed with the scan's (:func:`second_stage_inputs`).
    """
    crops = crops or {}
    walls: dict[str, list[float]] = {k: [] for k in models}
    cpus: dict[str, list[float]] = {k: [] for k in models}
    for name, m in models.items():
        for t in inputs[name][:5]:
            m.predict(t[None])
    for _ in range(rounds):
        for name, m in models.items():
            tensors = inputs[name]
            t0, c0 = time.perf_counter(), time.thread_time()
            second = crops.get(name) or [None] * len(tensors)
            for t, c in zip(tensors, second, strict=True):
                m.predict(t[None])
                if c is not None:
                    m.run_refine(c[None])
            walls[name].append((time.perf_counter() - t0) * 1000.0 / len(tensors))
            cpus[name].append((time.thread_time() - c0) * 1000.0 / len(tensors))
    return {
        k: {
            "ms": statistics.median(walls[k]),
            "cpu_ms": statistics.median(cpus[k]),
            "min_ms": min(walls[k]),
            "max_ms": max(walls[k]),
        }
        for k in models
    }


def second_stage_inputs(model: OnnxModel, frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """A two-stage model's second-stage input for each frame (None where its first stage marks nothing)."""
    from edge_runtime.core.postprocess import nodule_present, opening_kernel, probability_at_scan_size
    from edge_runtime.core.segmenter import Segmenter

    seg = Segmenter(model)
    out: list[np.ndarray | None] = []
    for f in frames:
        probs, presence = seg.run(seg.preprocess(f)[None])
        if not nodule_present(None if presence is None else float(presence[0]), seg.presence_threshold):
            out.append(None)
            continue
        hw = f.shape[:2]
        kernel = opening_kernel(hw, seg.info.size, seg.info.morphology_size)
        cut = seg.refine_crop(probability_at_scan_size(probs[0], hw), f, kernel)
        out.append(None if cut is None else cut[1])
    return out


def startup_ms(path: Path, repeats: int = 7) -> float:
    """Median ms to open a one-thread session on ``path`` (onnxruntime already imported)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        OnnxModel(path, threads=1)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("int8", type=Path, help="the int8 model")
    p.add_argument("--fp32", type=Path, help="its fp32 parent (default: the bundled model)")
    p.add_argument("--split", default="test", help="DDTI split for Dice and timing (default: test)")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (median shown)")
    p.add_argument("--priority", action="store_true", help="as bench.run --priority")
    args = p.parse_args()

    from bench.run import take_priority

    print(f"CPU priority {take_priority(args.priority)}")

    import cv2

    from edge_runtime.core.model import default_model_path, file_sha256
    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.core.thresholds import threshold_label
    from edge_runtime.files.scans import read_scan
    from edge_runtime.scoring import evaluate

    cv2.setNumThreads(1)
    paths = {"fp32": (args.fp32 or default_model_path()).resolve(), "int8": args.int8.resolve()}
    split = ddti_root() / args.split
    models = {k: OnnxModel(v, threads=1) for k, v in paths.items()}
    rows, dice = [], {}
    for name, m in models.items():
        seg = Segmenter(m)
        summary, _ = evaluate(seg, split / "image", split / "mask", [seg.threshold], with_hd95=False)
        dice[name] = summary[threshold_label(seg.threshold)]["dice_mean"]
    images = sorted((split / "image").iterdir())
    frames = [read_scan(p).frames[0] for p in images]
    inputs = {k: np.stack([Segmenter(m).preprocess(f) for f in frames]) for k, m in models.items()}
    crops = {k: second_stage_inputs(m, frames) for k, m in models.items() if m.info.refine is not None}
    fast = speed(models, inputs, args.rounds, crops)
    for name, m in models.items():
        meta = m.info.metadata
        rows.append(
            [
                f"{name} ({paths[name].name})",
                meta.get("precision", "fp32"),
                f"{dice[name]:.4f}",
                f"{m.info.threshold:g}",
                f"{fast[name]['ms']:.2f} ({fast[name]['min_ms']:.2f}-{fast[name]['max_ms']:.2f})",
                f"{fast[name]['cpu_ms']:.2f}",
                f"{startup_ms(paths[name]):.0f}",
                f"{paths[name].stat().st_size / 1e6:.2f}",
            ]
        )
    heads = ["model", "precision", f"{args.split} Dice", "threshold", "ms/scan, 1 thread (range)", "CPU ms/scan"]
    print(f"{len(images)} {args.split} scans; timing: batch 1, one thread, {args.rounds} alternating rounds")
    print(table([*heads, "session open ms", "file MB"], rows))
    q = models["int8"].info.metadata.get("quantization", {})
    if q.get("fp32_model", {}).get("sha256") not in (None, file_sha256(paths["fp32"])):
        print(f"note: {paths['int8'].name} was not quantized from {paths['fp32'].name} (its fp32 sha256 differs)")
    change = dice["int8"] - dice["fp32"]
    speedup = fast["fp32"]["ms"] / fast["int8"]["ms"]
    cpu_speedup = fast["fp32"]["cpu_ms"] / fast["int8"]["cpu_ms"]
    print(f"\nint8 / fp32: {speedup:.2f}x faster a scan (wall), {cpu_speedup:.2f}x (CPU)")
    print(
        table(
            ["target", "measured", "goal", ""],
            [
                [
                    f"{args.split} Dice unchanged",
                    f"{change:+.4f}",
                    f"|change| <= {MAX_DICE_CHANGE}",
                    met(abs(change) <= MAX_DICE_CHANGE),
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
