"""train.views: nodule-free views never touch the nodule, positive crops always hold all of it."""

from __future__ import annotations

import numpy as np
import pytest

from train.views import MAX_ASPECT, MIN_SIDE, crop, fixed_views, negative_box, nodule_box, positive_box


def frame_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    x, y, bw, bh = box
    mask[y : y + bh, x : x + bw] = True
    return mask


#: DDTI-like frames (360 px high, 245-560 px wide) with the nodule in different places
CASES = [
    (360, 560, (200, 120, 120, 90)),  # centre
    (360, 245, (20, 150, 90, 80)),  # narrow frame, nodule at the left
    (360, 450, (300, 20, 140, 100)),  # top right
    (360, 300, (40, 200, 200, 150)),  # large, low
]


@pytest.mark.parametrize(("h", "w", "box"), CASES)
def test_nodule_free_views_are_clear_of_the_nodule_large_and_not_too_thin(h, w, box):
    mask = frame_mask(h, w, box)
    rng = np.random.default_rng(0)
    boxes = [negative_box(mask)] + [negative_box(mask, rng) for _ in range(200)]
    assert boxes[0] is not None
    for b in boxes:
        assert b is not None
        x, y, bw, bh = b
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert not crop(mask, b).any(), b
        assert min(bw, bh) >= MIN_SIDE and max(bw, bh) <= MAX_ASPECT * min(bw, bh) + 1, b


@pytest.mark.parametrize(("h", "w", "box"), CASES)
def test_positive_crops_hold_the_whole_nodule_zoomed_in(h, w, box):
    mask = frame_mask(h, w, box)
    rng = np.random.default_rng(1)
    for _ in range(200):
        b = positive_box(mask, rng)
        assert b is not None
        x, y, bw, bh = b
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        assert crop(mask, b).sum() == mask.sum(), b
        assert bw * bh < h * w or (bw, bh) == (w, h)


def test_a_frame_with_no_room_beside_its_nodule_has_no_nodule_free_view():
    mask = frame_mask(360, 245, (30, 30, 185, 300))  # the nodule fills the frame
    assert negative_box(mask) is None
    assert "neg" not in fixed_views("big", mask) and "pos" in fixed_views("big", mask)


def test_empty_masks_give_no_views_and_fixed_views_depend_on_the_name_only():
    assert nodule_box(np.zeros((50, 50), bool)) is None
    assert negative_box(np.zeros((50, 50), bool)) is None
    mask = frame_mask(*CASES[0][:2], CASES[0][2])
    assert fixed_views("17", mask) == fixed_views("17", mask.copy())
    assert fixed_views("17", mask)["pos"] != fixed_views("18", mask)["pos"]


def test_write_views_only_neg_writes_the_nodule_free_views_alone(tmp_path):
    import cv2

    from train.views import main

    for sub in ("image", "mask"):
        (tmp_path / "split" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        mask = np.zeros((300, 400), np.uint8)
        mask[130:170, 60 + 100 * i : 100 + 100 * i] = 255
        cv2.imwrite(str(tmp_path / "split" / "image" / f"s{i}.png"), image)
        cv2.imwrite(str(tmp_path / "split" / "mask" / f"s{i}.png"), mask)
    assert main([str(tmp_path / "split"), "--out", str(tmp_path / "neg"), "--only", "neg"]) == 0
    for sub in ("image", "mask"):
        assert sorted(p.name for p in (tmp_path / "neg" / sub).iterdir()) == ["s0_neg.png", "s1_neg.png"]
    assert not any(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).any() for p in (tmp_path / "neg" / "mask").iterdir())
    assert main([str(tmp_path / "split"), "--out", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all" / "image").iterdir())) == 4
