"""``edge-seg-eval``: score a model on a labelled folder, at each scan's own resolution.

The masks scored are exactly those ``edge-seg`` writes (same preprocessing, inference, resize,
threshold and opening); metrics come from :mod:`edge_runtime.core.metrics`, the code training uses for its
validation Dice. Needs only the runtime install (no TensorFlow). The scoring itself is
:mod:`edge_runtime.scoring`'s; this module is the command line around it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from pathlib import Path

from edge_runtime._version import __version__
from edge_runtime.console import HelpFormatter
from edge_runtime.core.caliper_error import format_calipers_table
from edge_runtime.core.metrics import BAND_LABELS
from edge_runtime.core.thresholds import parse_threshold
from edge_runtime.errors import ScanError, SetupError
from edge_runtime.scoring import evaluate, evaluate_written

log = logging.getLogger(__name__)

SEED_THRESHOLDS = (0.5, 0.85, 0.9, 0.95)
METRICS = ("dice", "iou", "precision", "recall", "hd95")
EPILOG = """example:
  edge-seg-eval --images ../shared/data/ddti/test/image --masks ../shared/data/ddti/test/mask
"""


def format_table(summary: dict[str, dict], with_hd95: bool = True) -> str:
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
            if m == "hd95" and not with_hd95:
                cells.append("skipped".rjust(17))  # --no-hd95: not computed, rather than "nan / nan"
                continue
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


def format_bands(summary: dict[str, dict]) -> str:
    """Per threshold, the figures of each nodule size band: the average hides the small nodules."""
    head = f"{'threshold':>9}  {'nodule size':>11}  {'scans':>5}  {'dice mean/med':>15}  {'area ratio mean/med':>19}"
    lines = [head + "  missed"]
    for label, s in summary.items():
        for band, b in s.get("by_band", {}).items():
            dice = f"{_fmt('{:6.4f}', b['dice_mean'])} / {_fmt('{:6.4f}', b['dice_median'])}"
            ratio = f"{_fmt('{:5.2f}', b['area_ratio_mean'])} / {_fmt('{:5.2f}', b['area_ratio_median'])}"
            lines.append(
                f"{label:>9}  {BAND_LABELS[band]:>11}  {b['positives']:>5}  {dice:>15}  {ratio:>19}  {b['missed']:>6}"
            )
    return "\n".join(lines)


def _fmt(fmt: str, v: float) -> str:
    return "    nan" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-seg-eval",
        description=__doc__,
        formatter_class=HelpFormatter,
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
        nargs="+",
        metavar="T",
        help="thresholds to score (default: 0.5, 0.85, 0.9, 0.95 and the model's own; with --predicted, "
        "every threshold folder there)",
    )
    p.add_argument(
        "--predicted",
        type=Path,
        metavar="OUT",
        help="score the masks edge-seg wrote into OUT instead of running a model; a multi-threshold OUT "
        "(OUT/0.85/, OUT/0.9/, ...) gives a row per threshold folder",
    )
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
        try:
            asked = [parse_threshold(t) for t in args.threshold or ()]
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        if args.predicted:
            summary, rows = evaluate_written(args.predicted, args.masks, not args.no_hd95, asked)
            model_info = None
        else:
            from edge_runtime.core.segmenter import Segmenter

            seg = Segmenter(args.model)
            thresholds = sorted(set(asked or (*SEED_THRESHOLDS, seg.threshold)))
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
    sys.stdout.write(format_table(summary, not args.no_hd95) + "\n")
    if any(s.get("by_band") for s in summary.values()):
        sys.stdout.write("\nby nodule size (the true nodule's share of the scan; area ratio: predicted / true)\n")
        sys.stdout.write(format_bands(summary) + "\n")
    # on the log (stderr), so that stdout stays the one table scripts read
    log.info("%s", format_calipers_table(summary))
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
