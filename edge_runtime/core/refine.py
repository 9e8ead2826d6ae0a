"""The second stage: a network that looks again at the nodule, on a crop of the scan around it.

A first-stage network sees the whole scan shrunk to its input size, so a nodule a third of the frame
wide gets some fifty model pixels. A model with a ``refine`` block in its metadata (contract 2 of
docs/DESIGN.md; ``edge-seg-export --refine``) holds a second network in the same graph, behind its own
input -- or (schema 3, ``python -m export.stages``) in an ONNX file of its own beside the model's, named and
hashed in the metadata, so that each stage runs in a session of its own. The runtime cuts the scan around the
first stage's mask (:func:`refine_box`: the mask's bounding box widened by ``margin`` of its own size on each
side, plus ``min_margin`` pixels, clamped to the scan),
preprocesses that crop exactly as a scan, runs the second network on it, and inside the box either averages
its map with the first stage's (``blend: mean``) or takes its map alone (``blend: replace``, for a second
stage trained on the oversized boxes a first stage really gives, which must be free to shrink the mask)
(:func:`blend`). Thresholds and the opening then act on that map as on any other. No mask from the first
stage (or a "no nodule" presence decision) means no second pass: the second stage refines outlines, it
never adds a nodule elsewhere.

The same :func:`refine_box` cuts the training crops (``train.views.refine_box`` moves the box's edges
first, as a first stage's box would be wrong; ``--refine-boxes`` starts from the boxes a first stage drew
out of fold, ``train.refine_boxes``), so training and run time see the same kind of crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

Box = tuple[int, int, int, int]  #: (x, y, width, height) in the scan's pixels

REFINE_INPUT_NAME = "refine_image"
REFINE_OUTPUT_NAME = "refine_probability"
MARGIN = 0.25  #: the crop's margin on each side, as a share of the mask box's own width / height
MIN_MARGIN = 8  #: ... plus this many scan pixels
BLENDS = ("mean", "replace")  #: inside the box: the two maps averaged, or the second stage's alone


@dataclass(frozen=True)
class RefineSpec:
    """A model's second stage, as its metadata describes it."""

    input_name: str
    output_name: str
    height: int
    width: int
    channels: int
    box_threshold: float  #: the first stage's mask at this threshold gives the box
    margin: float = MARGIN
    min_margin: int = MIN_MARGIN
    blend: str = "mean"  #: one of :data:`BLENDS`
    #: the second stage's own ONNX file, beside the model's (schema 3), or None: in the model's graph
    file: str | None = None
    sha256: str | None = None  #: that file's sha256, as exported

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @classmethod
    def from_metadata(cls, block: dict[str, Any]) -> RefineSpec:
        inp = block["input"]
        return cls(
            input_name=str(inp["name"]),
            output_name=str(block["output"]["name"]),
            height=int(inp["height"]),
            width=int(inp["width"]),
            channels=int(inp["channels"]),
            box_threshold=float(block["box_threshold"]),
            margin=float(block["margin"]),
            min_margin=int(block["min_margin"]),
            blend=str(block.get("blend", "mean")),
            file=None if block.get("file") is None else str(block["file"]),
            sha256=None if block.get("sha256") is None else str(block["sha256"]),
        )


def refine_metadata(
    height: int,
    width: int,
    channels: int,
    box_threshold: float,
    margin: float = MARGIN,
    min_margin: int = MIN_MARGIN,
    blend: str = "mean",
    file: str | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The metadata's ``refine`` block (read back by :meth:`RefineSpec.from_metadata`); ``file`` and ``sha256``:
    the second stage's own ONNX file beside the model's, and its hash (None: in the model's graph)."""
    block: dict[str, Any] = {
        "input": {"name": REFINE_INPUT_NAME, "height": int(height), "width": int(width), "channels": int(channels)},
        "output": {"name": REFINE_OUTPUT_NAME, "activation": "sigmoid", "shape": "N,H,W,1"},
        "box_threshold": float(box_threshold),
        "margin": float(margin),
        "min_margin": int(min_margin),
        "blend": blend,
        "rule": "crop the scan to the first stage's mask box at box_threshold, widened by margin of its size and "
        "min_margin pixels on each side; inside the box, "
        + ("average the second network's map with the first's" if blend == "mean" else "take the second network's map"),
    }
    if file is not None:
        block["file"], block["sha256"] = file, sha256
    return block


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a mask's foreground (every component), or None when it is empty."""
    x, y, w, h = cv2.boundingRect((mask > 0).astype(np.uint8))
    return None if w == 0 or h == 0 else (int(x), int(y), int(w), int(h))


def refine_box(box: tuple[float, float, float, float], shape: tuple[int, int], margin: float, min_margin: int) -> Box:
    """``box`` widened by ``margin`` x its width / height plus ``min_margin`` on each side, within ``shape``.

    Never empty: at least one pixel, inside the scan.
    """
    fh, fw = shape
    x, y, w, h = box
    mx, my = margin * w + min_margin, margin * h + min_margin
    x0, y0 = int(np.clip(np.floor(x - mx), 0, fw - 1)), int(np.clip(np.floor(y - my), 0, fh - 1))
    x1, y1 = int(np.clip(np.ceil(x + w + mx), x0 + 1, fw)), int(np.clip(np.ceil(y + h + my), y0 + 1, fh))
    return x0, y0, x1 - x0, y1 - y0


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return np.ascontiguousarray(array[y : y + h, x : x + w])


def blend(probability: np.ndarray, refined: np.ndarray, box: Box, mode: str = "mean") -> np.ndarray:
    """The scan-size map with the second stage's model-size map (resized to the box) put in the box.

    ``mode`` ``mean``: averaged with the first stage's there; ``replace``: in its place.
    """
    x, y, w, h = box
    inside = cv2.resize(refined.astype(np.float32, copy=False), (w, h), interpolation=cv2.INTER_LINEAR)
    out = probability.copy()
    if mode == "replace":
        out[y : y + h, x : x + w] = inside
    else:
        out[y : y + h, x : x + w] = (out[y : y + h, x : x + w] + inside) * 0.5
    return out
