"""Contract 1 of docs/DESIGN.md: the one preprocessing function, shared by training and the runtime.

decode -> RGB -> resize to the model's input size -> per-image min-max to [0, 1] -> float32 NHWC.

Training (``train/``) imports :func:`preprocess` from here, so the two can never drift.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Resize methods a model's metadata may ask for, by name.
RESIZE_METHODS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


def minmax(image: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] as float32. A constant image maps to zeros, never NaN."""
    out = image.astype(np.float32, copy=True)
    lo = float(out.min())
    hi = float(out.max())
    if hi - lo <= 0.0 or not np.isfinite(hi - lo):
        out[...] = 0.0
        return out
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def preprocess(
    image: np.ndarray,
    size: tuple[int, int] = (128, 128),
    channels: int = 3,
    resize: str = "area",
) -> np.ndarray:
    """Turn one decoded scan into the model's input tensor (without the batch axis).

    Args:
        image: decoded pixels, H x W, H x W x 1, H x W x 3 (RGB) or H x W x 4 (RGBA), any integer
            or float dtype (8- and 16-bit scans alike).
        size: the model's input ``(height, width)``.
        channels: 3 for RGB models (the seed's recipe), 1 for grayscale models.
        resize: interpolation name from :data:`RESIZE_METHODS`.

    Returns:
        float32 array ``(height, width, channels)`` with values in [0, 1].
    """
    if resize not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {resize!r}; known: {sorted(RESIZE_METHODS)}")
    if channels not in (1, 3):
        raise ValueError(f"unsupported channel count {channels}; expected 1 or 3")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"unsupported image shape {image.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        image = image.astype(np.float32)  # cv2.resize has no int32/int64/bool paths
    height, width = size
    # Resizing before channel expansion gives the same numbers (channels are resized independently)
    # for a third of the work on grayscale scans.
    resized = cv2.resize(image, (width, height), interpolation=RESIZE_METHODS[resize])
    if resized.ndim == 3 and resized.shape[2] == 1:
        resized = resized[:, :, 0]
    if resized.ndim == 2:  # grayscale: normalise the one channel, then copy it to each of the model's
        scaled = minmax(resized)  # (the same numbers as normalising three equal channels, for a third of the work)
        return cv2.cvtColor(scaled, cv2.COLOR_GRAY2RGB) if channels == 3 else scaled[:, :, None]
    if channels == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
        return minmax(resized)[:, :, None]
    return minmax(resized)


def preprocess_batch(
    images: list[np.ndarray],
    size: tuple[int, int] = (128, 128),
    channels: int = 3,
    resize: str = "area",
) -> np.ndarray:
    """:func:`preprocess` each image and stack them into one float32 NHWC batch."""
    height, width = size
    batch = np.empty((len(images), height, width, channels), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = preprocess(image, size, channels, resize)
    return batch
