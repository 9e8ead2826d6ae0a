"""Scoring against labelled scans: a model run on a folder, or masks already written, at each scan's own size.

The masks scored are exactly those ``edge-seg`` writes (same preprocessing, inference, resize, threshold
and opening); metrics come from :mod:`edge_runtime.core.metrics`, the code training uses for its
validation Dice, and the measurement error of the largest nodule from :mod:`edge_runtime.core.caliper_error`.
Used by ``edge-seg-eval`` (:mod:`edge_runtime.evaluate`) and by the export's threshold choice.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_runtime.core.caliper_error import caliper_row, summarise_calipers
from edge_runtime.core.metrics import ScanMetrics, as_dict, scan_metrics, summarise, summarise_by_band
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.core.thresholds import parse_threshold, threshold_label
from edge_runtime.errors import ScanError, SetupError
from edge_runtime.files.pairs import files_by_stem, natural_key, pair_by_stem
from edge_runtime.files.scans import read_scan


def _truth(path: Path) -> np.ndarray:
    mask = read_scan(path).frames[0]
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 127


def evaluate(
    segmenter: Segmenter, images: Path, masks: Path | None, thresholds: list[float], with_hd95: bool = True
) -> tuple[dict[str, dict], list[dict]]:
    """Summary per threshold (keyed by its label) and per-scan rows, running ``segmenter`` on ``images``.

    ``masks`` None: every scan in ``images`` is nodule-free (its truth is an empty mask), so the figures
    are the false-positive ones.
    """
    per_t: dict[float, list] = {t: [] for t in thresholds}
    rows: list[dict] = []
    t0 = time.perf_counter()
    pairs: list[tuple[Path, Path | None]]
    if masks is None:
        found = files_by_stem(images)
        pairs = [(found[s], None) for s in sorted(found, key=natural_key)]
        if not pairs:
            raise SetupError(f"no images in {images}")
    else:
        pairs = list(pair_by_stem(images, masks))
    for ip, mp in pairs:
        image = read_scan(ip).frames[0]
        truth = np.zeros(image.shape[:2], bool) if mp is None else _truth(mp)
        if truth.shape != image.shape[:2]:
            raise ScanError(mp or ip, f"mask is {truth.shape[::-1]} but its scan is {image.shape[:2][::-1]} (w x h)")
        result = segmenter.segment(image, thresholds)
        for t in thresholds:
            m = scan_metrics(result.masks[t], truth, with_hd95)
            per_t[t].append(m)
            row = {"scan": ip.name, "threshold": t, "presence": result.presence, **as_dict(m)}
            rows.append({**row, **caliper_row(result.masks[t], truth)})
    seconds = time.perf_counter() - t0
    summary = {threshold_label(t): with_bands(v) for t, v in per_t.items()}
    for t in thresholds:  # the measurement error of the largest nodule (edge_runtime.core.caliper_error)
        add_calipers(summary[threshold_label(t)], [r for r in rows if r["threshold"] == t])
    for s in summary.values():
        s["seconds"] = round(seconds, 2)
    return summary, rows


def with_bands(per_scan: list[ScanMetrics]) -> dict:
    """The summary of ``per_scan`` with a ``by_band`` block: the same figures per nodule size band."""
    return {**summarise(per_scan), "by_band": summarise_by_band(per_scan)}


def add_calipers(summary: dict, rows: list[dict]) -> None:
    """The largest nodule's measurement error (``edge_runtime.core.caliper_error``) of ``rows``, overall and per
    size band, into ``summary`` (a :func:`with_bands` summary of the same scans)."""
    summary.update(summarise_calipers(rows))
    for band, figures in summary["by_band"].items():
        figures.update(summarise_calipers([r for r in rows if r.get("band") == band]))


def threshold_folders(predicted: Path) -> dict[str, Path]:
    """The threshold folders of a multi-threshold OUT (``OUT/0.85/``, ``OUT/0.9/``, ...), by label, in order."""
    found = {}
    for sub in sorted(p for p in predicted.iterdir() if p.is_dir()) if predicted.is_dir() else []:
        try:
            t = parse_threshold(sub.name)
        except ValueError:
            continue
        if threshold_label(t) == sub.name:
            found[t] = sub
    return {threshold_label(t): found[t] for t in sorted(found)}


def evaluate_written(
    predicted: Path, masks: Path, with_hd95: bool = True, thresholds: list[float] | None = None
) -> tuple[dict, list[dict]]:
    """Score masks already written by ``edge-seg`` in ``predicted`` (its OUT) against the truth.

    A single-threshold OUT gives one summary, ``"written"``; a multi-threshold OUT one per threshold
    folder, keyed by its label (``thresholds``: only these), and the rows name their threshold.
    """
    if not predicted.is_dir():
        raise SetupError(f"{predicted} is not a folder")
    folders = threshold_folders(predicted)
    if thresholds:
        missing = [threshold_label(t) for t in thresholds if threshold_label(t) not in folders]
        if missing:
            have = ", ".join(folders) or "none"
            raise SetupError(
                f"{predicted} has no folder for threshold {', '.join(missing)} (threshold folders: {have})"
            )
        folders = {threshold_label(t): folders[threshold_label(t)] for t in sorted(set(thresholds))}
    if not folders:
        summary, rows = _score_folder(predicted, masks, with_hd95)
        return {"written": summary}, rows
    summaries, all_rows = {}, []
    for label, folder in folders.items():
        summaries[label], rows = _score_folder(folder, masks, with_hd95)
        all_rows += [{**r, "threshold": float(label)} for r in rows]
    return summaries, all_rows


def _score_folder(predicted: Path, masks: Path, with_hd95: bool) -> tuple[dict, list[dict]]:
    """The summary and per-scan rows of one folder of written masks (single-threshold layout)."""
    per_scan, rows = [], []
    truths = files_by_stem(masks)
    if not truths:
        raise SetupError(f"no masks in {masks}")
    for stem, mp in truths.items():
        pp = predicted / f"{stem}.png"
        if not pp.is_file():
            raise SetupError(f"no predicted mask {pp} for {mp.name}")
        pred, truth = _truth(pp), _truth(mp)
        if pred.shape != truth.shape:
            raise ScanError(pp, f"mask is {pred.shape[::-1]} but its truth {mp.name} is {truth.shape[::-1]} (w x h)")
        m = scan_metrics(pred, truth, with_hd95)
        per_scan.append(m)
        rows.append({"scan": mp.name, **as_dict(m), **caliper_row(pred, truth)})
    summary = with_bands(per_scan)
    add_calipers(summary, rows)
    return summary, rows
