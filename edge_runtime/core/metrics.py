"""Overlap and distance metrics for binary masks, one scan at a time, plus their summary.

Used by ``edge-seg-eval`` and by training's validation report, so the two always agree.
Conventions (per scan, masks as bool arrays of the scan's own size):

* Dice and IoU are 1 when both masks are empty (a correct "no nodule"), 0 when only one is.
* Precision is undefined (NaN) when the prediction is empty; recall when the truth is empty.
* HD95 is the 95th percentile of the symmetric boundary-to-boundary distances in pixels; NaN when
  either mask is empty. NaNs are left out of means and medians and counted separately.
* A miss is a scan whose truth has a nodule and whose Dice is 0.

A scan whose truth is empty (a nodule-free view) is a *negative*. Over a folder, Dice, IoU, precision,
recall and HD95 are summarised over the *positive* scans only; negatives give the image-level figures:
specificity (negatives with an empty mask), the false-positive share (negatives with any mask) and the
area of those false masks. Sensitivity is the share of positives with any mask. ``view_dice_mean`` is
the mean Dice over every scan with the both-empty-is-1 convention (one number for mixed folders).
The area ratio (predicted over true area) shows masks drawn too large or too small, and
:func:`summarise_by_band` gives every figure per nodule size band (under 3%, 3-10%, over 10% of the scan).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass
class ScanMetrics:
    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    truth_pixels: int
    predicted_pixels: int
    pixels: int = 0  #: the scan's pixel count (for false-positive area shares)

    @property
    def missed(self) -> bool:
        return self.truth_pixels > 0 and self.dice == 0.0

    @property
    def area_ratio(self) -> float:
        """Predicted over true area (1: the right size, 2: twice too large); NaN without a true nodule."""
        return self.predicted_pixels / self.truth_pixels if self.truth_pixels else math.nan

    @property
    def band(self) -> str | None:
        """The true nodule's size band (:data:`SIZE_BANDS`), None for a nodule-free scan."""
        return size_band(self.truth_pixels / self.pixels) if self.truth_pixels and self.pixels else None


#: Nodule size bands by the true nodule's share of the scan's area: the average hides the small ones.
SIZE_BANDS: dict[str, tuple[float, float]] = {"small": (0.0, 0.03), "medium": (0.03, 0.10), "large": (0.10, 1.0)}
BAND_LABELS = {"small": "under 3%", "medium": "3-10%", "large": "over 10%"}


def size_band(share: float) -> str:
    """The band of a nodule covering ``share`` of its scan: small (< 3%), medium (3-10%), large (> 10%)."""
    return "small" if share < SIZE_BANDS["small"][1] else "medium" if share <= SIZE_BANDS["medium"][1] else "large"


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return (m > 0) & (eroded == 0)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile symmetric Hausdorff distance in pixels between two non-empty bool masks."""
    if not pred.any() or not truth.any():
        return math.nan
    bp, bt = _boundary(pred), _boundary(truth)
    # distanceTransform gives, for each non-zero pixel, the distance to the nearest zero pixel.
    dist_to_t = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist_to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    distances = np.concatenate([dist_to_t[bp], dist_to_p[bt]])
    return float(np.percentile(distances, 95))


def scan_metrics(pred: np.ndarray, truth: np.ndarray, with_hd95: bool = True) -> ScanMetrics:
    """Metrics for one scan; ``pred`` and ``truth`` are same-shape masks (bool, or 0/255)."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, truth {truth.shape}")
    p, t = pred > 0, truth > 0
    inter = int(np.count_nonzero(p & t))
    np_, nt = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    union = np_ + nt - inter
    dice = 1.0 if np_ + nt == 0 else 2.0 * inter / (np_ + nt)
    iou = 1.0 if union == 0 else inter / union
    precision = inter / np_ if np_ else math.nan
    recall = inter / nt if nt else math.nan
    hd = hd95(p, t) if with_hd95 else math.nan
    return ScanMetrics(dice, iou, precision, recall, hd, nt, np_, int(p.size))


def summarise(per_scan: list[ScanMetrics]) -> dict[str, float | int]:
    """Summary over scans: overlap on the positive scans, image-level figures on all of them.

    Means and medians leave NaNs out; figures with nothing to count (sensitivity without positives,
    specificity without negatives) are NaN.
    """
    positives = [m for m in per_scan if m.truth_pixels > 0]
    negatives = [m for m in per_scan if m.truth_pixels == 0]
    overlap = positives if positives or not negatives else []
    out: dict[str, float | int] = {"scans": len(per_scan), "positives": len(positives), "negatives": len(negatives)}
    for name in ("dice", "iou", "precision", "recall", "hd95"):
        values = np.array([getattr(m, name) for m in overlap], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[f"{name}_mean"] = float(finite.mean()) if finite.size else math.nan
        out[f"{name}_median"] = float(np.median(finite)) if finite.size else math.nan
        if name in ("precision", "hd95"):
            out[f"{name}_undefined"] = int(values.size - finite.size)
    ratios = np.array([m.area_ratio for m in positives], dtype=np.float64)
    out["area_ratio_mean"] = float(ratios.mean()) if ratios.size else math.nan
    out["area_ratio_median"] = float(np.median(ratios)) if ratios.size else math.nan
    out["missed"] = sum(m.missed for m in positives)
    out["missed_share"] = out["missed"] / len(positives) if positives else 0.0
    detected = sum(m.predicted_pixels > 0 for m in positives)
    out["sensitivity"] = detected / len(positives) if positives else math.nan
    flagged = [m for m in negatives if m.predicted_pixels > 0]
    out["fp_frames"] = len(flagged)
    out["fp_share"] = len(flagged) / len(negatives) if negatives else math.nan
    out["specificity"] = 1.0 - out["fp_share"] if negatives else math.nan
    out["fp_area_mean"] = float(np.mean([m.predicted_pixels for m in flagged])) if flagged else 0.0
    out["fp_area_share_mean"] = (
        float(np.mean([m.predicted_pixels / m.pixels for m in flagged if m.pixels])) if flagged else 0.0
    )
    out["view_dice_mean"] = float(np.mean([m.dice for m in per_scan])) if per_scan else math.nan
    return out


def summarise_by_band(per_scan: list[ScanMetrics]) -> dict[str, dict[str, float | int]]:
    """:func:`summarise` of the positive scans of each size band that has any (small, medium, large)."""
    return {band: summarise(members) for band in SIZE_BANDS if (members := [m for m in per_scan if m.band == band])}


def as_dict(m: ScanMetrics) -> dict[str, float | int | bool | str | None]:
    return {**asdict(m), "missed": m.missed, "area_ratio": m.area_ratio, "band": m.band}
