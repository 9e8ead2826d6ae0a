"""edge_runtime.outputs.overlays: the outline in each threshold's colour, the legend, 8 and 16-bit scans."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_runtime.outputs.overlays import PALETTE, render_overlay
from tests.helpers import nodule_scan


def has_colour(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(image == np.array(colour, np.uint8), axis=-1)


def _disc(h: int = 200, w: int = 260, r: int = 40) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), r, 255, cv2.FILLED)
    return mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_overlay_outlines_the_mask_in_colour(dtype):
    scan = nodule_scan(200, 260, (130, 100), (40, 40))[0].astype(dtype) * (257 if dtype == np.uint16 else 1)
    mask = _disc()
    picture = render_overlay(scan, {0.5: mask})
    assert picture.shape == (200, 260, 3) and picture.dtype == np.uint8
    drawn = has_colour(picture, PALETTE[0])
    border = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    assert drawn[border].mean() > 0.9  # the outline follows the mask's border...
    yy, xx = np.mgrid[0:200, 0:260]
    far = np.hypot(yy - 100, xx - 130) > 50  # ...and nothing else is drawn (legend aside)
    far[:60, 150:] = False
    assert not drawn[far].any()
    inside = np.hypot(yy - 100, xx - 130) < 30
    assert not drawn[inside].any()
    widths = drawn[100, :].nonzero()[0]
    assert 2 <= len(widths) // 2 <= 4  # ~2 px at this size, on each side


def test_several_thresholds_get_distinct_colours_and_a_legend():
    scan = nodule_scan(300, 400, (200, 150), (60, 60))[0]
    masks = {0.5: _disc(300, 400, 60), 0.9: _disc(300, 400, 40)}
    picture = render_overlay(scan, masks)
    first, second = has_colour(picture, PALETTE[0]), has_colour(picture, PALETTE[1])
    assert first[150, 135:145].any() and second[150, 155:165].any()  # each outline at its own radius
    assert PALETTE[0] != PALETTE[1]
    corner = picture[:50, 300:]
    assert (corner == 0).all(axis=-1).mean() > 0.4  # the legend's dark box, top right
    assert has_colour(corner, PALETTE[0]).any() and has_colour(corner, PALETTE[1]).any()


@pytest.mark.parametrize("width", [245, 560])  # DDTI's narrowest and widest frames
def test_an_overlay_without_an_outline_says_no_nodule_found(width):
    """Issue 13: an empty result is never a silent one: the legend says "no nodule found" (in white)."""
    image = np.full((360, width), 120, np.uint8)
    empty = {0.4: np.zeros((360, width), np.uint8), 0.9: np.zeros((360, width), np.uint8)}
    picture = render_overlay(image, empty, presence=0.03)
    changed = np.any(picture != 120, axis=2)
    assert changed.any(), "nothing was drawn"
    ys, xs = np.nonzero(changed)
    assert ys.max() < 360 // 2 and xs.min() > width * 0.02  # a box in the top-right part
    white = np.all(picture == 255, axis=2)
    assert white.sum() > 50  # the text
    for colour in PALETTE[:2]:  # no threshold swatch: the legend is the message, not the colour key
        assert not np.all(picture == colour, axis=2).any()
    with_score = changed.sum()
    plain = np.any(render_overlay(image, empty) != 120, axis=2).sum()
    assert with_score > plain  # "(presence 0.03)" is written too
