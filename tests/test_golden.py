"""Golden test: the bundled model, through the real CLI, on the DDTI test split.

The expected Dice is read from the record written when the model was released
(edge_runtime/models/ddti-fcn.test-eval.json); the masks `edge-seg` writes must score within 0.02 of it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_runtime.core.model import MODELS_DIR, default_model_path, file_sha256
from edge_runtime.core.thresholds import threshold_label
from edge_runtime.scoring import evaluate_written

RECORD = MODELS_DIR / "ddti-fcn.test-eval.json"


@pytest.mark.slow
def test_bundled_model_scores_its_recorded_dice_on_test(ddti, tmp_path):
    record = json.loads(RECORD.read_text())
    assert record["model"]["sha256"] == file_sha256(default_model_path()), "the record is for another model"
    threshold = record["model"]["default_threshold"]
    expected = record["summary"][threshold_label(threshold)]["dice_mean"]
    out = tmp_path / "masks"
    res = subprocess.run(
        [sys.executable, "-m", "edge_runtime", str(ddti / "test" / "image"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("*.png"))) == 64
    summary, _ = evaluate_written(out, ddti / "test" / "mask", with_hd95=False)
    assert summary["written"]["dice_mean"] >= expected - 0.02, (summary["written"]["dice_mean"], expected)


VIEWS_RECORD = MODELS_DIR / "ddti-fcn.test-views-eval.json"


@pytest.mark.slow
def test_bundled_model_leaves_nodule_free_views_empty_as_recorded(ddti, tmp_path):
    """Issue 13: nodule-free views cut from the test frames (train.views) get a mask no more often than recorded.

    The record is the edge-seg-eval JSON of the same views at release; the share of views with any mask
    must be within two views of it, and every frame's view must be named in the run's output.
    """
    from train.views import write_views

    record = json.loads(VIEWS_RECORD.read_text())
    assert record["model"]["sha256"] == file_sha256(default_model_path()), "the record is for another model"
    threshold = record["model"]["default_threshold"]
    expected = record["summary"][threshold_label(threshold)]
    views = tmp_path / "views"
    counts = write_views(ddti / "test", views)
    for p in (views / "image").glob("*_pos.png"):  # the nodule-free views only
        p.unlink()
        (views / "mask" / p.name).unlink()
    assert counts["neg"] == expected["negatives"]
    out = tmp_path / "masks"
    res = subprocess.run(
        [sys.executable, "-m", "edge_runtime", str(views / "image"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    summary, _ = evaluate_written(out, views / "mask", with_hd95=False)
    got = summary["written"]
    assert got["negatives"] == expected["negatives"] and got["positives"] == 0
    assert abs(got["fp_frames"] - expected["fp_frames"]) <= 2, (got["fp_frames"], expected["fp_frames"])
