"""edge_runtime.core.postprocess (contract 3): the opening scaled to the scan, its bounded-box shortcut, P > T."""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.core.postprocess import mask_from_probability, open_in_place, opening_kernel


def test_opening_kernel_scales_with_scan_size():
    k = opening_kernel((360, 480), (128, 128), 3)
    assert k.shape == (9, 11)  # 3 model pixels = 8.4 x 11.25 scan pixels, rounded to odd
    assert opening_kernel((128, 128), (128, 128), 3).shape == (3, 3)
    assert opening_kernel((64, 64), (128, 128), 3) is None  # less than a pixel: nothing to open
    assert opening_kernel((360, 480), (128, 128), 0) is None


def test_opening_removes_specks_but_keeps_nodules():
    prob = np.zeros((360, 480), np.float32)
    prob[100:200, 100:220] = 0.99  # a nodule
    prob[300, 400] = 0.99  # a one-pixel speck
    mask = mask_from_probability(prob, 0.9, opening_kernel((360, 480), (128, 128), 3))
    assert mask[300, 400] == 0
    assert mask[150, 160] == 255
    assert mask.sum() / 255 > 0.95 * 100 * 120


def test_opening_near_the_foreground_equals_the_full_opening():
    # open_in_place only works on the foreground's bounding box plus the kernel's half size; it must
    # give exactly what cv2.morphologyEx gives on the whole mask, at the borders and for any shapes.
    rng = np.random.default_rng(7)
    for trial in range(600):
        h, w = (int(x) for x in rng.integers(4, 70, size=2))
        size = (int(rng.integers(0, 6)) * 2 + 1, int(rng.integers(0, 6)) * 2 + 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, size)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 4))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            dy, dx = (int(v) for v in rng.integers(1, 30, size=2))
            mask[y : y + dy, x : x + dx] = 255
        mask[rng.random((h, w)) < rng.choice([0.0, 0.01, 0.2, 0.6])] = 255
        expected = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        open_in_place(mask, kernel)
        np.testing.assert_array_equal(mask, expected, err_msg=f"trial {trial}, {h}x{w}, kernel {size}")


def test_threshold_is_strictly_greater():
    prob = np.full((10, 10), 0.9, np.float32)
    assert mask_from_probability(prob, 0.9, None).max() == 0
    assert mask_from_probability(prob, 0.85, None).min() == 255
