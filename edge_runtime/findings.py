"""Findings (``--report``): what was found in each scan, as JSON, and a record of each one-shot run.

* per scan: ``OUT/reports/<relative folder>/<stem>.json`` -- the scan, the model, the thresholds, the
  timings, and per frame and threshold the nodules (connected components of the final mask) with
  their area, bounding box, centroid and probabilities;
* per one-shot run: ``OUT/run-summary.csv`` (one row per scan) and ``OUT/run-provenance.json`` (how
  the run was made), written when the run ends.

docs/OUTPUTS.md documents every field. All files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_runtime._version import __version__
from edge_runtime.layout import REPORT_DIR, overlay_path, relative, report_path
from edge_runtime.layout import output_path as mask_path
from edge_runtime.scanio import Scan, write_atomic

if TYPE_CHECKING:
    from edge_runtime.pipeline import Loaded, Outcome, Processor
    from edge_runtime.segmenter import Segmentation

log = logging.getLogger(__name__)

SCHEMA = 1
#: a list of numbers as json.dumps(indent=2) writes it; "[" then a line break never occurs inside a JSON string
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[\d.eE+-]+|null),?(?:\s*(?:-?[\d.eE+-]+|null),?)*)\n\s*\]")
SUMMARY_NAME = "run-summary.csv"
PROVENANCE_NAME = "run-provenance.json"
#: run-summary.csv's columns, in order (docs/OUTPUTS.md)
SUMMARY_COLUMNS = ("path", "status", "frames", "threshold", "nodules", "largest_area_px", "largest_area_mm2")
SUMMARY_COLUMNS += ("max_probability", "presence", "nodule_present", "ms", "outputs", "reason")


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
    nodules = []
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


def scan_report(processor: Processor, scan: Scan, rel: str, segs: list[Segmentation], item: Loaded) -> dict[str, Any]:
    """The findings JSON of one scan (docs/OUTPUTS.md, "Findings")."""
    out, thresholds, info = processor.out_dir, processor.options.thresholds, processor.segmenter.info
    multi = len(scan.frames) > 1
    overlays = any(e.name == "overlay" for e in processor.options.extras)
    frames = []
    for i, seg in enumerate(segs):
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
        "timings_ms": {k: round(v, 2) for k, v in item.timings.items()},
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
    """The ``--report`` output, as a pipeline extra (:class:`edge_runtime.pipeline.Extra`)."""

    name = "report"
    signature = f"report/{SCHEMA}"
    folder = REPORT_DIR

    def paths(self, processor: Processor, scan: Scan, rel: str) -> list[Path]:
        return [report_path(processor.out_dir, rel)]

    def write(
        self,
        processor: Processor,
        scan: Scan,
        rel: str,
        segs: list[Segmentation],
        item: Loaded,
        paths: list[Path],
    ) -> dict[str, Any]:
        report = scan_report(processor, scan, rel, segs, item)
        write_atomic(paths[0], to_json(report), fsync=processor.options.fsync)
        return summary_facts(report)


class RunRecord:
    """Collects a one-shot run's outcomes and writes ``run-summary.csv`` and ``run-provenance.json``."""

    def __init__(self, processor: Processor, argv: list[str]) -> None:
        self.p = processor
        self.argv = argv
        self.started = time.time()
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, outcome: Outcome) -> None:
        """Record what happened to one scan (an up-to-date scan's figures come from its report)."""
        facts = dict(outcome.facts)
        if outcome.status == "skipped" and not facts:
            facts = self._facts_from_report(outcome.rel)
        status = {"skipped": "up-to-date"}.get(outcome.status, outcome.status)
        self.rows[outcome.rel] = {
            "path": outcome.rel,
            "status": status,
            **facts,
            "ms": round(outcome.ms) if outcome.status == "ok" else "",
            "outputs": ";".join(outcome.outputs),
            "reason": outcome.reason if outcome.status == "failed" else "",
        }

    def _facts_from_report(self, rel: str) -> dict[str, Any]:
        try:
            return summary_facts(json.loads(report_path(self.p.out_dir, rel).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("no findings for %s in the summary: %s", rel, exc)
            return {}

    def write(self, exit_code: int) -> list[Path]:
        """Write both run files atomically; returns their paths."""
        out = self.p.out_dir
        buf = io.StringIO()
        writer = csv.DictWriter(buf, SUMMARY_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        for rel in sorted(self.rows):
            writer.writerow({k: ("" if v is None else v) for k, v in self.rows[rel].items()})
        summary, provenance = out / SUMMARY_NAME, out / PROVENANCE_NAME
        write_atomic(summary, buf.getvalue())
        write_atomic(provenance, to_json(self.provenance(exit_code)))
        return [summary, provenance]

    def provenance(self, exit_code: int) -> dict[str, Any]:
        info, options = self.p.segmenter.info, self.p.options
        statuses = [r["status"] for r in self.rows.values()]
        return {
            "schema": SCHEMA,
            "argv": self.argv,
            "started": _utc(self.started),
            "finished": _utc(),
            "input": str(self.p.in_dir),
            "output": str(self.p.out_dir),
            "versions": versions(),
            "model": {
                "name": info.name,
                "version": info.version,
                "path": str(info.path),
                "sha256": info.sha256,
                "metadata": info.metadata,
            },
            "thresholds": list(options.thresholds),
            "outputs": ["masks", *(e.name + "s" for e in options.extras)],
            "counts": {
                "scans": len(statuses),
                "ok": statuses.count("ok"),
                "up_to_date": statuses.count("up-to-date"),
                "failed": statuses.count("failed"),
            },
            "exit_code": exit_code,
        }


def versions() -> dict[str, str | None]:
    """Versions of what made the outputs: edge-seg, Python and the libraries that touch pixels."""
    import onnxruntime

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "edge-seg": __version__,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "pydicom": dist("pydicom"),
        "pylibjpeg-libjpeg": dist("pylibjpeg-libjpeg"),
    }
