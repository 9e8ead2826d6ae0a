"""Views cut from labelled frames: nodule-free crops beside the nodule, and crops that hold it at other zooms.

Every DDTI frame contains a nodule, so a model trained on whole frames learns that every view holds one.
No other source has thyroid frames without a nodule, so nodule-free views are cut from the frames we
have: the strip of tissue left, right, above or below the nodule's bounding box, kept clear of the mask
by a margin, and large enough to look like a zoomed view. Positive crops (the whole nodule, at another
zoom and position) go beside them, so a model cannot learn "a crop means no nodule".

Boxes are ``(x, y, w, h)`` in the frame's pixels. The same functions make the fixed views of ``val`` and
``test`` (:func:`fixed_views`, seeded by the frame's name) and the random views of each training epoch.

``python -m train.views SPLIT --out DIR`` writes a split's fixed views as ``DIR/image`` + ``DIR/mask``
(empty masks for the nodule-free ones) for ``edge-seg-eval``; write them outside the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.core.refine import MARGIN as REFINE_MARGIN
from edge_runtime.core.refine import MIN_MARGIN as REFINE_MIN_MARGIN
from edge_runtime.core.refine import crop, mask_box
from edge_runtime.core.refine import refine_box as runtime_box

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

MARGIN_FRACTION = 0.05  #: gap kept between a nodule-free view and the nodule's box, as a share of the frame width
MIN_MARGIN = 10  #: ... and at least this many pixels
MIN_SIDE = 80  #: shortest side of a nodule-free view, in pixels
MAX_ASPECT = 2.0  #: longest side at most this many times the shortest (a strip is cut down to it)


@dataclass(frozen=True)
class ViewConfig:
    margin_fraction: float = MARGIN_FRACTION
    min_margin: int = MIN_MARGIN
    min_side: int = MIN_SIDE
    max_aspect: float = MAX_ASPECT


def nodule_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the mask's foreground (bool or 0/255), or None when it is empty (the runtime's own)."""
    return mask_box(mask)


def free_strips(shape: tuple[int, int], box: Box, cfg: ViewConfig = ViewConfig()) -> list[Box]:
    """The four strips beside ``box`` (left, right, above, below), each clear of it by the margin.

    Only strips whose shorter side reaches ``cfg.min_side`` are returned; each spans the frame in the
    other direction (cut down to ``max_aspect`` by :func:`fit_aspect`).
    """
    fh, fw = shape
    x, y, w, h = box
    m = max(cfg.min_margin, round(cfg.margin_fraction * fw))
    strips = [
        (0, 0, x - m, fh),  # left
        (x + w + m, 0, fw - (x + w + m), fh),  # right
        (0, 0, fw, y - m),  # above
        (0, y + h + m, fw, fh - (y + h + m)),  # below
    ]
    return [s for s in strips if min(s[2], s[3]) >= cfg.min_side]


def fit_aspect(strip: Box, centre: tuple[float, float], max_aspect: float, rng: np.random.Generator | None) -> Box:
    """Cut a strip's long side down to ``max_aspect`` x its short side.

    Fixed views are centred on the nodule's centre line (clamped to the strip); random ones (``rng``) sit
    anywhere along the strip.
    """
    x, y, w, h = strip
    if w > max_aspect * h:
        nw = int(max_aspect * h)
        x0 = rng.integers(x, x + w - nw + 1) if rng is not None else round(centre[0] - nw / 2)
        return int(np.clip(x0, x, x + w - nw)), y, nw, h
    if h > max_aspect * w:
        nh = int(max_aspect * w)
        y0 = rng.integers(y, y + h - nh + 1) if rng is not None else round(centre[1] - nh / 2)
        return x, int(np.clip(y0, y, y + h - nh)), w, nh
    return strip


def negative_box(
    mask: np.ndarray, rng: np.random.Generator | None = None, cfg: ViewConfig = ViewConfig()
) -> Box | None:
    """A nodule-free view of the frame whose nodule is ``mask``, or None when no strip is large enough.

    Without ``rng``: the largest strip, cut to the aspect limit around the nodule's centre line (the
    fixed view of a split). With ``rng``: a strip chosen with probability by area, shrunk by up to 30%
    and placed at random within it (a training view).
    """
    box = nodule_box(mask)
    if box is None:
        return None
    strips = free_strips(mask.shape[:2], box, cfg)
    if not strips:
        return None
    centre = (box[0] + box[2] / 2, box[1] + box[3] / 2)
    if rng is None:
        strip = max(strips, key=lambda s: _area(s, cfg))
        return fit_aspect(strip, centre, cfg.max_aspect, None)
    areas = np.array([_area(s, cfg) for s in strips], dtype=np.float64)
    x, y, w, h = strips[int(rng.choice(len(strips), p=areas / areas.sum()))]
    f = rng.uniform(0.7, 1.0)
    nw, nh = max(cfg.min_side, int(w * f)), max(cfg.min_side, int(h * f))
    nw, nh = min(nw, w), min(nh, h)
    x0, y0 = int(rng.integers(x, x + w - nw + 1)), int(rng.integers(y, y + h - nh + 1))
    return fit_aspect((x0, y0, nw, nh), centre, cfg.max_aspect, rng)


def _area(strip: Box, cfg: ViewConfig) -> int:
    _, _, w, h = fit_aspect(strip, (strip[0] + strip[2] / 2, strip[1] + strip[3] / 2), cfg.max_aspect, None)
    return w * h


def positive_box(mask: np.ndarray, rng: np.random.Generator, cfg: ViewConfig = ViewConfig()) -> Box | None:
    """A view that holds the whole nodule (plus the margin), zoomed in: 0.45-0.9 of the frame's size.

    None when the mask is empty.
    """
    box = nodule_box(mask)
    if box is None:
        return None
    fh, fw = mask.shape[:2]
    x, y, w, h = box
    m = max(cfg.min_margin, round(cfg.margin_fraction * fw))
    need_w, need_h = min(fw, w + 2 * m), min(fh, h + 2 * m)
    scale = rng.uniform(0.45, 0.9)
    cw = int(np.clip(round(fw * scale), need_w, fw))
    ch = int(np.clip(round(fh * scale * rng.uniform(0.8, 1.25)), need_h, fh))
    # the crop keeps [x - m, x + w + m] x [y - m, y + h + m] (clamped to the frame) inside, and stays in the frame
    lo_x, hi_x = max(0, min(x + w + m, fw) - cw), min(max(0, x - m), fw - cw)
    lo_y, hi_y = max(0, min(y + h + m, fh) - ch), min(max(0, y - m), fh - ch)
    x0 = int(rng.integers(lo_x, hi_x + 1))
    y0 = int(rng.integers(lo_y, hi_y + 1))
    return x0, y0, cw, ch


def refine_box(box: Box, shape: tuple[int, int], rng: np.random.Generator | None = None) -> Box:
    """The crop a second-stage network sees around a nodule box (:func:`edge_runtime.core.refine.refine_box`).

    Without ``rng``: exactly what the runtime cuts around a first stage's mask box. With ``rng`` (training):
    the margin drawn from 0.1-0.45 and each edge first moved by up to a tenth of the box (normal, sd 0.06),
    so that training sees boxes as wrong as a first stage's.
    """
    if rng is None:
        return runtime_box(box, shape, REFINE_MARGIN, REFINE_MIN_MARGIN)
    x, y, w, h = box
    margin = float(rng.uniform(0.1, 0.45))
    jx0, jx1, jy0, jy1 = np.clip(rng.normal(0.0, 0.06, 4), -0.1, 0.1)
    moved = (x + jx0 * w, y + jy0 * h, w * (1 + jx1 - jx0), h * (1 + jy1 - jy0))
    return runtime_box(moved, shape, margin, REFINE_MIN_MARGIN)


def _name_rng(name: str, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{salt}\0{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def fixed_views(name: str, mask: np.ndarray, cfg: ViewConfig = ViewConfig()) -> dict[str, Box]:
    """The fixed views of one frame for evaluation: ``{"neg": box, "pos": box}`` (either may be missing).

    Seeded by the frame's name alone, so a split's views are the same on every run and machine.
    """
    views: dict[str, Box] = {}
    neg = negative_box(mask, None, cfg)
    if neg is not None:
        views["neg"] = neg
    pos = positive_box(mask, _name_rng(name, "pos"), cfg)
    if pos is not None:
        views["pos"] = pos
    return views


def write_views(split: Path, out: Path, kinds: tuple[str, ...] = ("neg", "pos")) -> dict[str, int]:
    """Write ``split``'s fixed views of ``kinds`` into ``out/image`` + ``out/mask`` (``<id>_neg.png``,
    ``<id>_pos.png``)."""
    from edge_runtime.files.durable import write_atomic
    from edge_runtime.files.scans import decode_image, read_bytes

    from .data import pair_folder

    counts = {"frames": 0, "neg": 0, "pos": 0}
    for sub in ("image", "mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for ip, mp in pair_folder(split):
        image = decode_image(read_bytes(ip)[0], ip)
        mask = decode_image(read_bytes(mp)[0], mp)
        mask = mask.max(axis=2) if mask.ndim == 3 else mask
        truth = np.where(mask > 127, 255, 0).astype(np.uint8)
        counts["frames"] += 1
        for kind, box in fixed_views(ip.stem, truth).items():
            if kind not in kinds:
                continue
            img_c, mask_c = crop(image, box), crop(truth, box)
            if kind == "neg" and mask_c.any():  # by construction never; a guard, not a filter
                raise AssertionError(f"{ip}: nodule-free view {box} overlaps the nodule")
            for sub, arr in (("image", img_c), ("mask", mask_c)):
                ok, enc = cv2.imencode(".png", arr)
                if not ok:
                    raise OSError(f"could not encode the {kind} view of {ip}")
                write_atomic(out / sub / f"{ip.stem}_{kind}.png", enc.tobytes())
            counts[kind] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.views", description=__doc__.split("\n\n")[0])
    p.add_argument("split", type=Path, help="labelled folder with image/ and mask/ (e.g. ../shared/data/ddti/test)")
    p.add_argument("--out", type=Path, required=True, help="folder for image/ + mask/ of the views")
    p.add_argument(
        "--only", choices=["neg", "pos"], help="only the nodule-free views (neg) or only the positive crops (pos)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .data import DataError

    try:
        counts = write_views(args.split, args.out, (args.only,) if args.only else ("neg", "pos"))
    except DataError as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "%s: %d frames -> %d nodule-free views, %d positive crops in %s",
        args.split,
        counts["frames"],
        counts["neg"],
        counts["pos"],
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
