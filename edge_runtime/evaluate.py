"""``edge-seg-eval``: score a model on a labelled folder, at each scan's own resolution.

The masks scored are exactly those ``edge-seg`` writes (same preprocessing, inference, resize,
threshold and opening); metrics come from :mod:`edge_runtime.metrics`, the code training uses for its
validation Dice. Needs only the runtime install (no TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_runtime._version import __version__
from edge_runtime.errors import ScanError, SetupError
from edge_runtime.layout import is_candidate_name
from edge_runtime.metrics import as_dict, scan_metrics, summarise
from edge_runtime.scanio import read_scan

log = logging.getLogger("edge_seg.eval")

SEED_THRESHOLDS = (0.5, 0.85, 0.9, 0.95)
METRICS = ("dice", "iou", "precision", "recall", "hd95")
EPILOG = """example:
  edge-seg-eval --images ../shared/data/ddti/test/image --masks ../shared/data/ddti/test/mask
"""


#: Thresholds tried when a default is chosen on validation data (by training, and by the export with --tta).
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def best_threshold(dice_by_threshold: Mapping[float, float]) -> float:
    """The threshold with the highest mean Dice; ties go to the one nearest 0.5."""
    return max(dice_by_threshold, key=lambda t: (dice_by_threshold[t], -abs(t - 0.5)))


#: The least image-level sensitivity a presence threshold chosen on validation data may give.
MIN_SENSITIVITY = 0.975
PRESENCE_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))  # 0.01 .. 0.99


def choose_presence_threshold(
    positive: np.ndarray, negative: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY
) -> tuple[float, dict[str, float]]:
    """The presence threshold for "nodule present" (``score >= threshold``), chosen on validation scores.

    The rule: the highest specificity on ``negative`` (nodule-free views) among the thresholds that keep
    at least ``min_sensitivity`` of ``positive`` (views with a nodule); ties go to the lowest such
    threshold, which misses fewest nodules. Returns the threshold and its sensitivity/specificity.
    """
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if positive.size == 0 or negative.size == 0:
        raise ValueError("choosing a presence threshold needs both positive and nodule-free views")
    best: tuple[float, float, float] | None = None
    for t in PRESENCE_GRID:
        sens = float(np.mean(positive >= t))
        spec = float(np.mean(negative < t))
        if sens >= min_sensitivity and (best is None or spec > best[2]):
            best = (t, sens, spec)
    if best is None:  # no threshold keeps the sensitivity: the lowest one keeps the most
        t = PRESENCE_GRID[0]
        best = (t, float(np.mean(positive >= t)), float(np.mean(negative < t)))
    return best[0], {"sensitivity": best[1], "specificity": best[2]}


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise SetupError(f"{folder} is not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_candidate_name(p.name, dicom=False):
            if p.stem in found:
                raise SetupError(f"{found[p.stem].name} and {p.name} in {folder} have the same stem: which is meant?")
            found[p.stem] = p
    return found


def paired(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, truth) pairs by file stem; raises SetupError naming unpaired files."""
    im, ms = _by_stem(images), _by_stem(masks)
    if not im:
        raise SetupError(f"no images in {images}")
    only_im, only_ms = sorted(set(im) - set(ms)), sorted(set(ms) - set(im))
    problems = []
    if only_im:
        names = ", ".join(im[s].name for s in only_im[:5])
        problems.append(f"{len(only_im)} image(s) in {images} have no mask in {masks}: {names}")
    if only_ms:
        names = ", ".join(ms[s].name for s in only_ms[:5])
        problems.append(f"{len(only_ms)} mask(s) in {masks} have no image in {images}: {names}")
    if problems:
        raise SetupError("; ".join(problems))
    return [(im[s], ms[s]) for s in sorted(im)]


def _truth(path: Path) -> np.ndarray:
    mask = read_scan(path).frames[0]
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 127


def evaluate(
    segmenter, images: Path, masks: Path | None, thresholds: list[float], with_hd95: bool = True
) -> tuple[dict[str, dict], list[dict]]:
    """Summary per threshold (keyed by its label) and per-scan rows, running ``segmenter`` on ``images``.

    ``masks`` None: every scan in ``images`` is nodule-free (its truth is an empty mask), so the figures
    are the false-positive ones.
    """
    from edge_runtime.layout import threshold_label

    per_t: dict[float, list] = {t: [] for t in thresholds}
    rows: list[dict] = []
    t0 = time.perf_counter()
    pairs: list[tuple[Path, Path | None]]
    if masks is None:
        pairs = [(p, None) for _, p in sorted(_by_stem(images).items())]
        if not pairs:
            raise SetupError(f"no images in {images}")
    else:
        pairs = list(paired(images, masks))
    for ip, mp in pairs:
        image = read_scan(ip).frames[0]
        truth = np.zeros(image.shape[:2], bool) if mp is None else _truth(mp)
        if truth.shape != image.shape[:2]:
            raise ScanError(mp, f"mask is {truth.shape[::-1]} but its scan is {image.shape[:2][::-1]} (w x h)")
        result = segmenter.segment(image, thresholds)
        for t in thresholds:
            m = scan_metrics(result.masks[t], truth, with_hd95)
            per_t[t].append(m)
            rows.append({"scan": ip.name, "threshold": t, "presence": result.presence, **as_dict(m)})
    seconds = time.perf_counter() - t0
    summary = {threshold_label(t): summarise(v) for t, v in per_t.items()}
    for s in summary.values():
        s["seconds"] = round(seconds, 2)
    return summary, rows


def evaluate_written(predicted: Path, masks: Path, with_hd95: bool = True) -> tuple[dict, list[dict]]:
    """Score masks already written by ``edge-seg`` (single-threshold layout) against the truth."""
    per_scan, rows = [], []
    truths = _by_stem(masks)
    if not truths:
        raise SetupError(f"no masks in {masks}")
    if not predicted.is_dir():
        raise SetupError(f"{predicted} is not a folder")
    for stem, mp in truths.items():
        pp = predicted / f"{stem}.png"
        if not pp.is_file():
            raise SetupError(f"no predicted mask {pp} for {mp.name}")
        pred, truth = _truth(pp), _truth(mp)
        if pred.shape != truth.shape:
            raise ScanError(pp, f"mask is {pred.shape[::-1]} but its truth {mp.name} is {truth.shape[::-1]} (w x h)")
        m = scan_metrics(pred, truth, with_hd95)
        per_scan.append(m)
        rows.append({"scan": mp.name, **as_dict(m)})
    return {"written": summarise(per_scan)}, rows


def format_table(summary: dict[str, dict]) -> str:
    """The console table: overlap on the scans with a nodule, then the image-level figures."""
    any_negatives = any(s.get("negatives") for s in summary.values())
    head = f"{'threshold':>9}  {'scans':>5}  " + ("with-nodule  " if any_negatives else "")
    head += "  ".join(f"{m + ' mean/med':>17}" for m in METRICS) + "  missed"
    if any_negatives:
        head += "  sensitivity  nodule-free  with a mask"
    lines = [head]
    for label, s in summary.items():
        cells = []
        for m in METRICS:
            mean, med = s[f"{m}_mean"], s[f"{m}_median"]
            fmt = "{:7.2f}" if m == "hd95" else "{:7.4f}"
            cells.append(f"{_fmt(fmt, mean)} / {_fmt(fmt, med)}".rjust(17))
        line = f"{label:>9}  {s['scans']:>5}  " + (f"{s['positives']:>11}  " if any_negatives else "")
        line += "  ".join(cells)
        line += f"  {s['missed_share']:6.1%}"
        if any_negatives:
            sens = "    n/a" if math.isnan(s["sensitivity"]) else f"{s['sensitivity']:7.1%}"
            line += f"  {sens:>11}  {s['negatives']:>11}  {s['fp_share']:11.1%}"
        lines.append(line)
    return "\n".join(lines)


def _fmt(fmt: str, v: float) -> str:
    return "    nan" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def build_parser() -> argparse.ArgumentParser:
    fmt = type("F", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {})
    p = argparse.ArgumentParser(
        prog="edge-seg-eval",
        description=__doc__,
        formatter_class=fmt,
        epilog=EPILOG,
    )
    p.add_argument("--images", type=Path, required=True, help="folder of scans")
    p.add_argument(
        "--masks",
        type=Path,
        help="folder of true masks, paired by file stem (>127 = nodule; an all-zero mask is a nodule-free scan)",
    )
    p.add_argument(
        "--nodule-free",
        action="store_true",
        help="every scan in --images is nodule-free (no --masks): score the false positives",
    )
    p.add_argument("--model", type=Path, help="ONNX model (default: the bundled model)")
    p.add_argument(
        "--threshold",
        type=float,
        nargs="+",
        metavar="T",
        help="thresholds to score (default: 0.5, 0.85, 0.9, 0.95 and the model's own)",
    )
    p.add_argument("--predicted", type=Path, help="score masks already written by edge-seg here instead of running")
    p.add_argument("--json", type=Path, help="write the summary and per-scan metrics to this JSON file")
    p.add_argument("--no-hd95", action="store_true", help="skip the Hausdorff distance (faster)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.masks is None) == (not args.nodule_free):
        parser.error("give --masks, or --nodule-free for a folder of nodule-free scans (not both)")
    if args.predicted and args.nodule_free:
        parser.error("--predicted needs --masks")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.predicted:
            summary, rows = evaluate_written(args.predicted, args.masks, not args.no_hd95)
            model_info = None
        else:
            from edge_runtime.segmenter import Segmenter

            seg = Segmenter(args.model)
            thresholds = sorted(set(args.threshold or (*SEED_THRESHOLDS, seg.threshold)))
            if any(not 0 < t < 1 for t in thresholds):
                raise SetupError("thresholds must be between 0 and 1")
            summary, rows = evaluate(seg, args.images, args.masks, thresholds, not args.no_hd95)
            model_info = {
                "path": str(seg.info.path),
                "name": seg.info.name,
                "version": seg.info.version,
                "sha256": seg.info.sha256,
                "default_threshold": seg.threshold,
                "presence_threshold": seg.presence_threshold,
            }
    except (SetupError, ScanError) as exc:
        log.error("error: %s", exc)
        return 2
    sys.stdout.write(format_table(summary) + "\n")
    if any(s.get("negatives") for s in summary.values()):
        log.info(
            "overlap figures are over the scans with a nodule (the 'with-nodule' column); 'with a mask' is the share "
            "of nodule-free scans (all-zero truth) that got any mask"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": shlex.join(["edge-seg-eval", *(sys.argv[1:] if argv is None else argv)]),
                    "edge_seg": __version__,
                    "images": str(args.images),
                    "masks": str(args.masks),
                    "model": model_info,
                    "summary": summary,
                    "per_scan": rows,
                },
                indent=2,
                default=float,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
