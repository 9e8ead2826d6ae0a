"""From the model's probability map to the mask a person sees (contract 3 of docs/DESIGN.md).

The seed thresholds the 128 x 128 probability map and opens it (erode, then dilate) with a 3 x 3
ellipse. Here the probability map is first resized (bilinear) to the scan's own size, thresholded there
-- so mask edges follow the scan, not 128-pixel blocks -- and opened with an ellipse scaled by the same
factors as the resize. The opening therefore removes the same structures (thinner than ~3 model pixels)
at any scan size: it "means the same" for a 245-pixel-wide frame and a 1,024-pixel one.
"""

from __future__ import annotations

import cv2
import numpy as np


def opening_kernel(scan_hw: tuple[int, int], model_hw: tuple[int, int], size: int = 3) -> np.ndarray | None:
    """The elliptical structuring element equivalent to ``size`` x ``size`` in model pixels.

    Each axis is scaled by scan/model size and rounded to the nearest odd number; returns None when
    ``size`` is 0 or the scaled kernel is a single pixel (an opening would change nothing).
    """
    if size <= 0:
        return None
    kh = _odd(size * scan_hw[0] / model_hw[0])
    kw = _odd(size * scan_hw[1] / model_hw[1])
    if kh <= 1 and kw <= 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kw, kh))


def _odd(x: float) -> int:
    return max(1, 2 * round((x - 1) / 2) + 1)


def probability_at_scan_size(probability: np.ndarray, scan_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a model-size probability map (float32 H x W) to the scan's (height, width)."""
    h, w = scan_hw
    if probability.shape == (h, w):
        return probability
    return cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR)


def mask_from_probability(probability: np.ndarray, threshold: float, kernel: np.ndarray | None) -> np.ndarray:
    """Threshold (``P > threshold``) and open: uint8 mask, 0 = background, 255 = nodule."""
    if probability.size <= 4:  # OpenCV takes an array of up to 4 values for a scalar: a 1 x 1 scan failed
        mask = np.where(probability > threshold, np.uint8(255), np.uint8(0))
    else:  # 255 where P > threshold, else 0 (OpenCV's type stubs omit its scalar overload)
        mask = cv2.compare(probability, float(threshold), cv2.CMP_GT)  # type: ignore[call-overload]
    if kernel is not None:
        open_in_place(mask, kernel)
    return mask


def open_in_place(mask: np.ndarray, kernel: np.ndarray) -> None:
    """Morphological opening of a 0/255 mask, computed only where it can change anything.

    Gives exactly ``cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)`` (tested): the erosion keeps
    every background pixel at 0, and the dilation spreads foreground by at most the kernel's half
    size, so only the nonzero pixels' bounding box plus that margin is worked on -- a fraction of the
    scan, since a nodule is small -- and a mask with no foreground is left as it is.
    """
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    y0, y1 = max(0, y - ry), min(mask.shape[0], y + h + ry)
    x0, x1 = max(0, x - rx), min(mask.shape[1], x + w + rx)
    mask[y0:y1, x0:x1] = cv2.morphologyEx(mask[y0:y1, x0:x1], cv2.MORPH_OPEN, kernel)


def masks_for_scan(
    probability: np.ndarray,
    scan_hw: tuple[int, int],
    thresholds: list[float] | tuple[float, ...],
    morphology_size: int = 3,
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Probability map at scan size and one cleaned mask per threshold, from a model-size map."""
    prob = probability_at_scan_size(probability, scan_hw)
    kernel = opening_kernel(scan_hw, probability.shape[:2], morphology_size)
    return prob, {t: mask_from_probability(prob, t, kernel) for t in thresholds}


def nodule_present(presence: float | None, presence_threshold: float | None) -> bool:
    """The model's image-level decision: ``presence >= presence_threshold``; True without a score or threshold."""
    return presence is None or presence_threshold is None or presence >= presence_threshold


def gate(masks: dict[float, np.ndarray], presence: float | None, presence_threshold: float | None) -> dict:
    """Empty masks when the model's image-level score says "no nodule" (``presence < presence_threshold``).

    A model without a presence output (``presence`` None) or without a threshold leaves the masks as they are.
    """
    if nodule_present(presence, presence_threshold):
        return masks
    return {t: np.zeros_like(m) for t, m in masks.items()}
