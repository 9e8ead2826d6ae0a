"""Overlays (``--overlay``): the scan with the nodule outline drawn on it, for a person to look at.

One PNG per scan (per frame of a multi-frame DICOM) at ``OUT/overlays/<relative folder>/<stem>.png``,
the scan's own size, always 8-bit colour: a grayscale scan is drawn in colour, a 16-bit scan is scaled
to 8 bits (min-max, for display only). Each threshold's mask outline has its own colour, ~2 px wide at
typical scan sizes (wider on large scans), and a small legend in the top-right corner names the
threshold of each colour. The lowest threshold is drawn first, so the outlines of higher thresholds
(inside it) stay visible. On the nodules of the lowest threshold the calipers are drawn as a
sonographer's: the long axis and the short axis as thin lines with cross marks at their ends, the long
axis labelled with its length in mm (in px when the spacing is unknown; :mod:`edge_runtime.core.calipers`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.core.calibration import Calibration
from edge_runtime.core.calipers import Calipers, components, measure
from edge_runtime.core.preprocess import minmax
from edge_runtime.core.thresholds import threshold_label
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import Scan, encode_png
from edge_runtime.outputs.base import OutputSetup, ScanResult
from edge_runtime.outputs.layout import OVERLAY_DIR, overlay_path

log = logging.getLogger(__name__)

#: Outline colours (RGB), one per threshold in ascending order; saturated, so never a gray scan's own pixel.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 255, 0),  # green
    (255, 255, 0),  # yellow
    (255, 0, 255),  # magenta
    (0, 255, 255),  # cyan
    (255, 128, 0),  # orange
    (255, 0, 0),  # red
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: the calipers' colours (RGB): long axis white, short axis light blue, both light on a gray scan
LONG_AXIS_COLOUR = (255, 255, 255)
SHORT_AXIS_COLOUR = (120, 200, 255)


def colour_for(index: int) -> tuple[int, int, int]:
    """The outline colour (RGB) of the ``index``-th threshold in ascending order."""
    return PALETTE[index % len(PALETTE)]


def line_width(height: int, width: int) -> int:
    """Outline width in pixels: 2 up to ~1,000 px scans, then growing with the scan."""
    return max(2, round(max(height, width) / 400))


def to_display(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB copy of a scan for drawing on: gray -> RGB, 16-bit -> 8-bit (min-max), RGBA -> RGB."""
    if image.dtype != np.uint8:
        image = np.clip(minmax(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    return image.copy()


NO_NODULE = "no nodule found"
NO_NODULE_COLOUR = (255, 255, 255)


def render_overlay(
    image: np.ndarray,
    masks: Mapping[float, np.ndarray],
    thresholds: Sequence[float] | None = None,
    legend: bool = True,
    presence: float | None = None,
    calibration: Calibration | None = None,
) -> np.ndarray:
    """The scan (8-bit RGB) with each mask's outline in its threshold's colour, and a legend.

    ``masks`` maps threshold -> uint8 mask (0 / 255) at the scan's size; ``thresholds`` fixes the
    colour order (default: ascending). When no mask has a nodule the legend says "no nodule found"
    (with the model's presence score when it has one), so an empty result is never a silent one.
    ``calibration`` given: the calipers of the lowest threshold's nodules are drawn, in its mm.
    """
    canvas = to_display(image)
    h, w = canvas.shape[:2]
    order = sorted(thresholds if thresholds is not None else masks)
    width = line_width(h, w)
    for i, t in enumerate(order):
        contours, _ = cv2.findContours(masks[t], cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour_for(i), width, cv2.LINE_8)
    if calibration is not None and order:
        found = [measure(p, calibration.for_points(p).spacing) for p in components(masks[order[0]])]
        draw_calipers(canvas, found)
    if legend:
        entries = [(f"P > {threshold_label(t)}", colour_for(i)) for i, t in enumerate(order)]
        if not any(bool(masks[t].any()) for t in order):
            text = NO_NODULE if presence is None else f"{NO_NODULE} (presence {presence:.2f})"
            draw_legend(canvas, [(text, NO_NODULE_COLOUR)], max_share=0.95)
        else:
            draw_legend(canvas, entries)
    return canvas


def draw_calipers(canvas: np.ndarray, found: Sequence[Calipers]) -> None:
    """Both calipers of each nodule (thin lines, a cross at each end) and the long axis's length beside it."""
    h, w = canvas.shape[:2]
    thin = max(1, line_width(h, w) // 2)
    mark = max(3, round(max(h, w) / 150))
    scale = min(1.0, max(0.4, min(h, w) / 900))
    for c in found:
        for ends, colour in ((c.short_axis_endpoints, SHORT_AXIS_COLOUR), (c.long_axis_endpoints, LONG_AXIS_COLOUR)):
            (x0, y0), (x1, y1) = ((round(x), round(y)) for x, y in ends)
            cv2.line(canvas, (x0, y0), (x1, y1), colour, thin, cv2.LINE_AA)
            for x, y in ((x0, y0), (x1, y1)):
                cv2.line(canvas, (x - mark, y - mark), (x + mark, y + mark), colour, thin, cv2.LINE_AA)
                cv2.line(canvas, (x - mark, y + mark), (x + mark, y - mark), colour, thin, cv2.LINE_AA)
        text = f"{c.long_axis_mm:.1f} mm" if c.long_axis_mm is not None else f"{c.long_axis_px:.0f} px"
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        x, y = (round(v) for v in max(c.long_axis_endpoints))  # beside the right-hand end
        x = min(max(0, x + mark + 2), w - tw - 2)
        y = min(max(th + 2, y - mark), h - base - 2)
        cv2.rectangle(canvas, (x - 2, y - th - 2), (x + tw + 2, y + base), (0, 0, 0), cv2.FILLED)
        cv2.putText(canvas, text, (x, y), _FONT, scale, LONG_AXIS_COLOUR, 1, cv2.LINE_AA)


def draw_legend(
    canvas: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]], max_share: float = 0.5
) -> None:
    """Draw ``(label, colour)`` lines in a dark box in the top-right corner.

    The box may take ``max_share`` of the scan's width and half its height; the text is made smaller
    (down to a legible minimum) to fit, and the legend is skipped only when even that does not fit.
    """
    h, w = canvas.shape[:2]
    scale = min(1.0, max(0.35, min(h, w) / 700))
    while True:
        thick = 1 if scale < 0.7 else 2
        (tw, th), base = max((cv2.getTextSize(t, _FONT, scale, thick) for t, _ in entries), key=lambda s: s[0][0])
        pad, swatch, row = max(3, th // 2), 2 * th, th + base + max(3, th // 2)
        box_w, box_h = pad * 3 + swatch + tw, pad * 2 + row * len(entries)
        if box_w <= w * max_share and box_h <= h // 2:
            break
        if scale <= 0.3:
            return
        scale = max(0.3, scale * 0.85)
    x0, y0 = w - box_w - pad, pad
    cv2.rectangle(canvas, (x0, y0), (x0 + box_w, y0 + box_h), (0, 0, 0), cv2.FILLED)
    for i, (text, colour) in enumerate(entries):
        y = y0 + pad + i * row + th
        cv2.line(canvas, (x0 + pad, y - th // 2), (x0 + pad + swatch, y - th // 2), colour, max(2, thick + 1))
        cv2.putText(canvas, text, (x0 + 2 * pad + swatch, y), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


class OverlayWriter:
    """The ``--overlay`` output, as an :class:`~edge_runtime.outputs.base.OutputWriter`."""

    kind = "overlays"
    stage = "overlay"
    signature = "overlay/3"  # 2: "no nodule found" written on overlays without an outline; 3: calipers
    folder = OVERLAY_DIR

    def __init__(self, setup: OutputSetup) -> None:
        self.setup = setup

    def paths(self, rel: str, scan: Scan) -> list[Path]:
        multi = len(scan.frames) > 1
        return [overlay_path(self.setup.out_dir, rel, i + 1 if multi else None) for i in range(len(scan.frames))]

    def write(self, result: ScanResult) -> dict[str, Any]:
        thresholds = self.setup.thresholds
        calibration = self.setup.calibration(result.scan)
        for path, frame, seg in zip(result.paths, result.scan.frames, result.segmentations, strict=True):
            picture = render_overlay(frame, seg.masks, thresholds, presence=seg.presence, calibration=calibration)
            write_atomic(path, encode_png(picture, path), fsync=self.setup.fsync)
        return {}
