"""``edge-seg --demo``: synthetic ultrasound-like scans, segmented with the bundled model.

A new user has no scans at hand and no dataset ships with the package, so the demo makes its own:
B-mode-like speckle with tissue layers and a depth fall-off, and a darker, rounded nodule with a
brighter rim, as thyroid nodules often look. It writes the scans and their true masks, runs the same
one-shot conversion as ``edge-seg IN --out OUT`` and scores the masks against the truth.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.metrics import scan_metrics, summarise
from edge_runtime.scanio import encode_png, read_scan, write_atomic

log = logging.getLogger("edge_seg")

DEMO_SCANS = 6


def synthetic_scan(rng: np.random.Generator, height: int = 360, width: int = 480) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic 8-bit grayscale B-mode-like scan and its nodule mask (bool)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # Tissue: echogenic thyroid parenchyma under a darker strap-muscle band, falling off with depth.
    tissue = 0.55 + 0.25 * np.exp(-(((yy - 0.12 * height) / (0.05 * height)) ** 2))
    tissue -= 0.25 * np.exp(-(((yy - 0.25 * height) / (0.06 * height)) ** 2))
    tissue *= 1.0 - 0.45 * yy / height
    # The nodule: a rotated ellipse, hypoechoic inside, with a brighter rim (halo/capsule).
    cy = rng.uniform(0.4, 0.65) * height
    cx = rng.uniform(0.3, 0.7) * width
    ay, ax = rng.uniform(0.09, 0.17) * height, rng.uniform(0.09, 0.2) * width
    theta = rng.uniform(-0.5, 0.5)
    u = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / ax
    v = (-(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)) / ay
    r = np.sqrt(u**2 + v**2) * (1.0 + 0.06 * np.sin(5 * np.arctan2(v, u) + rng.uniform(0, 6)))
    mask = r <= 1.0
    echo = tissue * np.where(mask, rng.uniform(0.35, 0.55), 1.0)
    echo += 0.35 * np.exp(-(((r - 1.0) / 0.06) ** 2))
    # Speckle: Rayleigh-distributed, spatially correlated along the beam (taller than wide).
    speckle = rng.rayleigh(1.0, (height, width)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), sigmaX=0.8, sigmaY=1.6)
    image = np.clip(echo * speckle / speckle.mean() * 150.0, 0, 255).astype(np.uint8)
    cv2.putText(image, "DEMO", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
    return image, mask


def write_demo_scans(folder: Path, count: int = DEMO_SCANS, seed: int = 7) -> tuple[Path, Path]:
    """Write ``count`` synthetic scans to ``folder/scans`` and their true masks to ``folder/truth``."""
    rng = np.random.default_rng(seed)
    scans, truth = folder / "scans", folder / "truth"
    for i in range(1, count + 1):
        image, mask = synthetic_scan(rng, 360, int(rng.choice([360, 480, 560])))
        write_atomic(scans / f"demo_{i:02d}.png", encode_png(image))
        write_atomic(truth / f"demo_{i:02d}.png", encode_png(mask.astype(np.uint8) * 255))
    return scans, truth


def run_demo(args: argparse.Namespace) -> int:
    from edge_runtime.oneshot import run_once

    folder: Path = args.demo
    scans, truth = write_demo_scans(folder)
    log.info("demo: %d synthetic scans written to %s", DEMO_SCANS, scans)
    args.input, args.out = scans, args.out or folder / "masks"
    code = run_once(args)
    if code == 0 and len(args.threshold or [None]) == 1:  # one mask per scan to score
        per_scan = []
        for t in sorted(truth.glob("*.png")):
            predicted = read_scan(args.out / t.name).frames[0]
            per_scan.append(scan_metrics(predicted, read_scan(t).frames[0], with_hd95=False))
        s = summarise(per_scan)
        log.info(
            "demo: masks are in %s; mean Dice against the synthetic truth (%s) %.2f",
            args.out,
            truth,
            s["dice_mean"],
            extra={"plain": True},
        )
    return code
