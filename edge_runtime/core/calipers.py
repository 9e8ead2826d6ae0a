"""Calipers from a mask: what a sonographer measures on a nodule, in pixels and in millimetres.

Per connected component of a written mask, at the scan's own resolution, in pixel-centre coordinates
(pixel (x, y) is the point (x, y); a one-pixel nodule measures 0):

* **long axis** -- the maximum caliper (Feret) diameter: the two points of the component farthest apart,
  found by an exact search over the vertices of its convex hull (OpenCV); with pixel spacing the distance
  is measured in millimetres, so with anisotropic spacing the long axis is the longest in mm, which may
  be another pair of points than the longest in pixels;
* **short axis** -- the longest chord of the convex hull perpendicular to the long axis (perpendicular in
  mm when the spacing is known, as on a calibrated display). The chord length is a concave function of
  where the chord crosses the long axis, so its maximum is at a chord through a hull vertex: every such
  chord is computed exactly;
* **height** and **width** -- the component's extent along image rows (anteroposterior, with the probe at
  the top) and along columns; **taller-than-wide candidate** when height > width (in mm when known).

:func:`measure` takes one component's pixels; :func:`measure_mask` every component of a 0/255 mask,
largest first (as the findings report lists them). Which spacing applies to a nodule (an ultrasound
region, the scan's PixelSpacing, or the user's) is :mod:`edge_runtime.core.calibration`'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

Point = tuple[float, float]
Spacing = tuple[float, float]  #: (row, column) mm per pixel


@dataclass(frozen=True)
class Calipers:
    """One nodule's measurements. Points are scan pixel coordinates ``(x, y)``; lengths None without spacing."""

    long_axis_px: float  #: length of the long-axis segment in pixels
    short_axis_px: float
    long_axis_endpoints: tuple[Point, Point]
    short_axis_endpoints: tuple[Point, Point]
    height_px: int  #: extent along rows: bottom row - top row (pixel centres)
    width_px: int  #: extent along columns: right column - left column
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    height_mm: float | None = None
    width_mm: float | None = None

    @property
    def taller_than_wide(self) -> bool:
        """Height greater than width: in mm when the spacing is known, else in pixels."""
        if self.height_mm is not None and self.width_mm is not None:
            return self.height_mm > self.width_mm
        return self.height_px > self.width_px


def measure(points: np.ndarray, spacing: Spacing | None = None) -> Calipers:
    """The calipers of one component, from its pixels as an (N, 2) array of integer ``(x, y)``.

    ``spacing`` is (row, column) mm per pixel, or None: then every length is in pixels and the mm
    fields are None.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"expected an (N, 2) array of (x, y) pixels, got shape {points.shape}")
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    left, right, rows = _row_ends(points)
    ends = np.concatenate([np.column_stack([left, rows]), np.column_stack([right, rows])])
    hull = cv2.convexHull(ends.astype(np.int32).reshape(-1, 1, 2))[:, 0, :].astype(np.float64)
    scale = np.array([col_mm, row_mm])
    physical = hull * scale  # an affine map keeps the hull a hull, so the search can run in mm
    i, j = _farthest_pair(physical)
    a, b = physical[i], physical[j]
    chord = _longest_perpendicular_chord(physical, a, b)
    long_ends = _ordered(_point(hull[i]), _point(hull[j]))  # hull vertices: whole pixels, exactly
    short_ends = _ordered(_point(chord[0] / scale), _point(chord[1] / scale))
    height, width = int(rows[-1] - rows[0]), int(right.max() - left.min())
    long_px = math.dist(*long_ends)
    short_px = math.dist(*short_ends)
    if spacing is None:
        return Calipers(long_px, short_px, long_ends, short_ends, height, width)
    return Calipers(
        long_px,
        short_px,
        long_ends,
        short_ends,
        height,
        width,
        long_axis_mm=float(np.linalg.norm(b - a)),
        short_axis_mm=float(np.linalg.norm(chord[1] - chord[0])),
        height_mm=height * row_mm,
        width_mm=width * col_mm,
    )


def _point(p: np.ndarray) -> Point:
    return (float(p[0]), float(p[1]))


def _row_ends(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leftmost and rightmost pixel of each row, and the rows, top to bottom.

    Every other pixel lies between two of them, so they have the same convex hull as the whole component,
    at a fraction of the points (OpenCV's hull sorts what it is given).
    """
    ys, xs = np.ascontiguousarray(points[:, 1]), np.ascontiguousarray(points[:, 0])
    if len(ys) > 1 and not bool((ys[1:] >= ys[:-1]).all()):  # pixels from np.nonzero come sorted by row
        order = np.argsort(ys, kind="stable")
        ys, xs = ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
    return np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts), ys[starts]


def _ordered(p: Point, q: Point) -> tuple[Point, Point]:
    """End points left to right (top to bottom for a vertical segment), so that equal masks give equal JSON."""
    return (p, q) if (round(p[0], 6), round(p[1], 6)) <= (round(q[0], 6), round(q[1], 6)) else (q, p)


def _farthest_pair(hull: np.ndarray) -> tuple[int, int]:
    """Indices of the two hull vertices farthest apart (exact: every pair; hulls of masks are small)."""
    if len(hull) == 1:
        return 0, 0
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return (int(i), int(j)) if i <= j else (int(j), int(i))


def _longest_perpendicular_chord(hull: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The longest chord of the convex polygon ``hull`` perpendicular to the segment ``a``-``b``.

    In the frame of the long axis (``u`` along it, ``v`` across it) the chord at ``u = t`` runs from the
    polygon's lowest to its highest ``v`` there; its length is concave in ``t``, so it is largest at a
    vertex's ``t``. Each vertex's chord is the span of the edges' crossings of the line ``u = t``.
    """
    length = float(np.linalg.norm(b - a))
    if length == 0.0:
        return a, a
    u = (b - a) / length
    v = np.array([-u[1], u[0]])
    rel = hull - a
    us, vs = rel @ u, rel @ v
    nxt = np.roll(np.arange(len(hull)), -1)
    u0, u1, v0, v1 = us[None, :], us[nxt][None, :], vs[None, :], vs[nxt][None, :]  # the edges, one per column
    t = us[:, None]  # one chord per vertex, one per row
    hit = (np.minimum(u0, u1) - 1e-9 <= t) & (t <= np.maximum(u0, u1) + 1e-9)  # edges the line u = t crosses
    du = u1 - u0
    flat = np.abs(du) <= 1e-12  # an edge along the line: both its ends are on it
    s = np.clip((t - u0) / np.where(flat, 1.0, du), 0.0, 1.0)
    cross = np.where(flat, v0, v0 + s * (v1 - v0))
    lo = np.minimum(np.where(hit, cross, np.inf).min(axis=1), np.where(hit & flat, v1, np.inf).min(axis=1))
    hi = np.maximum(np.where(hit, cross, -np.inf).max(axis=1), np.where(hit & flat, v1, -np.inf).max(axis=1))
    k = int(np.argmax(hi - lo))
    return a + us[k] * u + lo[k] * v, a + us[k] * u + hi[k] * v


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The connected components (8-connected) of a 0/255 mask as (N, 2) ``(x, y)`` pixel arrays.

    Largest first, ties by top row then left column: the order of the findings report's nodules.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda k: (-int(stats[k][4]), int(stats[k][1]), int(stats[k][0])))
    found = []
    for k in order:
        x, y, w, h = (int(v) for v in stats[k][:4])
        ys, xs = np.nonzero(labels[y : y + h, x : x + w] == k)
        found.append(np.column_stack([xs + x, ys + y]))
    return found


def measure_mask(mask: np.ndarray, spacing: Spacing | None = None) -> list[Calipers]:
    """The calipers of every component of a 0/255 mask, largest first (:func:`components`)."""
    return [measure(points, spacing) for points in components(mask)]


def largest(mask: np.ndarray) -> Calipers | None:
    """The calipers of the largest component of a mask (bool or 0/255), or None when it is empty."""
    found = components(mask)
    return measure(found[0]) if found else None
