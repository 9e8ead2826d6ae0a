"""The measurement error of the largest nodule, overall and by nodule size, from an ``edge-seg-eval --json`` file.

    edge-seg-eval --images ../shared/data/ddti/test/image --masks ../shared/data/ddti/test/mask \\
        --no-hd95 --json /tmp/test-eval.json
    python -m bench.calipers /tmp/test-eval.json

The size band of a scan is the share of its frame the true mask covers (the per-scan ``truth_pixels``
over ``pixels``): under 3 %, 3-10 %, over 10 %. The figures are
:func:`edge_runtime.core.caliper_error.summarise_calipers` on each band's rows, so they are the same
code ``edge-seg-eval`` prints for the whole folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from edge_runtime.core.caliper_error import summarise_calipers

BANDS = (("under 3%", 0.0, 0.03), ("3-10%", 0.03, 0.10), ("over 10%", 0.10, math.inf))
COLUMNS = (
    ("long_axis_error_median", "long median err"),
    ("long_axis_within_10", "long <=10%"),
    ("long_axis_within_20", "long <=20%"),
    ("short_axis_error_median", "short median err"),
    ("short_axis_within_10", "short <=10%"),
    ("short_axis_within_20", "short <=20%"),
    ("taller_than_wide_agreement", "ttw agree"),
)


def band_of(row: dict) -> str | None:
    share = row["truth_pixels"] / row["pixels"] if row.get("pixels") else 0.0
    return next((name for name, lo, hi in BANDS if share > 0 and lo <= share < hi), None)


def table(rows: list[dict]) -> list[str]:
    head = f"{'subset':>10}  {'scans':>5}  " + "  ".join(f"{label:>16}" for _, label in COLUMNS)
    lines = [head]
    groups = [("all", rows)] + [(name, [r for r in rows if band_of(r) == name]) for name, _, _ in BANDS]
    for name, subset in groups:
        s = summarise_calipers(subset)
        cells = "  ".join(f"{_pct(s[key]):>16}" for key, _ in COLUMNS)
        lines.append(f"{name:>10}  {s['calipers_scans']:>5}  {cells}")
    return lines


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calipers", description=__doc__)
    p.add_argument("eval_json", type=Path, help="the file edge-seg-eval --json wrote")
    p.add_argument("--threshold", help="only this threshold's rows (default: every threshold in the file)")
    args = p.parse_args(argv)
    report = json.loads(args.eval_json.read_text())
    rows = report["per_scan"]
    labels = [args.threshold] if args.threshold else list(report["summary"])
    default = (report.get("model") or {}).get("default_threshold")
    for label in labels:
        subset = [r for r in rows if format(r.get("threshold", 0), "g") == label or "threshold" not in r]
        mark = " (the model's own)" if default is not None and format(default, "g") == label else ""
        sys.stdout.write(f"threshold {label}{mark}:\n" + "\n".join(table(subset)) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
