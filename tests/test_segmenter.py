"""The Python API (Segmenter) and the model it loads: sizes, values, thresholds, refusals of models it cannot read."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from edge_runtime import ModelError, Segmenter
from edge_runtime.core.metrics import scan_metrics
from tests.helpers import REPO, make_tiny_model, synthetic, tiny_metadata


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
    # 0.6.0 onwards: a second stage on a crop around the first stage's mask; 0.7.0: in a file of its own (schema 3)
    assert meta["schema"] == 3 and seg.model.refine_session is not None
    assert seg.info.refine is not None and 0 < seg.info.refine.box_threshold < 1
    assert meta["macs_per_scan"] <= 1.0e9  # issue 13's budget: both stages, the second pass included
    assert 0 < seg.threshold < 1
    assert meta["training"]["data"]["train"]["scans"] > 0
    assert sum(p.stat().st_size for p, _ in seg.model.files) <= 20 * 1000 * 1000  # issue 13's budget, both files
    # 0.3.0 onwards: an image-level presence output with its threshold chosen on validation
    assert seg.info.presence_output == "presence" and 0 < (seg.presence_threshold or 0) < 1
    # 0.7.0 onwards: every threshold chosen out of fold (training names the file; the second stage's report, which
    # chose the blend, its threshold and the box threshold on the five out-of-fold second stages, is kept)
    assert meta["training"]["thresholds_chosen"]["on"] == "out-of-fold predictions of the fold teachers"
    report = json.loads((REPO / "teachers" / "ddti-refine-64" / "oof_refine.json").read_text())
    assert meta["refine"]["blend"] == "mean" and report["mean"]["threshold"] == seg.threshold
    assert report["presence_threshold"] == seg.presence_threshold == meta["training"]["presence_threshold_chosen"]
    assert report["box_threshold"] == seg.info.refine.box_threshold


def test_a_presence_output_below_its_threshold_empties_every_mask(tmp_path):
    """Issue 13: when the model's image-level score says "no nodule", the masks are empty."""
    image, truth = synthetic(3)
    keeps = Segmenter(make_tiny_model(tmp_path / "keeps.onnx", presence_threshold=0.5))
    found = keeps.segment(image, [0.5, 0.9])
    assert keeps.presence_threshold == 0.5 and found.presence is not None and found.presence > 0.9
    assert found.nodule_present and found.found
    assert (found.masks[0.5] > 0).sum() > 0.5 * truth.sum()
    strict = Segmenter(make_tiny_model(tmp_path / "strict.onnx", presence_threshold=0.999999))
    gated = strict.segment(image, [0.5, 0.9])
    assert gated.presence == pytest.approx(found.presence) and not gated.nodule_present and not gated.found
    assert all(m.dtype == np.uint8 and m.shape == image.shape[:2] and not m.any() for m in gated.masks.values())
    # the probability map is kept as it is, for a person to look at
    np.testing.assert_array_equal(gated.probability, found.probability)


def test_a_model_without_presence_keeps_its_masks_and_reports_none(tiny_model):
    image, _ = synthetic(4)
    seg = Segmenter(tiny_model)
    result = seg.segment(image)
    assert seg.presence_threshold is None and result.presence is None and result.nodule_present and result.found


def test_a_presence_output_the_metadata_does_not_name_is_refused(tmp_path):
    meta = tiny_metadata()
    meta["presence"] = {"name": "score", "activation": "sigmoid", "threshold": 0.5}
    path = make_tiny_model(tmp_path / "bad.onnx", metadata=meta, presence_threshold=0.5)
    with pytest.raises(ModelError, match="outputs 'probability' and 'score'"):
        Segmenter(path)
