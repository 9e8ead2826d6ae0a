"""Findings (``--report``): what was found in each scan, as JSON.

Per scan: ``OUT/reports/<relative folder>/<stem>.json`` -- the scan, the model, the thresholds, the
timings, and per frame and threshold the nodules (connected components of the final mask) with
their area, bounding box, centroid and probabilities. docs/OUTPUTS.md documents every field; the
run's own record (``run-summary.csv``, ``run-provenance.json``) is :mod:`edge_runtime.job.run_record`'s.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime._version import __version__
from edge_runtime.core.calibration import Calibration
from edge_runtime.core.calipers import Calipers, measure
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import REPORT_DIR, overlay_path, relative, report_path
from edge_runtime.outputs.layout import output_path as mask_path
from edge_runtime.timestamps import utc

log = logging.getLogger(__name__)

SCHEMA = 2  #: 2: per-nodule calipers (long and short axis, height, width) and the spacing used
#: a list of numbers as json.dumps(indent=2) writes it; "[" then a line break never occurs inside a JSON string
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[\d.eE+-]+|null),?(?:\s*(?:-?[\d.eE+-]+|null),?)*)\n\s*\]")


def to_json(obj: Any) -> str:
    """Indented JSON with short lists of numbers on one line (``"bbox": [10, 20, 30, 40]``)."""
    text = json.dumps(obj, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip(",") for x in m.group(1).split()) + "]", text) + "\n"


def find_nodules(
    mask: np.ndarray, probability: np.ndarray, spacing_mm: Calibration | tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """The connected components (8-connected) of a 0/255 mask, largest first, with their measures.

    ``probability`` is the model's map at the mask's size; ``spacing_mm`` the scan's
    :class:`~edge_runtime.core.calibration.Calibration` (or one (row, column) spacing), which gives each
    nodule its spacing -- its ``area_mm2`` and calipers in mm -- or the reason it has none.
    """
    calibration = spacing_mm if isinstance(spacing_mm, Calibration) else Calibration(spacing=spacing_mm)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    nodules: list[dict[str, Any]] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        mine = labels[y : y + h, x : x + w] == i
        inside = probability[y : y + h, x : x + w][mine]
        ys, xs = np.nonzero(mine)
        points = np.column_stack([xs + x, ys + y])
        where = calibration.for_points(points)
        spacing = where.spacing
        nodules.append(
            {
                "area_px": area,
                "area_mm2": round(area * spacing[0] * spacing[1], 3) if spacing else None,
                "bbox": [x, y, w, h],
                "centroid": [round(float(centroids[i][0]), 2), round(float(centroids[i][1]), 2)],
                "mean_probability": round(float(inside.mean()), 4),
                "max_probability": round(float(inside.max()), 4),
                **caliper_fields(measure(points, spacing)),
                "spacing_mm": [round(spacing[0], 6), round(spacing[1], 6)] if spacing else None,
                "no_mm_reason": where.reason,
            }
        )
    nodules.sort(key=lambda d: (-d["area_px"], d["bbox"][1], d["bbox"][0]))
    return [{"id": k, **d} for k, d in enumerate(nodules, 1)]


def caliper_fields(c: Calipers) -> dict[str, Any]:
    """A nodule's calipers as the findings report writes them (docs/OUTPUTS.md, "Findings")."""

    def mm(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    def ends(pair: tuple[tuple[float, float], tuple[float, float]]) -> list[list[float]]:
        return [[round(p[0], 2), round(p[1], 2)] for p in pair]

    return {
        "long_axis_px": round(c.long_axis_px, 2),
        "short_axis_px": round(c.short_axis_px, 2),
        "long_axis_mm": mm(c.long_axis_mm),
        "short_axis_mm": mm(c.short_axis_mm),
        "long_axis_endpoints": ends(c.long_axis_endpoints),
        "short_axis_endpoints": ends(c.short_axis_endpoints),
        "height_px": c.height_px,
        "width_px": c.width_px,
        "height_mm": mm(c.height_mm),
        "width_mm": mm(c.width_mm),
        "taller_than_wide_candidate": c.taller_than_wide,
    }


def scan_report(setup: OutputSetup, result: ScanResult) -> dict[str, Any]:
    """The findings JSON of one scan (docs/OUTPUTS.md, "Findings")."""
    out, thresholds, info = setup.out_dir, setup.thresholds, setup.model
    rel, scan = result.rel, result.scan
    multi = len(scan.frames) > 1
    overlays = "overlays" in setup.kinds
    frames = []
    calibration = setup.calibration(scan)
    for i, seg in enumerate(result.segmentations):
        frame = i + 1 if multi else None
        results = []
        for t in thresholds:
            nodules = find_nodules(seg.masks[t], seg.probability, calibration)
            results.append(
                {
                    "threshold": t,
                    "mask": relative(out, mask_path(out, rel, t, thresholds, frame)),
                    "nodule_count": len(nodules),
                    "nodules": nodules,
                }
            )
        frames.append(
            {
                "frame": i + 1,
                "overlay": relative(out, overlay_path(out, rel, frame)) if overlays else None,
                "max_probability": round(float(seg.probability.max()), 4),
                "presence": None if seg.presence is None else round(float(seg.presence), 4),
                "nodule_present": seg.nodule_present,
                "results": results,
            }
        )
    h, w = scan.frames[0].shape[:2]
    stated = calibration.scan_spacing
    spacing = stated.spacing
    return {
        "schema": SCHEMA,
        "generator": f"edge-seg {__version__}",
        "created": utc(),
        "scan": {
            "path": rel,
            "sha256": scan.sha256,
            "size_bytes": scan.size,
            "format": scan.format,
            "width": w,
            "height": h,
            "frames": len(scan.frames),
            "pixel_spacing_mm": [round(spacing[0], 6), round(spacing[1], 6)] if spacing else None,
            "pixel_spacing_source": stated.source,
            "ultrasound_regions": [
                {"bounds": [r.x0, r.y0, r.x1, r.y1], "spacing_mm": [round(r.spacing[0], 6), round(r.spacing[1], 6)]}
                for r in calibration.regions
            ],
        },
        "model": {
            "name": info.name,
            "version": info.version,
            "file": info.path.name,
            "sha256": info.sha256,
            "presence_threshold": info.presence_threshold,
        },
        "thresholds": list(thresholds),
        "timings_ms": {k: round(v, 2) for k, v in result.timings.items()},
        "frames": frames,
    }


def summary_facts(report: dict[str, Any]) -> dict[str, Any]:
    """One scan's line in the run summary, from its report: totals at the lowest threshold, over all frames."""
    threshold = min(report["thresholds"])
    nodules = [n for f in report["frames"] for r in f["results"] if r["threshold"] == threshold for n in r["nodules"]]
    largest = max(nodules, key=lambda n: n["area_px"], default=None)
    return {
        "frames": report["scan"]["frames"],
        "threshold": threshold,
        "nodules": len(nodules),
        "largest_area_px": largest["area_px"] if largest else 0,
        "largest_area_mm2": largest["area_mm2"] if largest else None,
        "largest_long_axis_px": largest.get("long_axis_px") if largest else None,
        "largest_short_axis_px": largest.get("short_axis_px") if largest else None,
        "largest_long_axis_mm": largest.get("long_axis_mm") if largest else None,
        "largest_short_axis_mm": largest.get("short_axis_mm") if largest else None,
        "largest_taller_than_wide": largest.get("taller_than_wide_candidate") if largest else None,
        "max_probability": max(f["max_probability"] for f in report["frames"]),
        "presence": max((f["presence"] for f in report["frames"] if f.get("presence") is not None), default=None),
        "nodule_present": any(f.get("nodule_present", True) for f in report["frames"]),
    }


class ReportWriter:
    """The ``--report`` output, as an :class:`~edge_runtime.outputs.base.OutputWriter`."""

    kind = "reports"
    stage = "report"
    signature = f"report/{SCHEMA}"
    folder = REPORT_DIR

    def __init__(self, setup: OutputSetup) -> None:
        self.setup = setup

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        return [report_path(self.setup.out_dir, rel)]

    def write(self, result: ScanResult) -> dict[str, Any]:
        report = scan_report(self.setup, result)
        write_atomic(result.paths[0], to_json(report), fsync=self.setup.fsync)
        return summary_facts(report)
