"""What the review page says about one scan: a card, built from its findings report or its error record.

The flags (docs/OUTPUTS.md, "Review page") are decided here, at the lowest threshold of the run, over
all frames of the scan:

* ``failed``          -- the scan could not be used (its error record's reason is shown);
* ``low-confidence``  -- a nodule was found but the largest one's mean probability is under
  :data:`LOW_MEAN`, or the model's presence score is within :data:`PRESENCE_MARGIN` of its presence
  threshold in log-odds, either side (the image-level call was a close one: for a threshold of 0.1,
  a score from 0.04 to 0.23; of 0.5, from 0.27 to 0.73);
* ``no-nodule``       -- no nodule in any frame (the model found none, or its presence output said none);
* ``several``         -- more than one separate component in a frame;
* ``small``           -- a nodule whose long axis is under :data:`SMALL_MM` where its spacing is known,
  else under :data:`SMALL_SHARE` of its frame's area;
* ``large``           -- a nodule whose long axis is over :data:`LARGE_MM` where its spacing is known,
  else over :data:`LARGE_SHARE` of its frame's area;
* ``taller-than-wide`` -- a nodule taller (along rows) than wide (along columns), in mm where known: a
  *candidate* for the suspicious sign, since the image does not say whether the plane is transverse.

Flagged cards sort first, in the order of :data:`FLAGS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.core.thresholds import threshold_label
from edge_runtime.outputs.review import shown_frame

#: The flags, in the order their cards sort, with the label the page shows.
FLAGS: dict[str, str] = {
    "failed": "failed",
    "low-confidence": "low confidence",
    "no-nodule": "no nodule found",
    "several": "several components",
    "small": "very small",
    "large": "very large",
    "taller-than-wide": "taller-than-wide candidate",
}
LOW_MEAN = 0.7
PRESENCE_MARGIN = 1.0  #: in log-odds: a factor e in the odds
SMALL_SHARE = 0.005
LARGE_SHARE = 0.25
#: with a known spacing: a long axis under 5 mm (ACR TI-RADS follows nothing smaller) or over 40 mm
SMALL_MM = 5.0
LARGE_MM = 40.0
#: nodules listed per threshold on a card (the report has them all)
SHOWN_NODULES = 4


@dataclass
class Nodule:
    """One line of a card: a nodule at one threshold."""

    id: int
    area_px: int
    area_mm2: float | None
    mean_probability: float
    max_probability: float
    long_axis: float | None = None  #: in mm when the nodule's spacing is known, else in px
    short_axis: float | None = None
    axis_unit: str = "px"
    taller_than_wide: bool = False
    no_mm_reason: str | None = None  #: why a scan with ultrasound regions gives this nodule no mm


@dataclass
class ThresholdResult:
    threshold: str  #: its label, ``0.5``
    count: int
    nodules: list[Nodule]  #: the first :data:`SHOWN_NODULES`


@dataclass
class Card:
    """One scan on the review page."""

    rel: str  #: the scan, relative to IN
    time_ns: int  #: when its report or error record was written (the page's "newest first")
    flags: list[str] = field(default_factory=list)
    reason: str = ""  #: why it failed
    format: str = ""
    width: int = 0
    height: int = 0
    frames: int = 1
    frame: int = 1  #: the frame shown (1-based)
    spacing_mm: list[float] | None = None
    presence: float | None = None
    presence_threshold: float | None = None
    max_probability: float | None = None
    thresholds: list[str] = field(default_factory=list)
    results: list[ThresholdResult] = field(default_factory=list)
    model: str = ""  #: ``name version``
    overlay: str = ""  #: the shown frame's full overlay, relative to OUT
    created: str = ""
    #: the review page's pictures, relative to OUT, and the thumbnail's size (set by the page)
    thumb: str = ""
    plain: str = ""
    thumb_size: tuple[int, int] = (0, 0)

    @property
    def rank(self) -> int:
        """Where the card sorts: by its first flag, unflagged cards last."""
        order = list(FLAGS)
        return min((order.index(f) for f in self.flags), default=len(order))


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def failed_card(rel: str, reason: str, time_ns: int) -> Card:
    return Card(rel, time_ns, ["failed"], reason=reason)


def flags_of(report: dict[str, Any]) -> list[str]:
    """The flags of a scan from its findings (module docstring), in :data:`FLAGS` order."""
    lowest = min(report["thresholds"])
    width, height = report["scan"]["width"], report["scan"]["height"]
    frame_area = max(1, width * height)
    presence_threshold = report["model"].get("presence_threshold")
    per_frame = [[n for r in f["results"] if r["threshold"] == lowest for n in r["nodules"]] for f in report["frames"]]
    nodules = [n for frame in per_frame for n in frame]
    flags = set()
    if nodules and max(nodules, key=lambda n: n["area_px"])["mean_probability"] < LOW_MEAN:
        flags.add("low-confidence")
    if presence_threshold is not None:
        scores = [f["presence"] for f in report["frames"] if f.get("presence") is not None]
        if any(abs(_logit(s) - _logit(presence_threshold)) < PRESENCE_MARGIN for s in scores):
            flags.add("low-confidence")
    if not nodules:
        flags.add("no-nodule")
    if any(len(frame) > 1 for frame in per_frame):
        flags.add("several")
    if any(_small(n, frame_area) for n in nodules):
        flags.add("small")
    if any(_large(n, frame_area) for n in nodules):
        flags.add("large")
    if any(n.get("taller_than_wide_candidate") for n in nodules):
        flags.add("taller-than-wide")
    return [f for f in FLAGS if f in flags]


def _small(n: dict[str, Any], frame_area: int) -> bool:
    if n.get("long_axis_mm") is not None:
        return bool(n["long_axis_mm"] < SMALL_MM)
    return bool(n["area_px"] < SMALL_SHARE * frame_area)


def _large(n: dict[str, Any], frame_area: int) -> bool:
    if n.get("long_axis_mm") is not None:
        return bool(n["long_axis_mm"] > LARGE_MM)
    return bool(n["area_px"] > LARGE_SHARE * frame_area)


def _nodule(n: dict[str, Any]) -> Nodule:
    mm = n.get("long_axis_mm") is not None
    return Nodule(
        n["id"],
        n["area_px"],
        n["area_mm2"],
        n["mean_probability"],
        n["max_probability"],
        n.get("long_axis_mm" if mm else "long_axis_px"),
        n.get("short_axis_mm" if mm else "short_axis_px"),
        "mm" if mm else "px",
        bool(n.get("taller_than_wide_candidate")),
        n.get("no_mm_reason"),
    )


def report_card(report: dict[str, Any], time_ns: int) -> Card:
    """The card of a scan that was segmented, from its findings report (docs/OUTPUTS.md, "Findings")."""
    scan, model = report["scan"], report["model"]
    lowest = min(report["thresholds"])
    areas = [
        sum(n["area_px"] for r in f["results"] if r["threshold"] == lowest for n in r["nodules"])
        for f in report["frames"]
    ]
    k = shown_frame(areas)
    frame = report["frames"][k]
    results = [
        ThresholdResult(
            threshold_label(r["threshold"]),
            r["nodule_count"],
            [_nodule(n) for n in r["nodules"][:SHOWN_NODULES]],
        )
        for r in frame["results"]
    ]
    return Card(
        rel=scan["path"],
        time_ns=time_ns,
        flags=flags_of(report),
        format=scan["format"],
        width=scan["width"],
        height=scan["height"],
        frames=scan["frames"],
        frame=frame["frame"],
        spacing_mm=scan.get("pixel_spacing_mm"),
        presence=frame.get("presence"),
        presence_threshold=model.get("presence_threshold"),
        max_probability=frame["max_probability"],
        thresholds=[threshold_label(t) for t in report["thresholds"]],
        results=results,
        model=f"{model['name']} {model['version']}",
        overlay=frame.get("overlay") or "",
        created=report.get("created", ""),
    )
