"""Training losses: ``dice_bce_nodule`` is ``dice_bce`` over the images that hold a nodule, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.train


def _batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = np.zeros((4, 8, 8, 1), np.float32)
    truth[0, 2:5, 2:5] = 1
    truth[2, 1:3, 1:6] = 1
    return truth, rng.uniform(0.01, 0.99, truth.shape).astype(np.float32)


def test_nodule_loss_is_the_mean_of_dice_bce_over_the_nodule_images():
    from train.losses import dice_bce_loss, dice_bce_nodule_loss

    truth, pred = _batch()
    expected = np.mean([float(dice_bce_loss(truth[[i]], pred[[i]])) for i in (0, 2)])
    assert float(dice_bce_nodule_loss(truth, pred)) == pytest.approx(expected, rel=1e-5)
    # what the nodule-free images predict does not count
    other = pred.copy()
    other[[1, 3]] = 0.99
    assert float(dice_bce_nodule_loss(truth, other)) == pytest.approx(expected, rel=1e-5)
    assert float(dice_bce_loss(truth, other)) > float(dice_bce_loss(truth, pred))


def test_nodule_loss_of_a_batch_without_nodules_is_zero():
    from train.losses import dice_bce_nodule_loss

    truth, pred = _batch()
    assert float(dice_bce_nodule_loss(np.zeros_like(truth), pred)) == 0.0
