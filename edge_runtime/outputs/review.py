"""The review page's pictures of each scan (``--report``): a small thumbnail and the scan without outline.

Beside the overlays, for the one frame a card shows (:func:`shown_frame`):

* ``OUT/overlays/<relative folder>/<stem>.thumb.jpg`` -- the overlay at most :data:`THUMB_SIZE` px on
  its longer side (outlines drawn at that size, no legend: the card says what they are), so a page of
  a few hundred cards loads a few megabytes, not the full overlays;
* ``OUT/overlays/<relative folder>/<stem>.plain.jpg`` -- the scan at its own size without outline
  (8-bit, as on the overlay), shown beside the full overlay when a thumbnail is clicked; a browser
  cannot show DICOM or TIFF, so the page never links the scan itself.

The page itself is :mod:`edge_runtime.outputs.page`'s, written once a run (and every few seconds by a
daemon), from the findings on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import OVERLAY_DIR, plain_path, thumbnail_path
from edge_runtime.outputs.overlays import render_overlay, to_display

#: The thumbnail's longer side, in pixels (never larger than the scan).
THUMB_SIZE = 240
THUMB_QUALITY = 80
PLAIN_QUALITY = 92


def shown_frame(areas: Sequence[int]) -> int:
    """The 0-based frame a card shows: the one with the most nodule area at the lowest threshold (first on ties)."""
    return max(range(len(areas)), key=lambda i: (areas[i], -i)) if areas else 0


def encode_jpeg(image: np.ndarray, quality: int, name: str | Path = "<image>") -> bytes:
    """JPEG-encode an 8-bit RGB image."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"{name}: JPEG encoding failed")
    return buf.tobytes()


def thumb_size(height: int, width: int) -> tuple[int, int]:
    """The thumbnail's (width, height) for a frame of this size."""
    scale = min(1.0, THUMB_SIZE / max(height, width, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail(image: np.ndarray, masks: dict[float, np.ndarray], thresholds: Sequence[float]) -> np.ndarray:
    """The overlay of ``image`` at most :data:`THUMB_SIZE` px on its longer side: scaled first, then drawn."""
    size = thumb_size(*image.shape[:2])
    small = cv2.resize(to_display(image), size, interpolation=cv2.INTER_AREA)
    small_masks = {
        t: np.where(cv2.resize(m, size, interpolation=cv2.INTER_AREA) > 127, 255, 0).astype(np.uint8)
        for t, m in masks.items()
    }
    return render_overlay(small, small_masks, thresholds, legend=False)


class ReviewWriter:
    """The review page's per-scan pictures, as an :class:`~edge_runtime.outputs.base.OutputWriter`."""

    kind = "review"
    stage = "review"
    signature = "review/1"
    folder = OVERLAY_DIR

    def __init__(self, setup: OutputSetup) -> None:
        self.setup = setup

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        return [thumbnail_path(self.setup.out_dir, rel), plain_path(self.setup.out_dir, rel)]

    def write(self, result: ScanResult) -> dict[str, Any]:
        lowest = self.setup.thresholds[0]
        areas = [int(np.count_nonzero(seg.masks[lowest])) for seg in result.segmentations]
        k = shown_frame(areas)
        frame, seg = result.scan.frames[k], result.segmentations[k]
        thumb_file, plain_file = result.paths
        picture = thumbnail(frame, seg.masks, self.setup.thresholds)
        write_atomic(thumb_file, encode_jpeg(picture, THUMB_QUALITY, thumb_file), fsync=self.setup.fsync)
        plain = encode_jpeg(to_display(frame), PLAIN_QUALITY, plain_file)
        write_atomic(plain_file, plain, fsync=self.setup.fsync)
        return {}
