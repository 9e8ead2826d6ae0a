"""Probability thresholds: the one parser and check, their folder labels, and choosing one on validation data."""

from __future__ import annotations

from collections.abc import Mapping

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


def best_threshold(dice_by_threshold: Mapping[float, float]) -> float:
    """The threshold with the highest mean Dice; ties go to the one nearest 0.5."""
    return max(dice_by_threshold, key=lambda t: (dice_by_threshold[t], -abs(t - 0.5)))
