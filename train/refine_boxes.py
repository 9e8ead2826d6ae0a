"""The boxes a first stage really gives: out-of-fold masks, for a second stage to train and be scored on.

A second stage trained on crops around the true nodule (``--refine``: its box jittered) sees the nodule
fill most of its crop, so it learns to keep masks about the size they come; but a first stage's box on a
small nodule is often twice its size or larger (the lobe, a dark region beside the nodule). With
``--refine-boxes runs/.../oof/oof.npz`` each frame's crop is cut instead around the mask the fold teacher
that never saw the frame drew (``train.oof``'s out-of-fold maps), exactly as the runtime cuts it: the map at
the scan's size, the mask at the box threshold (the mask threshold chosen out of fold), the opening, the
presence gate, the box of every component (:func:`edge_runtime.core.refine.mask_box`). A frame whose
out-of-fold mask is empty or gated has no box: training cuts it around its true nodule (jittered, as
``--refine`` does), and validation leaves it out (at run time no second pass happens there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.core.postprocess import mask_from_probability, opening_kernel, probability_at_scan_size
from edge_runtime.core.refine import Box, mask_box

from .data import DataError, Split


@dataclass(frozen=True)
class FirstStageBoxes:
    """Each frame's out-of-fold first-stage box at scan size (None: no mask there), and how it was made."""

    boxes: dict[str, Box | None]
    box_threshold: float
    presence_threshold: float | None
    source: str

    def for_split(self, split: Split) -> list[Box | None]:
        """The box of each of ``split``'s frames; refused, naming them, when some have no out-of-fold map."""
        missing = [n for n in split.names if n not in self.boxes]
        if missing:
            raise DataError(
                f"{self.source}: no out-of-fold map for {len(missing)} frame(s) of {split.folder} "
                f"({', '.join(missing[:5])}): run train.oof on every fold first"
            )
        return [self.boxes[n] for n in split.names]

    def summary(self, split: Split) -> dict:
        boxes = self.for_split(split)
        return {
            "file": self.source,
            "box_threshold": self.box_threshold,
            "presence_threshold": self.presence_threshold,
            "frames": len(boxes),
            "with_a_box": sum(b is not None for b in boxes),
        }


def load_first_stage_boxes(npz: str | Path, splits: list[Split], morphology_size: int = 3) -> FirstStageBoxes:
    """The out-of-fold boxes of every frame of ``splits`` from ``npz`` (``train.oof``'s ``oof.npz``).

    The box threshold and the presence threshold are those chosen out of fold (``oof.json`` beside it).
    """
    npz = Path(npz)
    choices = npz.with_name("oof.json")
    if not npz.is_file() or not choices.is_file():
        raise DataError(f"{npz}: --refine-boxes takes train.oof's oof.npz, with its oof.json beside it")
    chosen = json.loads(choices.read_text())["chosen_out_of_fold"]
    threshold, presence_t = float(chosen["threshold"]), chosen.get("presence_threshold")
    with np.load(npz) as f:
        index = {str(n): i for i, n in enumerate(f["names"])}
        maps, presence = f["maps"], f["presence"]
        boxes: dict[str, Box | None] = {}
        for split in splits:
            for name, hw in zip(split.names, split.sizes, strict=True):
                if name not in index:
                    continue  # FirstStageBoxes.for_split names what is missing
                i = index[name]
                if presence_t is not None and float(presence[i]) < float(presence_t):
                    boxes[name] = None
                    continue
                prob = maps[i].astype(np.float32)
                kernel = opening_kernel(hw, prob.shape[:2], morphology_size)
                boxes[name] = mask_box(mask_from_probability(probability_at_scan_size(prob, hw), threshold, kernel))
    return FirstStageBoxes(boxes, threshold, None if presence_t is None else float(presence_t), str(npz))
