"""Training batches: whole frames, or (with views) frames mixed with positive and nodule-free crops.

One :class:`ViewSampler` per training run, seeded from the run's seed: each epoch visits every frame
``view_passes`` times in a new order, and each visit draws what the network sees -- the whole frame,
a crop that holds its nodule at another zoom (``train.views.positive_box``), or a nodule-free crop
beside it (``train.views.negative_box``). Crops go through the runtime's own preprocessing, then the
same augmentation as whole frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.core.preprocess import preprocess

from .augment import AugmentConfig, augment_pair
from .data import Split, model_target
from .views import Box, crop, negative_box, nodule_box, positive_box, refine_box

if TYPE_CHECKING:
    from .trainer import TrainConfig


class ViewSampler:
    def __init__(
        self,
        split: Split,
        cfg: TrainConfig,
        aug: AugmentConfig,
        steps: int,
        start_epoch: int = 0,
        boxes: list[Box | None] | None = None,
    ) -> None:
        self.split, self.cfg, self.aug, self.steps = split, cfg, aug, steps
        #: with --refine-boxes: each frame's out-of-fold first-stage box (None: cut around the true nodule)
        self.boxes = boxes
        # a resumed run draws from a stream of its own (the stopped run's stream is not saved)
        self.rng = np.random.default_rng([cfg.seed, start_epoch] if start_epoch else cfg.seed)
        self.size = split.x.shape[1:3]
        self.passes = cfg.view_passes if cfg.views or cfg.refine else 1
        self.order = self._order()

    def _order(self) -> np.ndarray:
        return np.concatenate([self.rng.permutation(len(self.split)) for _ in range(self.passes)])

    def shuffle(self) -> None:
        self.order = self._order()

    def sample(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """One (image, mask) pair at model size for frame ``j``: the frame itself or a view of it."""
        split, cfg = self.split, self.cfg
        x, y = split.x[j], split.y[j]
        if cfg.refine:  # a second-stage network: the crop around a first stage's box (or the nodule's, jittered)
            first = self.boxes[j] if self.boxes is not None else None
            nb = first if first is not None else nodule_box(split.masks[j])
            if nb is not None:
                box = refine_box(nb, split.masks[j].shape[:2], rng=self.rng)
                x = preprocess(crop(split.images[j], box), self.size, cfg.channels, cfg.resize)
                y = model_target(crop(split.masks[j], box), self.size)[:, :, None]
        elif cfg.views:
            r = self.rng.random()
            full, pos = cfg.view_mix[0], cfg.view_mix[0] + cfg.view_mix[1]
            box = None
            if r >= pos:
                box = negative_box(split.masks[j], self.rng)
            if box is None and r >= full:  # a positive crop (or a frame with no room for a nodule-free view)
                box = positive_box(split.masks[j], self.rng)
            if box is not None:
                x = preprocess(crop(split.images[j], box), self.size, cfg.channels, cfg.resize)
                y = model_target(crop(split.masks[j], box), self.size)[:, :, None]
        if cfg.augment:
            x, y = augment_pair(x, y, self.rng, self.aug)
        return x, y

    def batch(self, i: int):
        idx = self.order[i * self.cfg.batch_size : (i + 1) * self.cfg.batch_size]
        pairs = [self.sample(int(j)) for j in idx]
        x = np.stack([p[0] for p in pairs]).astype(np.float32, copy=False)
        y = np.stack([p[1] for p in pairs]).astype(np.float32, copy=False)
        if not self.cfg.views:
            return x, y
        from .models import PRESENCE, PROBABILITY

        presence = y.reshape(len(y), -1).max(axis=1, keepdims=True)
        return x, {PROBABILITY: y, PRESENCE: presence}
