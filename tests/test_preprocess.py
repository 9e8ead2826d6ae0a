"""Contract 1: one preprocessing function, identical in training and in the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.core.preprocess import minmax, preprocess, preprocess_batch
from tests.helpers import synthetic, write_png


def test_minmax_maps_to_unit_range_and_constant_to_zeros():
    x = np.array([[3, 5], [7, 11]], np.uint8)
    out = minmax(x)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    const = minmax(np.full((4, 4), 9, np.uint16))
    assert not np.isnan(const).any() and (const == 0).all()


def test_preprocess_shape_dtype_range():
    img, _ = synthetic(1, 360, 480)
    x = preprocess(img, (128, 128))
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    assert preprocess_batch([img, img], (64, 96)).shape == (2, 64, 96, 3)


def test_gray_rgb_rgba_give_the_same_tensor():
    img, _ = synthetic(2, 150, 170)
    rgb = np.dstack([img, img, img])
    rgba = np.dstack([rgb, np.full(img.shape, 255, np.uint8)])
    a, b, c = preprocess(img), preprocess(rgb), preprocess(rgba)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_16_bit_scan_matches_8_bit_scan():
    img, _ = synthetic(3, 150, 170)
    wide = img.astype(np.uint16) * 257  # the same picture at 16 bits
    # The 8-bit path rounds the resized pixels to whole 8-bit steps; the 16-bit one keeps 256x finer steps.
    np.testing.assert_allclose(preprocess(wide), preprocess(img), atol=1.0 / 200)


def test_grayscale_model_input():
    img, _ = synthetic(4, 100, 100)
    assert preprocess(img, (32, 32), channels=1).shape == (32, 32, 1)


def test_unknown_settings_are_refused():
    img, _ = synthetic(4, 50, 50)
    with pytest.raises(ValueError):
        preprocess(img, resize="lanczos")
    with pytest.raises(ValueError):
        preprocess(img, channels=2)
    with pytest.raises(ValueError, match=r"unsupported image shape \(50, 50, 2\)"):
        preprocess(np.dstack([img, img]))  # gray + alpha: the decoder never gives it, a caller might


def test_training_loads_exactly_what_the_runtime_feeds_the_model(tmp_path, tiny_model):
    """train.data.load_split and Segmenter.preprocess give bit-identical tensors for the same files."""
    from edge_runtime import Segmenter, read_scan
    from train.data import load_split

    for i in range(3):
        img, mask = synthetic(10 + i, 180 + 20 * i, 240)
        write_png(tmp_path / "image" / f"{i}.png", img)
        write_png(tmp_path / "mask" / f"{i}.png", mask.astype(np.uint8) * 255)
    seg = Segmenter(tiny_model)
    split = load_split(tmp_path, seg.info.size, seg.info.channels, seg.info.resize)
    for i, name in enumerate(split.names):
        runtime = seg.preprocess(read_scan(tmp_path / "image" / f"{name}.png").frames[0])
        np.testing.assert_array_equal(split.x[i], runtime)
        assert split.masks[i].shape == split.sizes[i]
