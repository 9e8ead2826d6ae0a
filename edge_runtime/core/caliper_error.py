"""Measurement error against the truth: the calipers of a predicted mask against those of the true mask.

Per scan (:func:`caliper_row`), the **largest** nodule of each mask -- the one a report leads with -- is
measured (:mod:`edge_runtime.core.calipers`, in pixels at the scan's own size): long axis, short axis and
the taller-than-wide candidate flag, and the relative error of each axis, ``|predicted - true| / true``.

Over any set of such rows (:func:`summarise_calipers`: a whole folder, or a subset such as one nodule
size band), on the scans whose truth has a nodule:

* ``long_axis_error_median`` / ``short_axis_error_median`` -- the median relative error;
* ``long_axis_within_10`` / ``_within_20`` (and short) -- the share of those scans measured within 10 %
  and 20 % of the truth (20 % is the margin at which ACR TI-RADS calls a nodule grown);
* ``taller_than_wide_agreement`` -- the share whose candidate flag is the same as the truth's.

A scan whose prediction is empty (a missed nodule) has no measurement: it counts as a relative error of
1 (the whole length missed), outside both margins, and as a disagreement on the flag. A true nodule
of one pixel (long axis 0) has no relative error and is left out of that axis.
Used by ``edge-seg-eval`` and by training's validation, so the two always agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_runtime.core.calipers import largest

#: the margins of the "within" shares
MARGINS = (0.10, 0.20)


def caliper_row(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """One scan's columns: both masks' largest-nodule calipers in px and the relative error of each axis.

    Empty when the truth has no nodule (nothing to measure against).
    """
    true = largest(truth > 0)
    if true is None:
        return {}
    found = largest(pred > 0)
    row: dict[str, Any] = {"taller_than_wide_true": true.taller_than_wide}
    row["taller_than_wide"] = None if found is None else found.taller_than_wide
    for axis in ("long_axis", "short_axis"):
        t = float(getattr(true, f"{axis}_px"))
        p = None if found is None else float(getattr(found, f"{axis}_px"))
        row[f"{axis}_true_px"] = round(t, 2)
        row[f"{axis}_px"] = None if p is None else round(p, 2)
        if t <= 0:
            row[f"{axis}_error"] = None
        else:
            row[f"{axis}_error"] = 1.0 if p is None else round(abs(p - t) / t, 4)
    return row


def summarise_calipers(rows: Iterable[dict[str, Any]]) -> dict[str, float | int]:
    """The measurement-error figures (module docstring) over the rows given; NaN where none count."""
    measured = [r for r in rows if "long_axis_true_px" in r]
    out: dict[str, float | int] = {"calipers_scans": len(measured)}
    for axis in ("long_axis", "short_axis"):
        errors = np.array([r[f"{axis}_error"] for r in measured if r.get(f"{axis}_error") is not None], float)
        out[f"{axis}_error_median"] = float(np.median(errors)) if errors.size else math.nan
        for margin in MARGINS:
            key = f"{axis}_within_{round(margin * 100)}"
            out[key] = float(np.mean(errors <= margin + 1e-12)) if errors.size else math.nan
    # a missed nodule (no flag) never agrees, whatever the truth
    agree = [
        r["taller_than_wide"] is not None and r["taller_than_wide"] == r["taller_than_wide_true"] for r in measured
    ]
    out["taller_than_wide_agreement"] = float(np.mean(agree)) if agree else math.nan
    out["taller_than_wide_true"] = sum(bool(r["taller_than_wide_true"]) for r in measured)
    return out


def format_calipers_table(summary: dict[str, dict]) -> str:
    """The console table of :func:`summarise_calipers` figures, one line per summary (threshold)."""
    head = (
        f"{'threshold':>9}  {'scans':>5}  {'long: median err':>16}  {'<=10%':>6}  {'<=20%':>6}  "
        f"{'short: median err':>17}  {'<=10%':>6}  {'<=20%':>6}  {'taller-than-wide agree':>22}"
    )
    lines = ["measurement error of the largest nodule (calipers in px, against the true mask's):", head]
    for label, s in summary.items():
        if "calipers_scans" not in s:
            continue
        lines.append(
            f"{label:>9}  {s['calipers_scans']:>5}  {_pct(s['long_axis_error_median']):>16}  "
            f"{_pct(s['long_axis_within_10']):>6}  {_pct(s['long_axis_within_20']):>6}  "
            f"{_pct(s['short_axis_error_median']):>17}  {_pct(s['short_axis_within_10']):>6}  "
            f"{_pct(s['short_axis_within_20']):>6}  {_pct(s['taller_than_wide_agreement']):>22}"
        )
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1%}"
