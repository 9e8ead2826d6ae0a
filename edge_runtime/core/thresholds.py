"""Probability thresholds: the one parser and check, their folder labels, and choosing one on validation data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Thresholds tried when a default is chosen on validation data (by training, and by the export with --tta).
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


def parse_threshold(text: str | float) -> float:
    """A probability threshold from the command line or a file: a number strictly between 0 and 1.

    Raises :class:`ValueError` with a one-line reason; ``argparse`` shows it as the option's error.
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold {text} must be between 0 and 1 (exclusive)")
    return value


def threshold_label(threshold: float) -> str:
    """The folder name for a threshold: ``0.9`` -> ``"0.9"``, ``0.85`` -> ``"0.85"``."""
    return format(threshold, "g")


def check_labels(thresholds: Sequence[float]) -> None:
    """Refuse thresholds that would write into one folder (``0.5000001`` and ``0.5000002`` are both ``0.5``).

    Raises :class:`ValueError` naming them and the folder.
    """
    seen: dict[str, float] = {}
    for t in sorted(set(thresholds)):
        label = threshold_label(t)
        if label in seen:
            raise ValueError(
                f"thresholds {seen[label]!r} and {t!r} would both write OUT/{label}/; give thresholds that differ "
                "in their first 6 significant digits"
            )
        seen[label] = t


def best_threshold(dice_by_threshold: Mapping[float, float]) -> float:
    """The threshold with the highest mean Dice; ties go to the one nearest 0.5."""
    return max(dice_by_threshold, key=lambda t: (dice_by_threshold[t], -abs(t - 0.5)))


#: The least image-level sensitivity a presence threshold chosen on validation data may give.
MIN_SENSITIVITY = 0.975
PRESENCE_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))  # 0.01 .. 0.99


def choose_presence_threshold(
    positive: np.ndarray, negative: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY
) -> tuple[float, dict[str, float]]:
    """The presence threshold for "nodule present" (``score >= threshold``), chosen on validation scores.

    The rule: the highest specificity on ``negative`` (nodule-free views) among the thresholds that keep
    at least ``min_sensitivity`` of ``positive`` (views with a nodule); ties go to the lowest such
    threshold, which misses fewest nodules. Returns the threshold and its sensitivity/specificity.
    """
    import numpy as np  # here, so that the command line's threshold parsing stays light

    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if positive.size == 0 or negative.size == 0:
        raise ValueError("choosing a presence threshold needs both positive and nodule-free views")
    best: tuple[float, float, float] | None = None
    for t in PRESENCE_GRID:
        sens = float(np.mean(positive >= t))
        spec = float(np.mean(negative < t))
        if sens >= min_sensitivity and (best is None or spec > best[2]):
            best = (t, sens, spec)
    if best is None:  # no threshold keeps the sensitivity: the lowest one keeps the most
        t = PRESENCE_GRID[0]
        best = (t, float(np.mean(positive >= t)), float(np.mean(negative < t)))
    return best[0], {"sensitivity": best[1], "specificity": best[2]}
