"""Augmentation suited to B-mode ultrasound, on preprocessed (model-size, [0, 1]) images.

Horizontal flips only (the transducer is at the top: a vertical flip makes an unphysical scan), small
affine warps, gain/contrast/gamma changes and multiplicative speckle noise. Each augmented image is
min-max normalised again, so the network sees exactly the value range the runtime gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_runtime.core.preprocess import minmax


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.08
    gamma: float = 0.3  # log-uniform in [exp(-g), exp(g)]
    contrast: float = 0.2
    speckle: float = 0.15  # std of multiplicative noise
    affine_p: float = 0.7
    intensity_p: float = 0.7
    speckle_p: float = 0.5


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig):
    """One random augmentation of (image h x w x c in [0, 1], mask h x w x 1 in {0, 1})."""
    h, w = image.shape[:2]
    if rng.random() < cfg.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < cfg.affine_p:
        angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
        scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
        m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), dtype=np.float64)
        m[:, 2] += rng.uniform(-cfg.shift, cfg.shift, 2) * (w, h)
        image = cv2.warpAffine(
            np.ascontiguousarray(image),
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        mask = cv2.warpAffine(
            np.ascontiguousarray(mask), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        if image.ndim == 2:
            image = image[:, :, None]
        if mask.ndim == 2:
            mask = mask[:, :, None]
        mask = (mask > 0.5).astype(np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if rng.random() < cfg.intensity_p:
        gamma = float(np.exp(rng.uniform(-cfg.gamma, cfg.gamma)))
        image = np.power(np.clip(image, 0, 1), gamma)
        c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        image = (image - image.mean()) * c + image.mean()
    if rng.random() < cfg.speckle_p:
        image = image * rng.normal(1.0, cfg.speckle, image.shape[:2])[:, :, None].astype(np.float32)
    return minmax(np.clip(image, 0, None)), np.ascontiguousarray(mask, dtype=np.float32)
