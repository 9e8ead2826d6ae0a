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
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime._version import __version__
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import REPORT_DIR, overlay_path, relative, report_path
from edge_runtime.outputs.layout import output_path as mask_path

log = logging.getLogger(__name__)

SCHEMA = 1
#: a list of numbers as json.dumps(indent=2) writes it; "[" then a line break never occurs inside a JSON string
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[\d.eE+-]+|null),?(?:\s*(?:-?[\d.eE+-]+|null),?)*)\n\s*\]")


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def to_json(obj: Any) -> str:
    """Indented JSON with short lists of numbers on one line (``"bbox": [10, 20, 30, 40]``)."""
    text = json.dumps(obj, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip(",") for x in m.group(1).split()) + "]", text) + "\n"


def find_nodules(
    mask: np.ndarray, probability: np.ndarray, spacing_mm: tuple[float, float] | None = None
) -> list[dict[str, Any]]:
    """The connected components (8-connected) of a 0/255 mask, largest first, with their measures.

    ``probability`` is the model's map at the mask's size; ``spacing_mm`` the (row, column) pixel
    spacing, which gives ``area_mm2`` (None when unknown).
    """
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    nodules: list[dict[str, Any]] = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        inside = probability[y : y + h, x : x + w][labels[y : y + h, x : x + w] == i]
        nodules.append(
            {
                "area_px": area,
                "area_mm2": round(area * spacing_mm[0] * spacing_mm[1], 3) if spacing_mm else None,
                "bbox": [x, y, w, h],
                "centroid": [round(float(centroids[i][0]), 2), round(float(centroids[i][1]), 2)],
                "mean_probability": round(float(inside.mean()), 4),
                "max_probability": round(float(inside.max()), 4),
            }
        )
    nodules.sort(key=lambda d: (-d["area_px"], d["bbox"][1], d["bbox"][0]))
    return [{"id": k, **d} for k, d in enumerate(nodules, 1)]


def scan_report(setup: OutputSetup, result: ScanResult) -> dict[str, Any]:
    """The findings JSON of one scan (docs/OUTPUTS.md, "Findings")."""
    out, thresholds, info = setup.out_dir, setup.thresholds, setup.model
    rel, scan = result.rel, result.scan
    multi = len(scan.frames) > 1
    overlays = "overlays" in setup.kinds
    frames = []
    for i, seg in enumerate(result.segmentations):
        frame = i + 1 if multi else None
        results = []
        for t in thresholds:
            nodules = find_nodules(seg.masks[t], seg.probability, scan.pixel_spacing_mm)
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
    spacing = scan.pixel_spacing_mm
    return {
        "schema": SCHEMA,
        "generator": f"edge-seg {__version__}",
        "created": _utc(),
        "scan": {
            "path": rel,
            "sha256": scan.sha256,
            "size_bytes": scan.size,
            "format": scan.format,
            "width": w,
            "height": h,
            "frames": len(scan.frames),
            "pixel_spacing_mm": [round(spacing[0], 6), round(spacing[1], 6)] if spacing else None,
            "pixel_spacing_source": scan.extra.get("pixel_spacing_source") if spacing else None,
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
