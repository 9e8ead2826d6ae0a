"""The Python API (Segmenter) and the model it loads: sizes, values, thresholds, refusals of models it cannot read."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_runtime import ModelError, Segmenter
from edge_runtime.core.metrics import scan_metrics
from tests.helpers import make_tiny_model, synthetic, tiny_metadata


def test_segment_returns_scan_size_binary_masks(tiny_model):
    seg = Segmenter(tiny_model)
    img, truth = synthetic(5, 230, 310)
    result = seg.segment(img)
    mask = result.masks[seg.threshold]
    assert mask.shape == img.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert result.probability.shape == img.shape
    assert scan_metrics(mask, truth).dice > 0.4  # the tiny model finds the dark nodule


def test_higher_thresholds_give_nested_masks(tiny_model):
    seg = Segmenter(tiny_model)
    img, _ = synthetic(6, 200, 200)
    masks = seg.segment(img, [0.85, 0.5, 0.95, 0.9]).masks
    assert sorted(masks) == [0.5, 0.85, 0.9, 0.95]
    order = [0.5, 0.85, 0.9, 0.95]
    for lo, hi in itertools.pairwise(order):
        assert not np.any((masks[hi] > 0) & (masks[lo] == 0))


def test_batch_equals_single(tiny_model):
    seg = Segmenter(tiny_model)
    images = [synthetic(i, 150 + 10 * i, 200)[0] for i in range(3)]
    batch = seg.segment_batch(images)
    for im, b in zip(images, batch, strict=True):
        np.testing.assert_array_equal(seg.segment(im).masks[seg.threshold], b.masks[seg.threshold])


def test_default_threshold_comes_from_metadata(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx", metadata=tiny_metadata(threshold=0.35))
    assert Segmenter(path).threshold == 0.35


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("", "has no edge-seg metadata"),
        ("{not json", "not valid JSON"),
        (tiny_metadata(schema=2), "schema 2"),
        (tiny_metadata(preprocessing={"resize": "area", "normalisation": "zscore"}), "normalisation"),
        (tiny_metadata(input={"layout": "NCHW"}), "malformed"),
        (tiny_metadata(size=32), "does not match"),
    ],
)
def test_models_the_runtime_does_not_understand_are_refused(tmp_path, metadata, message):
    path = make_tiny_model(tmp_path / "m.onnx", metadata=metadata)
    with pytest.raises(ModelError, match=message):
        Segmenter(path)


def test_not_an_onnx_file_is_refused(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Segmenter(bad)
    with pytest.raises(ModelError, match="does not exist"):
        Segmenter(tmp_path / "missing.onnx")


def test_bundled_model_loads_and_has_metadata():
    seg = Segmenter()
    meta = seg.info.metadata
    assert meta["schema"] == 1
    assert 0 < seg.threshold < 1
    assert meta["training"]["data"]["train"]["scans"] > 0
    assert seg.info.path.stat().st_size < 10 * 1024 * 1024
