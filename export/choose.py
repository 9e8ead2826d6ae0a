"""Choosing an exported graph's thresholds again on the validation folder (for ``--tta flip``).

The record's thresholds were chosen for the plain model; the graph with test-time augmentation computes
something else, so both are chosen again the way training chose them, with the graph as exported:
the mask threshold by the best mean scan-resolution Dice on the validation frames, the presence threshold
by the rule of :func:`edge_runtime.core.thresholds.choose_presence_threshold` on the validation frames,
their positive crops and their nodule-free views (cut by training's own :func:`fixed_views`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _labelled(labelled: Path) -> None:
    from edge_runtime.errors import SetupError

    if not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
        raise SetupError(f"choosing thresholds needs {labelled}/image and {labelled}/mask")


def choose_threshold_on(onnx_path: Path, labelled: Path) -> float:
    """The threshold with the best mean scan-resolution Dice of ``onnx_path`` on ``labelled`` (image/ + mask/)."""
    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.core.thresholds import THRESHOLD_GRID, best_threshold, threshold_label
    from edge_runtime.scoring import evaluate

    _labelled(labelled)
    summary, _ = evaluate(Segmenter(onnx_path), labelled / "image", labelled / "mask", list(THRESHOLD_GRID), False)
    best = best_threshold({t: summary[threshold_label(t)]["dice_mean"] for t in THRESHOLD_GRID})
    log.info(
        "threshold %g chosen on %s: mean Dice %.4f (at 0.5: %.4f)",
        best,
        labelled,
        summary[threshold_label(best)]["dice_mean"],
        summary["0.5"]["dice_mean"],
    )
    return best


def choose_presence_on(onnx_path: Path, labelled: Path) -> tuple[float, dict[str, float]]:
    """The presence threshold of ``onnx_path`` chosen on ``labelled``'s frames and fixed views."""
    from edge_seg_train.data import load_split, views_split

    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.core.thresholds import choose_presence_threshold

    _labelled(labelled)
    seg = Segmenter(onnx_path)
    info = seg.info
    frames = load_split(labelled, (info.size[0], info.size[1]), info.channels, info.resize)
    free = views_split(frames, ("neg",), info.channels, info.resize)
    crops = views_split(frames, ("pos",), info.channels, info.resize)

    def presence(x: np.ndarray) -> np.ndarray:
        _, scores = seg.run(x)
        if scores is None:
            raise ValueError(f"{onnx_path} has no presence output")
        return scores

    threshold, at = choose_presence_threshold(np.concatenate([presence(frames.x), presence(crops.x)]), presence(free.x))
    log.info(
        "presence threshold %g chosen on %s (%d frames, %d positive crops, %d nodule-free views): "
        "sensitivity %.3f, specificity %.3f",
        threshold,
        labelled,
        len(frames),
        len(crops),
        len(free),
        at["sensitivity"],
        at["specificity"],
    )
    return threshold, at
