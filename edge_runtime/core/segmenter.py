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
        stage's mask (:meth:`refine_crop`); without ``image`` the first stage's map is used as it is.
        """
        return self.postprocess_batch([probability], [scan_hw], thresholds, [presence], [image])[0]

    def postprocess_batch(
        self,
        probabilities: Sequence[np.ndarray],
        scan_hws: Sequence[tuple[int, int]],
        thresholds: Sequence[float] | None = None,
        presences: Sequence[float | None] | None = None,
        images: Sequence[np.ndarray | None] | None = None,
    ) -> list[Segmentation]:
        """:meth:`postprocess` for several frames, whose second-stage crops go through one inference run."""
        thresholds = tuple(thresholds) if thresholds else (self.threshold,)
        n = len(probabilities)
        presences = presences if presences is not None else [None] * n
        images = images if images is not None else [None] * n
        info = self.info
        maps = [probability_at_scan_size(p, hw) for p, hw in zip(probabilities, scan_hws, strict=True)]
        kernels = [
            opening_kernel(hw, p.shape[:2], info.morphology_size) for p, hw in zip(probabilities, scan_hws, strict=True)
        ]
        present = [nodule_present(q, self.presence_threshold) for q in presences]
        if info.refine is not None:
            cuts = {}
            for i, (m, im, k, ok) in enumerate(zip(maps, images, kernels, present, strict=True)):
                cut = self.refine_crop(m, im, k) if im is not None and ok else None
                if cut is not None:
                    cuts[i] = cut
            if cuts:  # one run for every crop: a scan where the first stage marked nothing has none
                refined = self.model.run_refine(np.stack([tensor for _, tensor in cuts.values()]))
                for r, (i, (box, _)) in zip(refined, cuts.items(), strict=True):
                    maps[i] = blend(maps[i], r, box, info.refine.blend)
        out = []
        for prob, kernel, q, ok in zip(maps, kernels, presences, present, strict=True):
            masks = {t: mask_from_probability(prob, t, kernel) for t in thresholds}
            out.append(Segmentation(prob, gate(masks, q, self.presence_threshold), q, ok))
        return out

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
        return self.postprocess_batch(list(probs), [im.shape[:2] for im in images], thresholds, scores, images)

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
