"""Parity: the exported ONNX model must agree with the Keras model it came from, on real scans.

Both see the same tensors from ``edge_runtime.preprocess``; the check compares probabilities
(max absolute difference) and the masks ``edge-seg`` would write (at scan size, after opening) at the
thresholds the seed compares. Any failure fails the export with the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.core.postprocess import masks_for_scan
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.files.scans import read_scan
from edge_runtime.job.discovery import is_candidate_name

log = logging.getLogger(__name__)

MAX_ABS_DIFF = 1e-4


@dataclass
class ParityReport:
    scans: int
    max_abs_diff: float
    mean_abs_diff: float
    differing_pixels: dict[float, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and not any(self.differing_pixels.values())

    def describe(self) -> str:
        px = ", ".join(f"{t:g}: {n}" for t, n in self.differing_pixels.items())
        return (
            f"{self.scans} scans, max |p_onnx - p_keras| = {self.max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}), "
            f"mean {self.mean_abs_diff:.2e}; differing mask pixels by threshold: {px}"
        )


def parity_images(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` scans from ``folder`` (or its ``image/`` subfolder), sorted by name."""
    if (folder / "image").is_dir():
        folder = folder / "image"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_candidate_name(p.name, dicom=False))[:limit]
    return [read_scan(p).frames[0] for p in files]


def check_parity(keras_model, onnx_path: Path, images: list[np.ndarray], thresholds) -> ParityReport:
    seg = Segmenter(onnx_path)
    batch = np.stack([seg.preprocess(im) for im in images])
    p_onnx = seg.predict(batch)
    p_keras = np.asarray(keras_model.predict(batch, batch_size=16, verbose=0))[..., 0]
    diff = np.abs(p_onnx - p_keras)
    differing = dict.fromkeys(thresholds, 0)
    morph = seg.info.morphology_size
    for po, pk, im in zip(p_onnx, p_keras, images, strict=True):
        _, mo = masks_for_scan(po, im.shape[:2], thresholds, morph)
        _, mk = masks_for_scan(pk, im.shape[:2], thresholds, morph)
        for t in thresholds:
            differing[t] += int(np.count_nonzero(mo[t] != mk[t]))
    return ParityReport(len(images), float(diff.max()), float(diff.mean()), differing)
