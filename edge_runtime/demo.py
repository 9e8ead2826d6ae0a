"""``edge-seg --demo``: synthetic ultrasound-like scans, segmented with the bundled model.

A new user has no scans at hand and no dataset ships with the package, so the demo makes its own:
B-mode-like speckle with tissue layers and a depth fall-off inside a black frame, and a darker,
rounded nodule with a thin dark halo, as thyroid nodules often look. It writes the scans and their
true masks, runs the same one-shot conversion as ``edge-seg IN --out OUT --overlay`` and scores the masks
against the truth; the overlays show what was found.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.core.metrics import scan_metrics, summarise
from edge_runtime.files.durable import write_atomic
from edge_runtime.files.scans import encode_png, read_scan
from edge_runtime.job.outcome import log_summary
from edge_runtime.job.settings import RunSettings
from edge_runtime.outputs.layout import OVERLAY_DIR

log = logging.getLogger(__name__)

DEMO_SCANS = 6


def _smooth_field(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """Zero-mean, unit-variance random field varying over about ``scale`` pixels."""
    f: np.ndarray = rng.standard_normal((max(2, height // scale), max(2, width // scale))).astype(np.float32)
    f = cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def synthetic_scan(rng: np.random.Generator, height: int = 360, width: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic 8-bit grayscale B-mode-like scan and its nodule mask (bool).

    Laid out like a workstation frame: the image area inside a black border with a grey-scale bar and a
    label, as in DDTI. Inside: granular speckle over slowly varying parenchyma, bright skin and fascia
    lines over a darker strap-muscle band, a depth fall-off, and a large rounded hypoechoic nodule with
    its own texture and a thin dark halo.
    """
    image = np.zeros((height, width), np.float32)
    top, bottom = int(0.06 * height), int(0.93 * height)
    left, right = int(0.10 * width), int(0.94 * width)
    h, w = bottom - top, right - left
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tissue = 0.62 + 0.08 * _smooth_field(rng, h, w, 40)
    for depth, amplitude, sd in ((0.03, 0.5, 0.01), (0.10, -0.3, 0.04), (0.17, 0.25, 0.01)):
        tissue += amplitude * np.exp(-(((yy - depth * h) / (sd * h)) ** 2))
    tissue *= 1.0 - 0.35 * yy / h
    cy, cx = rng.uniform(0.40, 0.65) * h, rng.uniform(0.3, 0.7) * w
    ay, ax = rng.uniform(0.16, 0.28) * h, rng.uniform(0.12, 0.24) * w
    theta = rng.uniform(-0.4, 0.4)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / ax
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ay
    r = np.sqrt(u**2 + v**2) * (1.0 + 0.07 * np.sin(4 * np.arctan2(v, u) + rng.uniform(0, 6)))
    mask = r <= 1.0
    inner = rng.uniform(0.45, 0.65) * (1 + 0.15 * _smooth_field(rng, h, w, 12))
    echo = tissue * np.where(mask, inner, 1.0)
    echo *= 1 - 0.6 * np.exp(-(((r - 1.0) / 0.05) ** 2))  # thin hypoechoic halo
    speckle: np.ndarray = rng.rayleigh(1.0, (h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=1.2, sigmaY=0.9)
    image[top:bottom, left:right] = echo * speckle / speckle.mean() * 150.0
    image = np.clip(image, 0, 255).astype(np.uint8)
    bar = np.linspace(255, 0, int(0.25 * height)).astype(np.uint8)
    image[int(0.3 * height) : int(0.3 * height) + bar.size, 6:12] = bar[:, None]
    cv2.putText(image, "DEMO", (left, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 220, 1, cv2.LINE_AA)
    full = np.zeros((height, width), bool)
    full[top:bottom, left:right] = mask
    return image, full


def write_demo_scans(folder: Path, count: int = DEMO_SCANS, seed: int = 7) -> tuple[Path, Path]:
    """Write ``count`` synthetic scans to ``folder/scans`` and their true masks to ``folder/truth``."""
    rng = np.random.default_rng(seed)
    scans, truth = folder / "scans", folder / "truth"
    for i in range(1, count + 1):
        image, mask = synthetic_scan(rng, 360, int(rng.choice([360, 480, 560])))
        write_atomic(scans / f"demo_{i:02d}.png", encode_png(image))
        write_atomic(truth / f"demo_{i:02d}.png", encode_png(mask.astype(np.uint8) * 255))
    return scans, truth


def run_demo(settings: RunSettings, folder: Path) -> int:
    """Write the synthetic scans into ``settings.in_dir``, segment them into ``settings.out_dir``, score them.

    The demo always draws overlays (each nodule's outline on its scan, ``OUT/overlays/``), so that a new
    user sees what was found, and says where they are.
    """
    from edge_runtime.oneshot import run_once

    scans, truth = write_demo_scans(folder)
    log.info("demo: %d synthetic scans written to %s", DEMO_SCANS, scans)
    if "overlays" not in settings.job.outputs:
        settings = replace(settings, job=replace(settings.job, outputs=(*settings.job.outputs, "overlays")))
    code = run_once(settings)
    if code == 0 and len(settings.job.thresholds or [None]) == 1:  # one mask per scan to score
        per_scan = []
        for t in sorted(truth.glob("*.png")):
            predicted = read_scan(settings.out_dir / t.name).frames[0]
            per_scan.append(scan_metrics(predicted, read_scan(t).frames[0], with_hd95=False))
        s = summarise(per_scan)
        log_summary(
            f"demo: masks are in {settings.out_dir}; mean Dice against the synthetic truth ({truth}) "
            f"{s['dice_mean']:.2f}"
        )
    overlays = sorted((settings.out_dir / OVERLAY_DIR).glob("*.png"))
    if overlays:
        log_summary(
            f"demo: to see what was found, open the outlines drawn on the scans: {overlays[0]} "
            f"({len(overlays)} in {overlays[0].parent})"
        )
    return code
