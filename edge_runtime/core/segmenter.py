"""The segmenter on pixels: ``Segmenter(model).segment(image)``; the CLI is built on it.

``from edge_runtime import Segmenter`` gives its subclass in :mod:`edge_runtime.api`, which also takes a
scan file's path (this layer knows no files):

>>> from edge_runtime.core.segmenter import Segmenter
>>> from edge_runtime import read_scan
>>> seg = Segmenter()                       # the bundled model
>>> result = seg.segment(read_scan("scan.png").frames[0])
>>> result.masks[seg.threshold]             # uint8, scan size, 0 / 255
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.core.model import ModelInfo, OnnxModel
from edge_runtime.core.postprocess import (
    gate,
    mask_from_probability,
    nodule_present,
    opening_kernel,
    probability_at_scan_size,
)
from edge_runtime.core.preprocess import preprocess
from edge_runtime.core.refine import blend, crop, mask_box, refine_box


@dataclass
class Segmentation:
    """The result for one image, at the image's own size."""

    probability: np.ndarray  #: float32 (H, W), the model's probability of "nodule"
    masks: dict[float, np.ndarray]  #: threshold -> uint8 (H, W) mask, 0 background / 255 nodule
    presence: float | None = None  #: the image-level "nodule present" score (None: the model has no such output)
    nodule_present: bool = True  #: the model's image-level decision; False means every mask is empty

    @property
    def found(self) -> bool:
        """Whether any mask has a nodule."""
        return any(bool(m.any()) for m in self.masks.values())


class Segmenter:
    """Segments thyroid nodules with one reused onnxruntime session.

    Args:
        model: an ONNX file exported by ``edge-seg-export``, an :class:`OnnxModel`, or None for the
            bundled default model.
        threads: intra-op threads (default: the cores this process may use).
        spinning: False for a daemon, so idle worker threads sleep instead of spinning.
        cache_dir: keep onnxruntime's optimised graph of the model in this folder and open it from there
            next time (:mod:`edge_runtime.core.graph_cache`; ``default_cache_dir()`` is the CLI's); None: no cache.
    """

    def __init__(
        self,
        model: str | Path | OnnxModel | None = None,
        threads: int | None = None,
        spinning: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self.model = model if isinstance(model, OnnxModel) else OnnxModel(model, threads, spinning, cache_dir)

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def threshold(self) -> float:
        """The model's default threshold, chosen on validation data and stored in its metadata."""
        return self.info.threshold

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The model's input tensor for one image (contract 1), without the batch axis."""
        info = self.info
        return preprocess(image, info.size, info.channels, info.resize)

    @property
    def presence_threshold(self) -> float | None:
        """The model's image-level threshold ("nodule present" when presence >= it), or None without one."""
        return self.info.presence_threshold

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Model-size probability maps ``(N, h, w)`` for a preprocessed NHWC batch."""
        return self.model.predict(batch)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probability maps ``(N, h, w)`` and presence scores ``(N,)`` (None when the model has no presence output)."""
        return self.model.run(batch)

    def postprocess(
        self,
        probability: np.ndarray,
        scan_hw: tuple[int, int],
        thresholds: Sequence[float] | None = None,
        presence: float | None = None,
        image: np.ndarray | None = None,
    ) -> Segmentation:
        """Scan-size probability and masks from one model-size probability map (and its presence score).

        When the presence score is below the model's presence threshold, the model says "no nodule" and
        every mask is empty; the probability map is kept as it is, for a person to look at. A model with a
        second stage looks again at the scan's pixels (``image``, the scan itself) around the first
        stage's mask (:meth:`refine`); without ``image`` the first stage's map is used as it is.
        """
        thresholds = tuple(thresholds) if thresholds else (self.threshold,)
        info = self.info
        prob = probability_at_scan_size(probability, scan_hw)
        kernel = opening_kernel(scan_hw, probability.shape[:2], info.morphology_size)
        present = nodule_present(presence, self.presence_threshold)
        if info.refine is not None and image is not None and present:
            prob = self.refine(prob, image, kernel)
        masks = {t: mask_from_probability(prob, t, kernel) for t in thresholds}
        return Segmentation(prob, gate(masks, presence, self.presence_threshold), presence, present)

    def refine(self, probability: np.ndarray, image: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
        """The scan-size map with the second stage averaged in around the first stage's mask (unchanged without one)."""
        cut = self.refine_crop(probability, image, kernel)
        if cut is None:
            return probability
        box, tensor = cut
        return blend(probability, self.model.run_refine(tensor[None])[0], box)

    def refine_crop(
        self, probability: np.ndarray, image: np.ndarray, kernel: np.ndarray | None
    ) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        """The second stage's box on the scan and its input tensor, or None when the first stage marked nothing."""
        spec = self.info.refine
        assert spec is not None, "a model with a second stage"
        box = mask_box(mask_from_probability(probability, spec.box_threshold, kernel))
        if box is None:
            return None
        box = refine_box(box, probability.shape[:2], spec.margin, spec.min_margin)
        return box, preprocess(crop(image, box), spec.size, self.info.channels, self.info.resize)

    def segment_batch(
        self, images: Sequence[np.ndarray], thresholds: Sequence[float] | None = None
    ) -> list[Segmentation]:
        """Segment several images in one inference call."""
        if not images:
            return []
        batch = np.stack([self.preprocess(im) for im in images])
        probs, presence = self.run(batch)
        scores = [None] * len(images) if presence is None else [float(q) for q in presence]
        return [
            self.postprocess(p, im.shape[:2], thresholds, q, im) for p, q, im in zip(probs, scores, images, strict=True)
        ]

    def segment(self, image: np.ndarray, thresholds: Sequence[float] | None = None) -> Segmentation:
        """Segment one image (H x W gray, H x W x 3 RGB or H x W x 4 RGBA; 8 or 16 bit).

        Pixels only; ``edge_runtime.Segmenter`` (:mod:`edge_runtime.api`) also takes a file's path.
        """
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"segment() takes the pixels as a NumPy array, not {type(image).__name__}; for a file, use "
                "edge_runtime.Segmenter, whose segment() also takes a path, or read_scan(path).frames[0]"
            )
        return self.segment_batch([image], thresholds)[0]
