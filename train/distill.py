"""Distillation: one student network trained on the averaged outputs of the fold teachers.

The teachers (``edge-seg-train --fold K``, one per fold) each saw four fifths of the labelled frames;
averaged, they outline better than any one of them, but shipping five networks costs five times the
compute. The student is one network of the same kind trained on every labelled frame, with targets
that blend the truth and the teachers' averaged answer on exactly the view the student sees:

    target map      = (1 - alpha) * true mask   + alpha * mean of the teachers' probability maps
    target presence = (1 - alpha) * true label  + alpha * mean of the teachers' presence scores

The views are drawn as a ``--views --augment`` run draws them (whole frames, positive crops, nodule-free
crops, the ultrasound augmentation), ``passes`` per frame, once; the teachers predict each view once (a
"bank"), and every epoch the student goes through a new share of the bank, each view mirrored at random
(mirroring the view and its targets together keeps them exact). The teachers' cost is thus paid once,
not every epoch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .augment import AugmentConfig
from .data import DataError
from .sampling import ViewSampler

if TYPE_CHECKING:
    from .data import Split
    from .trainer import TrainConfig

log = logging.getLogger(__name__)


class DistillError(DataError):
    """The teachers cannot be used; the message names the file and the reason."""


def load_teachers(paths: list[str], size: tuple[int, int]) -> list:
    """The teacher models, each with a presence output and the student's input size."""
    from .loading import ModelLoadError, load_keras
    from .models import PRESENCE

    teachers = []
    for p in paths:
        try:
            m = load_keras(p)
        except ModelLoadError as exc:
            raise DistillError(str(exc)) from None
        shape = tuple(m.inputs[0].shape[1:3])
        if shape != tuple(size):
            raise DistillError(f"{p}: its input is {shape[0]}x{shape[1]}, the student's {size[0]}x{size[1]}")
        out = m(np.zeros((1, *size, m.inputs[0].shape[3]), np.float32))
        if not isinstance(out, dict) or PRESENCE not in out:
            raise DistillError(f"{p}: a teacher needs the presence output (trained with --views)")
        teachers.append(m)
    return teachers


def build_bank(
    split: Split, cfg: TrainConfig, teachers: list, passes: int, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``passes`` augmented views of every frame of ``split`` and their blended targets (maps, presence)."""
    from .oof import averaged

    sampler = ViewSampler(split, cfg, AugmentConfig(), 1)
    n = len(split) * passes
    size = split.x.shape[1:3]
    x = np.empty((n, *size, split.x.shape[3]), np.float16)
    y = np.empty((n, *size, 1), np.float16)
    present = np.empty((n, 1), np.float32)
    order = np.concatenate([sampler.rng.permutation(len(split)) for _ in range(passes)])
    chunk = 256
    for start in range(0, n, chunk):
        idx = order[start : start + chunk]
        pairs = [sampler.sample(int(j)) for j in idx]
        xb = np.stack([p[0] for p in pairs]).astype(np.float32)
        hard = np.stack([p[1] for p in pairs]).astype(np.float32)
        maps, scores = averaged(teachers, xb)
        soft_map, soft_presence = maps[..., None], scores[:, None]
        hard_presence = hard.reshape(len(hard), -1).max(axis=1, keepdims=True)
        x[start : start + len(idx)] = xb
        y[start : start + len(idx)] = (1 - alpha) * hard + alpha * soft_map
        present[start : start + len(idx)] = (1 - alpha) * hard_presence + alpha * soft_presence
        log.info("distillation bank: %d of %d views predicted by %d teachers", start + len(idx), n, len(teachers))
    return x, y, present


class BankSampler:
    """Training batches drawn from a bank: each epoch the next ``per_epoch`` views of a shuffled bank, mirrored at
    random. Same interface as :class:`train.sampling.ViewSampler` (``batch``, ``shuffle``)."""

    def __init__(
        self, bank: tuple[np.ndarray, np.ndarray, np.ndarray], per_epoch: int, batch_size: int, seed: int, epoch: int
    ) -> None:
        self.x, self.y, self.presence = bank
        self.per_epoch, self.batch_size = per_epoch, batch_size
        self.rng = np.random.default_rng([seed, epoch, 1])
        self.seed, self.epoch = seed, epoch
        self.order = self._order()

    def _order(self) -> np.ndarray:
        """This epoch's share of the bank: positions ``epoch * per_epoch ...`` of a sequence of permutations of
        the bank (a new one per pass through it), so every view is used before any is used again."""
        n = len(self.x)
        k = self.epoch * self.per_epoch + np.arange(self.per_epoch)
        cycles = {int(c): np.random.default_rng([self.seed, int(c)]).permutation(n) for c in np.unique(k // n)}
        return np.array([cycles[int(c)][int(p)] for c, p in zip(k // n, k % n, strict=True)])

    def shuffle(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def batch(self, i: int):
        from .models import PRESENCE, PROBABILITY

        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.x[idx].astype(np.float32)
        y = self.y[idx].astype(np.float32)
        flip = self.rng.random(len(idx)) < 0.5
        x[flip] = x[flip, :, ::-1]
        y[flip] = y[flip, :, ::-1]
        return x, {PROBABILITY: y, PRESENCE: self.presence[idx]}
