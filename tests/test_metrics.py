"""edge_runtime.core.metrics: the metric conventions (Dice, IoU, precision, recall, HD95) and their summary."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge_runtime.core.metrics import hd95, scan_metrics, summarise

# --------------------------------------------------------------------------------------------------
# metrics: an independent reference for HD95 (brute force over boundary pixels)


def ref_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one of the 8 neighbours outside the mask (outside the image counts)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    h, w = mask.shape
    interior = np.ones((h, w), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            interior &= m[dy : dy + h, dx : dx + w]
    return mask.astype(bool) & ~interior


def ref_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    bp = np.argwhere(ref_boundary(pred)).astype(np.float64)
    bt = np.argwhere(ref_boundary(truth)).astype(np.float64)
    d = np.sqrt(((bp[:, None, :] - bt[None, :, :]) ** 2).sum(axis=2))
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def square(top: int, left: int, side: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def test_identical_masks_score_perfectly():
    truth = square(10, 10, 20)
    m = scan_metrics(truth.copy(), truth)
    assert (m.dice, m.iou, m.precision, m.recall, m.hd95) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert (m.truth_pixels, m.predicted_pixels) == (400, 400)
    assert not m.missed


def test_disjoint_masks_score_zero_and_count_as_missed():
    truth, pred = square(5, 5, 10), square(40, 40, 10)
    m = scan_metrics(pred, truth)
    assert (m.dice, m.iou, m.precision, m.recall) == (0.0, 0.0, 0.0, 0.0)
    assert m.missed
    # HD95 is still a distance between the two outlines: at least the gap between the squares
    assert m.hd95 == pytest.approx(ref_hd95(pred, truth), rel=1e-5)
    assert m.hd95 >= math.hypot(40 - 14, 40 - 14)
    s = summarise([m])
    assert (s["missed"], s["missed_share"], s["dice_mean"]) == (1, 1.0, 0.0)


def test_a_square_shifted_by_five_pixels():
    truth = square(10, 10, 20)  # rows 10..29, columns 10..29
    pred = square(10, 15, 20)  # the same square, 5 pixels to the right
    inter = 20 * 15
    m = scan_metrics(pred, truth)
    assert m.dice == pytest.approx(2 * inter / (400 + 400), abs=1e-12)  # 0.75
    assert m.iou == pytest.approx(inter / (400 + 400 - inter), abs=1e-12)  # 0.6
    assert m.precision == pytest.approx(0.75, abs=1e-12) and m.recall == pytest.approx(0.75, abs=1e-12)
    assert not m.missed
    # Of the 2 x 76 boundary pixels, 60 are exactly 5 pixels from the other outline (the leading and
    # trailing edges, and the middle of the inner edges), none further: the 95th percentile is 5.
    assert 4.0 < m.hd95 <= 5.0 + 1e-6
    assert m.hd95 == pytest.approx(5.0, abs=1e-4)
    assert m.hd95 == pytest.approx(ref_hd95(pred, truth), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_a_brute_force_reference_and_is_symmetric(seed):
    rng = np.random.default_rng(seed)
    shape = (90, 120)
    a, b = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    cv2.ellipse(a, (60, 45), (35, 25), float(rng.uniform(0, 90)), 0, 360, 1, cv2.FILLED)
    cv2.ellipse(b, (int(rng.integers(40, 80)), int(rng.integers(30, 60))), (30, 20), 0, 0, 360, 1, cv2.FILLED)
    b[: int(rng.integers(3, 10)), :] = 1  # touches the image border: border pixels are boundary
    a, b = a > 0, b > 0
    assert hd95(a, b) == pytest.approx(ref_hd95(a, b), rel=1e-5)
    assert hd95(a, b) == pytest.approx(hd95(b, a), rel=1e-6)


def test_masks_may_be_bool_or_0_255():
    truth, pred = square(10, 10, 20), square(12, 14, 20)
    as_bool = scan_metrics(pred, truth)
    as_255 = scan_metrics(pred.astype(np.uint8) * 255, truth.astype(np.uint8) * 255)
    assert as_bool == as_255


def test_both_empty_is_a_correct_no_nodule():
    """Module doc: Dice and IoU 1 when both are empty; precision, recall and HD95 undefined; not a miss."""
    empty = np.zeros((32, 32), bool)
    m = scan_metrics(empty, empty.copy())
    assert (m.dice, m.iou) == (1.0, 1.0)
    assert math.isnan(m.precision) and math.isnan(m.recall) and math.isnan(m.hd95)
    assert not m.missed


def test_empty_truth_with_a_prediction():
    """Module doc: Dice/IoU 0 when only one is empty; recall (and HD95) undefined; no nodule, so no miss."""
    m = scan_metrics(square(5, 5, 8, (32, 32)), np.zeros((32, 32), bool))
    assert (m.dice, m.iou, m.precision) == (0.0, 0.0, 0.0)
    assert math.isnan(m.recall) and math.isnan(m.hd95)
    assert not m.missed


def test_empty_prediction_of_a_nodule_is_a_miss():
    """Module doc: precision (and HD95) undefined when the prediction is empty; Dice 0 with a nodule = miss."""
    m = scan_metrics(np.zeros((32, 32), bool), square(5, 5, 8, (32, 32)))
    assert (m.dice, m.iou, m.recall) == (0.0, 0.0, 0.0)
    assert math.isnan(m.precision) and math.isnan(m.hd95)
    assert m.missed


def test_summary_leaves_nans_out_and_scores_overlap_on_positives_and_detection_on_all():
    empty = np.zeros((64, 64), bool)
    per_scan = [
        scan_metrics(square(10, 10, 20), square(10, 10, 20)),  # perfect
        scan_metrics(square(10, 15, 20), square(10, 10, 20)),  # dice 0.75, hd95 5
        scan_metrics(empty, square(10, 10, 20)),  # missed: precision and hd95 undefined
        scan_metrics(empty, empty),  # no nodule, none found: a true negative
        scan_metrics(square(0, 0, 8), empty),  # no nodule, one found: a false-positive frame of 64 px
    ]
    s = summarise(per_scan)
    assert (s["scans"], s["positives"], s["negatives"]) == (5, 3, 2)
    # overlap over the three positive scans only
    assert s["dice_mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert s["dice_median"] == pytest.approx(0.75)
    assert s["iou_mean"] == pytest.approx((1 + 0.6 + 0) / 3)
    assert s["precision_mean"] == pytest.approx((1 + 0.75) / 2)
    assert s["precision_undefined"] == 1
    assert s["recall_mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert s["hd95_mean"] == pytest.approx(2.5, abs=1e-4) and s["hd95_undefined"] == 1
    # image level
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert (s["fp_frames"], s["fp_share"], s["specificity"]) == (1, 0.5, 0.5)
    assert s["fp_area_mean"] == 64 and s["fp_area_share_mean"] == pytest.approx(64 / 64**2)
    assert s["view_dice_mean"] == pytest.approx((1 + 0.75 + 0 + 1 + 0) / 5)
    assert s["missed"] == 1 and s["missed_share"] == pytest.approx(1 / 3)


def test_summary_of_a_nodule_free_folder_is_its_false_positive_figures():
    empty = np.zeros((32, 32), bool)
    s = summarise([scan_metrics(empty, empty), scan_metrics(square(2, 2, 4, (32, 32)), empty)])
    assert (s["positives"], s["negatives"], s["fp_frames"]) == (0, 2, 1)
    assert math.isnan(s["dice_mean"]) and math.isnan(s["sensitivity"])
    assert s["specificity"] == 0.5 and s["fp_area_mean"] == 16
    assert s["missed"] == 0 and s["missed_share"] == 0.0  # nothing can be missed without a nodule
    assert math.isnan(s["recall_mean"]) and math.isnan(s["hd95_mean"])


def test_different_shapes_are_refused_and_hd95_can_be_skipped():
    with pytest.raises(ValueError, match="shapes differ"):
        scan_metrics(np.zeros((10, 12), bool), np.zeros((12, 10), bool))
    m = scan_metrics(square(10, 15, 20), square(10, 10, 20), with_hd95=False)
    assert math.isnan(m.hd95) and m.dice == pytest.approx(0.75)


def test_size_bands_split_at_3_and_10_percent_and_area_ratio_is_predicted_over_true():
    from edge_runtime.core.metrics import size_band, summarise_by_band

    assert [size_band(s) for s in (0.0299, 0.03, 0.10, 0.1001)] == ["small", "medium", "medium", "large"]
    shape = (100, 100)
    small = square(10, 10, 5, shape)  # 25 px: 0.25% of the scan
    large = square(10, 10, 40, shape)  # 1,600 px: 16%
    twice = square(10, 10, 7, shape)  # 49 px, about twice the small truth
    per_scan = [scan_metrics(twice, small), scan_metrics(large, large), scan_metrics(large, np.zeros(shape, bool))]
    assert per_scan[0].band == "small" and per_scan[1].band == "large" and per_scan[2].band is None
    assert per_scan[0].area_ratio == pytest.approx(49 / 25)
    bands = summarise_by_band(per_scan)
    assert set(bands) == {"small", "large"}  # no medium nodule, and the nodule-free scan is in no band
    assert bands["small"]["area_ratio_mean"] == pytest.approx(49 / 25)
    assert bands["large"]["dice_mean"] == 1.0
    assert summarise(per_scan)["area_ratio_mean"] == pytest.approx((49 / 25 + 1.0) / 2)
