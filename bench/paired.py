"""Two models on the same scans, scan by scan: the Dice difference by nodule size, with a bootstrap interval.

    python -m bench.paired edge_runtime/models/ddti-fcn.test-eval.json runs/X/test-eval.json

Reads two ``edge-seg-eval --json`` files of the same scans and masks, each at its model's default threshold
(``--threshold-a`` / ``--threshold-b`` for others), and prints, for every scan and for each size band of
:mod:`edge_runtime.core.metrics` (the true nodule's share of the scan), the mean of B's Dice minus A's, its 95%
interval from ``--resamples`` bootstrap resamples of the scans (seeded: the same figures every run), and on how
many scans B is better. The release gate of the model card reads this table; nothing is chosen from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_runtime.core.metrics import BAND_LABELS, SIZE_BANDS, size_band


def per_scan_dice(path: Path, threshold: float | None) -> tuple[dict[str, tuple[float, float]], float, str]:
    """scan -> (Dice, the true nodule's share of the scan) at ``threshold`` (None: the model's default)."""
    report = json.loads(path.read_text())
    t = float(report["model"]["default_threshold"]) if threshold is None else threshold
    rows = {
        r["scan"]: (float(r["dice"]), r["truth_pixels"] / r["pixels"])
        for r in report["per_scan"]
        if abs(float(r["threshold"]) - t) < 1e-9
    }
    if not rows:
        sys.exit(f"{path}: no scan scored at threshold {t:g}")
    return rows, t, f"{report['model']['name']} {report['model']['version']}"


def interval(diff: np.ndarray, resamples: int, seed: int = 20261204) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean of ``diff`` over bootstrap resamples."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="edge-seg-eval --json of the model compared against")
    p.add_argument("b", type=Path, help="edge-seg-eval --json of the candidate")
    p.add_argument("--threshold-a", type=float)
    p.add_argument("--threshold-b", type=float)
    p.add_argument("--resamples", type=int, default=5000)
    args = p.parse_args(argv)
    a, ta, name_a = per_scan_dice(args.a, args.threshold_a)
    b, tb, name_b = per_scan_dice(args.b, args.threshold_b)
    if set(a) != set(b):
        sys.exit(f"the two files score other scans ({len(set(a) ^ set(b))} differ): compare evaluations of one folder")
    print(f"B ({name_b} at {tb:g}) minus A ({name_a} at {ta:g}), Dice, scan by scan; {args.resamples} resamples")
    print("| band | scans | A | B | mean difference | 95% interval | B better on |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    scans = sorted(a)
    for band in ("all", *SIZE_BANDS):
        chosen = [s for s in scans if band == "all" or size_band(a[s][1]) == band]
        if not chosen:
            continue
        da, db = np.array([a[s][0] for s in chosen]), np.array([b[s][0] for s in chosen])
        lo, hi = interval(db - da, args.resamples)
        label = BAND_LABELS.get(band, band)
        cells = [label, str(len(chosen)), f"{da.mean():.3f}", f"{db.mean():.3f}", f"{(db - da).mean():+.3f}"]
        cells += [f"{lo:+.3f} to {hi:+.3f}", str(int((db > da).sum()))]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
