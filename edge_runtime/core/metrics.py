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


def as_dict(m: ScanMetrics) -> dict[str, float | int | bool]:
    return {**asdict(m), "missed": m.missed}
