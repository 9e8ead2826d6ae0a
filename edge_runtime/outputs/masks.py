"""The masks: one 8-bit PNG per frame and threshold, at the scan's own size, 0 = background, 255 = nodule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan, encode_png
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import output_path


class MaskWriter:
    """The masks, as an :class:`~edge_runtime.outputs.base.OutputWriter`; every job makes them, first."""

    kind = "masks"
    stage = "write"
    signature = ""  # part of every job: the thresholds and the model sign them
    folder = ""

    def __init__(self, setup: OutputSetup) -> None:
        self.setup = setup

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        """Frame by frame, threshold by threshold."""
        out, thresholds = self.setup.out_dir, self.setup.thresholds
        multi = len(scan.frames) > 1
        return [
            output_path(out, rel, t, thresholds, i + 1 if multi else None)
            for i in range(len(scan.frames))
            for t in thresholds
        ]

    def write(self, result: ScanResult) -> dict[str, Any]:
        masks = [seg.masks[t] for seg in result.segmentations for t in self.setup.thresholds]
        for path, mask in zip(result.paths, masks, strict=True):
            write_atomic(path, encode_png(mask, path), fsync=self.setup.fsync)
        return {}
