"""A one-shot run's own record: ``OUT/run-summary.csv`` (one row per scan) and ``OUT/run-provenance.json``.

Written when the run ends (with ``--report``), atomically; docs/OUTPUTS.md documents every field.
With ``--num-parts N --part-id K`` each part writes its own pair (``run-summary.part-K-of-N.csv``, ...).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime._version import __version__
from edge_runtime.files.durable import write_atomic
from edge_runtime.job.assemble import Job
from edge_runtime.job.outcome import Outcome, Status
from edge_runtime.job.parts import Part
from edge_runtime.outputs.layout import report_path
from edge_runtime.outputs.reports import summary_facts, to_json
from edge_runtime.timestamps import utc

log = logging.getLogger(__name__)

SUMMARY_NAME = "run-summary.csv"
PROVENANCE_NAME = "run-provenance.json"
PROVENANCE_SCHEMA = 1
#: run-summary.csv's columns, in order (docs/OUTPUTS.md)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "path",
    "status",
    "frames",
    "threshold",
    "nodules",
    "largest_area_px",
    "largest_area_mm2",
    "largest_long_axis_px",
    "largest_short_axis_px",
    "largest_long_axis_mm",
    "largest_short_axis_mm",
    "largest_taller_than_wide",
)
SUMMARY_COLUMNS += ("max_probability", "presence", "nodule_present", "ms", "outputs", "reason")


class RunRecord:
    """Collects a one-shot run's outcomes and writes ``run-summary.csv`` and ``run-provenance.json``."""

    def __init__(self, job: Job, argv: list[str]) -> None:
        self.job = job
        self.argv = argv
        self.started = time.time()
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, outcome: Outcome) -> None:
        """Record what happened to one scan (an up-to-date scan's figures come from its report)."""
        facts = dict(outcome.facts)
        if outcome.status == Status.SKIPPED and not facts:
            facts = self._facts_from_report(outcome.rel)
        status = "up-to-date" if outcome.status == Status.SKIPPED else str(outcome.status)
        self.rows[outcome.rel] = {
            "path": outcome.rel,
            "status": status,
            **facts,
            "ms": round(outcome.ms) if outcome.status == Status.OK else "",
            "outputs": ";".join(outcome.outputs),
            "reason": outcome.reason if outcome.status == Status.FAILED else "",
        }

    def _facts_from_report(self, rel: str) -> dict[str, Any]:
        try:
            return summary_facts(json.loads(report_path(self.job.out_dir, rel).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("no findings for %s in the summary: %s", rel, exc)
            return {}

    def write(self, exit_code: int) -> list[Path]:
        """Write both run files atomically; returns their paths."""
        out = self.job.out_dir
        buf = io.StringIO()
        writer = csv.DictWriter(buf, SUMMARY_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        for rel in sorted(self.rows):
            writer.writerow({k: _cell(v) for k, v in self.rows[rel].items()})
        summary, provenance = record_paths(out, self.job.options.part)
        write_atomic(summary, buf.getvalue())
        write_atomic(provenance, to_json(self.provenance(exit_code)))
        return [summary, provenance]

    def provenance(self, exit_code: int) -> dict[str, Any]:
        info, spec = self.job.spec.model, self.job.spec
        statuses = [r["status"] for r in self.rows.values()]
        part = self.job.options.part
        return {
            "schema": PROVENANCE_SCHEMA,
            "argv": self.argv,
            "started": utc(self.started),
            "finished": utc(),
            "input": str(self.job.in_dir),
            "output": str(self.job.out_dir),
            "versions": versions(),
            "model": {
                "name": info.name,
                "version": info.version,
                "path": str(info.path),
                "sha256": info.sha256,
                "metadata": info.metadata,
            },
            "thresholds": list(spec.thresholds),
            "pixel_spacing": list(spec.pixel_spacing) if spec.pixel_spacing else None,
            "outputs": list(spec.kinds),
            "counts": {
                "scans": len(statuses),
                "ok": statuses.count("ok"),
                "up_to_date": statuses.count("up-to-date"),
                "failed": statuses.count("failed"),
            },
            "exit_code": exit_code,
            **({} if part is None else {"part": {"id": part.index, "of": part.count}}),
        }


def record_paths(out_dir: Path, part: Part | None = None) -> tuple[Path, Path]:
    """Where a run's summary and provenance go: one pair per part, so that parts never write each other's."""
    if part is None:
        return out_dir / SUMMARY_NAME, out_dir / PROVENANCE_NAME
    return (
        out_dir / SUMMARY_NAME.replace(".csv", f".{part.label}.csv"),
        out_dir / PROVENANCE_NAME.replace(".json", f".{part.label}.json"),
    )


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


#: What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell: a text that a spreadsheet would run as a formula gets a leading ``'`` (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
