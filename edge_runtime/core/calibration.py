"""Which pixel spacing applies to a nodule: millimetres for calipers and areas, or a reason there are none.

In order (docs/OUTPUTS.md, "Findings"):

1. DICOM ``SequenceOfUltrasoundRegions``: the calibrated regions (physical units cm in both directions,
   code 3) are the parts of the frame where a length means something -- an ultrasound screen often holds
   two images, or an image beside a Doppler trace, each with its own scale. A nodule gets the spacing of
   the region that holds it (its every pixel inside the region's bounds). A nodule outside every
   calibrated region, across two of them, or inside regions that disagree on the spacing gets no mm and
   a reason.
2. Else the scan's ``PixelSpacing`` or ``ImagerPixelSpacing`` (the source records which).
3. Else the spacing the user gave (``--pixel-spacing MM`` or ``MM_ROW,MM_COL``), for a folder of PNG or
   JPEG scans from one machine and depth.
4. Else none: lengths and areas in pixels only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Spacing = tuple[float, float]  #: (row, column) mm per pixel

#: ``pixel_spacing_source`` of the spacing the user gave on the command line
GIVEN = "given"
#: two regions "agree" on a spacing within this relative difference (their values are decimal strings)
_AGREE = 1e-6


@dataclass(frozen=True)
class Region:
    """A calibrated ultrasound region: its pixel bounds (inclusive, as DICOM gives them) and spacing."""

    x0: int
    y0: int
    x1: int
    y1: int
    spacing: Spacing

    def holds(self, box: tuple[int, int, int, int]) -> bool:
        """Whether the pixel box ``(x0, y0, x1, y1)`` (inclusive) lies wholly inside this region."""
        return self.x0 <= box[0] and self.y0 <= box[1] and box[2] <= self.x1 and box[3] <= self.y1

    def touches(self, box: tuple[int, int, int, int]) -> bool:
        return not (box[2] < self.x0 or self.x1 < box[0] or box[3] < self.y0 or self.y1 < box[1])


@dataclass(frozen=True)
class NoduleSpacing:
    """The spacing that applies to one nodule, where it comes from, or why there is none."""

    spacing: Spacing | None
    source: str | None  #: ``ultrasound_region``, ``pixel_spacing``, ``imager_pixel_spacing``, ``given`` or None
    reason: str | None = None  #: why there is no spacing, when the scan has some elsewhere (else None)


@dataclass(frozen=True)
class Calibration:
    """A scan's spacing facts: its calibrated regions, its one spacing, and the user's fallback."""

    regions: tuple[Region, ...] = ()
    spacing: Spacing | None = None  #: PixelSpacing / ImagerPixelSpacing of the file
    source: str | None = None  #: ``pixel_spacing`` or ``imager_pixel_spacing`` for :attr:`spacing`
    given: Spacing | None = None  #: ``--pixel-spacing``

    @property
    def scan_spacing(self) -> NoduleSpacing:
        """The spacing the scan as a whole states (the first calibrated region's, or the file's, or the given one)."""
        if self.regions:
            return NoduleSpacing(self.regions[0].spacing, "ultrasound_region")
        if self.spacing is not None:
            return NoduleSpacing(self.spacing, self.source)
        if self.given is not None:
            return NoduleSpacing(self.given, GIVEN)
        return NoduleSpacing(None, None)

    def for_box(self, box: tuple[int, int, int, int]) -> NoduleSpacing:
        """The spacing of a nodule whose pixels span the box ``(x0, y0, x1, y1)``, inclusive."""
        if not self.regions:
            return self.scan_spacing
        holding = [r for r in self.regions if r.holds(box)]
        where = f"x {box[0]}-{box[2]}, y {box[1]}-{box[3]}"
        if not holding:
            touched = [r for r in self.regions if r.touches(box)]
            if len(touched) > 1:
                return NoduleSpacing(None, None, f"the nodule ({where}) lies across ultrasound regions")
            if touched:
                return NoduleSpacing(None, None, f"the nodule ({where}) reaches outside its ultrasound region")
            return NoduleSpacing(None, None, f"the nodule ({where}) is outside every calibrated ultrasound region")
        first = holding[0].spacing
        if any(not _same(r.spacing, first) for r in holding[1:]):
            shown = " vs ".join(f"{r.spacing[0]:g} x {r.spacing[1]:g} mm" for r in holding)
            return NoduleSpacing(None, None, f"the ultrasound regions holding the nodule disagree ({shown})")
        return NoduleSpacing(first, "ultrasound_region")

    def for_points(self, points) -> NoduleSpacing:
        """:meth:`for_box` of a component's pixels (an (N, 2) array of ``(x, y)``)."""
        xs, ys = points[:, 0], points[:, 1]
        return self.for_box((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))


def _same(a: Spacing, b: Spacing) -> bool:
    return all(math.isclose(x, y, rel_tol=_AGREE) for x, y in zip(a, b, strict=True))


def parse_spacing(text: str) -> Spacing:
    """``--pixel-spacing``: ``MM`` (square pixels) or ``MM_ROW,MM_COL``; ValueError with a reason otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2):
        raise ValueError(f"pixel spacing {text!r}: give MM or MM_ROW,MM_COL")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"pixel spacing {text!r}: not a number of millimetres") from None
    if not all(math.isfinite(v) and 0.0 < v < 100.0 for v in values):
        raise ValueError(f"pixel spacing {text!r}: each value must be between 0 and 100 mm")
    return (values[0], values[-1])
