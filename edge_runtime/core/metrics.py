"""Overlap and distance metrics for binary masks, one scan at a time, plus their summary.

Used by ``edge-seg-eval`` and by training's validation report, so the two always agree.
Conventions (per scan, masks as bool arrays of the scan's own size):

* Dice and IoU are 1 when both masks are empty (a correct "no nodule"), 0 when only one is.
* Precision is undefined (NaN) when the prediction is empty; recall when the truth is empty.
* HD95 is the 95th percentile of the symmetric boundary-to-boundary distances in pixels; NaN when
  either mask is empty. NaNs are left out of means and medians and counted separately.
* A miss is a scan whose truth has a nodule and whose Dice is 0.
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
    return ScanMetrics(dice, iou, precision, recall, hd95(p, t) if with_hd95 else math.nan, nt, np_)


def summarise(per_scan: list[ScanMetrics]) -> dict[str, float | int]:
    """Mean and median of each metric over scans (NaNs left out), plus counts and the missed share."""
    out: dict[str, float | int] = {"scans": len(per_scan)}
    for name in ("dice", "iou", "precision", "recall", "hd95"):
        values = np.array([getattr(m, name) for m in per_scan], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[f"{name}_mean"] = float(finite.mean()) if finite.size else math.nan
        out[f"{name}_median"] = float(np.median(finite)) if finite.size else math.nan
        if name in ("precision", "hd95"):
            out[f"{name}_undefined"] = int(values.size - finite.size)
    with_nodule = [m for m in per_scan if m.truth_pixels > 0]
    out["missed"] = sum(m.missed for m in with_nodule)
    out["missed_share"] = out["missed"] / len(with_nodule) if with_nodule else 0.0
    return out


def as_dict(m: ScanMetrics) -> dict[str, float | int | bool]:
    return {**asdict(m), "missed": m.missed}
