"""Scan-resolution validation, with the runtime's own post-processing and metrics.

Probability maps from the Keras model are turned into masks by ``edge_runtime.postprocess`` (resize
to the scan, threshold, elliptical opening, and the presence gate when the model has one) and scored by
``edge_runtime.metrics`` against the full-size truth -- exactly what ``edge-seg`` writes and
``edge-seg-eval`` measures, nodule-free views included.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edge_runtime.core.caliper_error import caliper_row, summarise_calipers
from edge_runtime.core.metrics import scan_metrics, summarise, summarise_by_band
from edge_runtime.core.postprocess import gate, masks_for_scan
from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold

from .data import Split
from .models import PRESENCE, PROBABILITY


def predict(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Model-size probability maps (N, h, w) and presence scores (N,) or None, for a preprocessed batch."""
    out = model.predict(x, batch_size=32, verbose=0)
    if isinstance(out, dict):
        return np.asarray(out[PROBABILITY])[..., 0], np.asarray(out[PRESENCE])[:, 0]
    return np.asarray(out)[..., 0], None


def score(
    probs: np.ndarray,
    split: Split,
    thresholds: Iterable[float],
    morphology_size: int = 3,
    with_hd95: bool = False,
    presence: np.ndarray | None = None,
    presence_threshold: float | None = None,
) -> dict[float, dict]:
    """Summary metrics per threshold for model-size probability maps ``probs`` (N, h, w)."""
    thresholds = list(thresholds)
    per_t: dict[float, list] = {t: [] for t in thresholds}
    calipers: dict[float, list] = {t: [] for t in thresholds}
    scores = presence if presence is not None else [None] * len(probs)
    for prob, p, truth, hw in zip(probs, scores, split.masks, split.sizes, strict=True):
        _, masks = masks_for_scan(prob, hw, thresholds, morphology_size)
        masks = gate(masks, None if p is None else float(p), presence_threshold)
        for t, m in masks.items():
            per_t[t].append(scan_metrics(m, truth, with_hd95))
            calipers[t].append(caliper_row(m, truth))  # the largest nodule's measurement error, as edge-seg-eval's
    return {
        t: {**summarise(v), **summarise_calipers(calipers[t]), "by_band": summarise_by_band(v)}
        for t, v in per_t.items()
    }


def choose_threshold(probs: np.ndarray, split: Split, morphology_size: int = 3) -> tuple[float, dict]:
    """The threshold with the best mean scan-resolution Dice on ``split``, and the whole sweep."""
    sweep = score(probs, split, THRESHOLD_GRID, morphology_size)
    best = best_threshold({t: s["dice_mean"] for t, s in sweep.items()})
    return best, {format(t, "g"): s["dice_mean"] for t, s in sweep.items()}
