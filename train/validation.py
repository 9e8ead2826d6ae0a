"""Scan-resolution validation, with the runtime's own post-processing and metrics.

Probability maps from the Keras model are turned into masks by ``edge_runtime.postprocess`` (resize
to the scan, threshold, elliptical opening) and scored by ``edge_runtime.metrics`` against the
full-size truth -- exactly what ``edge-seg`` writes and ``edge-seg-eval`` measures.
"""

from __future__ import annotations

import numpy as np

from edge_runtime.core.metrics import scan_metrics, summarise
from edge_runtime.core.postprocess import masks_for_scan
from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold
from train.data import Split


def score(
    probs: np.ndarray, split: Split, thresholds, morphology_size: int = 3, with_hd95: bool = False
) -> dict[float, dict]:
    """Summary metrics per threshold for model-size probability maps ``probs`` (N, h, w)."""
    per_t: dict[float, list] = {t: [] for t in thresholds}
    for prob, truth, hw in zip(probs, split.masks, split.sizes, strict=True):
        _, masks = masks_for_scan(prob, hw, list(thresholds), morphology_size)
        for t, m in masks.items():
            per_t[t].append(scan_metrics(m, truth, with_hd95))
    return {t: summarise(v) for t, v in per_t.items()}


def choose_threshold(probs: np.ndarray, split: Split, morphology_size: int = 3) -> tuple[float, dict]:
    """The threshold with the best mean scan-resolution Dice on ``split``, and the whole sweep."""
    sweep = score(probs, split, THRESHOLD_GRID, morphology_size)
    best = best_threshold({t: s["dice_mean"] for t, s in sweep.items()})
    return best, {format(t, "g"): s["dice_mean"] for t, s in sweep.items()}
