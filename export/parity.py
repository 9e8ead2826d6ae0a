"""Parity: the exported ONNX model must agree with the Keras model it came from, on real scans.

Both see the same tensors from ``edge_runtime.preprocess``; the check compares probabilities
(max absolute difference) and the masks ``edge-seg`` would write (at scan size, after opening) at the
thresholds the seed compares. Any failure fails the export with the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.core.postprocess import gate, mask_from_probability, opening_kernel, probability_at_scan_size
from edge_runtime.core.refine import blend
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.files.scans import read_scan
from edge_runtime.job.discovery import is_candidate_name

log = logging.getLogger(__name__)

MAX_ABS_DIFF = 1e-4


@dataclass
class ParityReport:
    scans: int
    max_abs_diff: float
    mean_abs_diff: float
    differing_pixels: dict[float, int] = field(default_factory=dict)
    #: differing mask pixels that no probability within MAX_ABS_DIFF of the threshold explains (must be 0)
    unexplained_pixels: dict[float, int] = field(default_factory=dict)
    #: with a second stage: the scans whose crop both sides cut alike and compared (must be at least one)
    second_stage_crops: int | None = None

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= MAX_ABS_DIFF
            and not any(self.unexplained_pixels.values())
            and self.second_stage_crops != 0
        )

    def describe(self) -> str:
        px = ", ".join(f"{t:g}: {n}" for t, n in self.differing_pixels.items())
        bad = ", ".join(f"{t:g}: {n}" for t, n in self.unexplained_pixels.items())
        return (
            f"{self.scans} scans, max |p_onnx - p_keras| = {self.max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}), "
            f"mean {self.mean_abs_diff:.2e}; differing mask pixels by threshold: {px}; of them not on the "
            f"threshold (limit 0): {bad}"
            + ("" if self.second_stage_crops is None else f"; second stage compared on {self.second_stage_crops} crops")
        )


def _explained(pk: np.ndarray, t: float, kernel: np.ndarray | None) -> np.ndarray:
    """Where the masks may differ at threshold ``t``: pixels whose probability (Keras, at scan size) is within
    MAX_ABS_DIFF of ``t``, and what the opening can reach from them."""
    near = (np.abs(pk - t) <= MAX_ABS_DIFF).astype(np.uint8)
    reach = np.ones((3, 3), np.uint8) if kernel is None else np.ones((2 * kernel.shape[0] + 1,) * 2, np.uint8)
    return cv2.dilate(near, reach) > 0


def parity_images(folder: Path, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` scans from ``folder`` (or its ``image/`` subfolder), sorted by name."""
    if (folder / "image").is_dir():
        folder = folder / "image"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_candidate_name(p.name, dicom=False))[:limit]
    return [read_scan(p).frames[0] for p in files]


def check_parity(keras_model, onnx_path: Path, images: list[np.ndarray], thresholds, second_stage=None) -> ParityReport:
    """ONNX against Keras on ``images``: probabilities, presence scores (when the model has them) and masks.

    The max/mean absolute differences cover the probability maps and the presence scores together; the
    masks compared are the gated ones each side would write. ``second_stage``: the Keras second stage of a
    two-stage graph (``keras_model`` is then its first stage); each side cuts its crop from its own first
    stage's map, as the runtime does, the masks compared are those of the blended maps (a crop cut
    differently shows there, unexplained), the second stage's maps are compared where both cut the same crop,
    and a check that compared no crop fails.
    """
    seg = Segmenter(onnx_path)
    batch = np.stack([seg.preprocess(im) for im in images])
    p_onnx, q_onnx = seg.run(batch)
    out = keras_model.predict(batch, batch_size=16, verbose=0)
    if isinstance(out, dict):
        p_keras, q_keras = np.asarray(out["probability"])[..., 0], np.asarray(out["presence"])[:, 0]
    else:
        p_keras, q_keras = np.asarray(out)[..., 0], None
    diffs = [np.abs(p_onnx - p_keras).ravel()]
    if q_onnx is not None and q_keras is not None:
        diffs.append(np.abs(q_onnx - q_keras))
    differing, unexplained = dict.fromkeys(thresholds, 0), dict.fromkeys(thresholds, 0)
    morph, pt = seg.info.morphology_size, seg.presence_threshold
    spec = seg.info.refine if second_stage is not None else None
    crops = 0
    for k, (po, pk, im) in enumerate(zip(p_onnx, p_keras, images, strict=True)):
        hw = im.shape[:2]
        kernel = opening_kernel(hw, pk.shape[:2], morph)
        prob_o, prob = probability_at_scan_size(po, hw), probability_at_scan_size(pk, hw)
        if spec is not None:  # each side cuts its own crop, as the runtime would from its own first stage
            cut_o, cut_k = (seg.refine_crop(pr, im, kernel) for pr in (prob_o, prob))
            if cut_o is not None:
                prob_o = blend(prob_o, seg.model.run_refine(cut_o[1][None])[0], cut_o[0], spec.blend)
            if cut_k is not None:
                rk = np.asarray(second_stage.predict(cut_k[1][None], verbose=0))[0, ..., 0]
                if cut_o is not None and cut_o[0] == cut_k[0]:
                    diffs.append(np.abs(seg.model.run_refine(cut_k[1][None])[0] - rk).ravel())
                    crops += 1
                prob = blend(prob, rk, cut_k[0], spec.blend)
        mo = {t: mask_from_probability(prob_o, t, kernel) for t in thresholds}
        mk = {t: mask_from_probability(prob, t, kernel) for t in thresholds}
        # the presence decision may differ only for a score within the tolerance of its threshold
        gate_on_edge = q_keras is not None and pt is not None and abs(float(q_keras[k]) - pt) <= MAX_ABS_DIFF
        if q_onnx is not None and q_keras is not None:
            mo, mk = gate(mo, float(q_onnx[k]), pt), gate(mk, float(q_keras[k]), pt)
        for t in thresholds:
            diff_t = mo[t] != mk[t]
            differing[t] += int(np.count_nonzero(diff_t))
            if not gate_on_edge:
                unexplained[t] += int(np.count_nonzero(diff_t & ~_explained(prob, t, kernel)))
    diff = np.concatenate(diffs)
    return ParityReport(
        len(images), float(diff.max()), float(diff.mean()), differing, unexplained, crops if spec is not None else None
    )


# -- int8 against its fp32 parent ----------------------------------------------------------------------
#: The largest change of mean val Dice (int8 - fp32, against the truth) an int8 export may make.
MAX_DICE_CHANGE = 0.005


@dataclass
class Int8ParityReport:
    """int8 vs fp32 on a labelled folder, masks at scan size at the model's default threshold."""

    scans: int
    threshold: float
    dice_int8_vs_fp32: float  #: mean over scans of Dice(int8 mask, fp32 mask)
    dice_fp32: float  #: mean Dice of the fp32 masks against the truth
    dice_int8: float  #: the same for int8
    max_abs_prob_diff: float  #: max |p_int8 - p_fp32| over all scan-size probabilities
    presence_max_abs_diff: float | None = None  #: max |presence_int8 - presence_fp32|, None without presence
    presence_decisions_changed: int | None = None  #: scans whose presence decision differs
    label: str = "int8"  #: what the derived model is called in the report ("fp16 weights")

    @property
    def dice_change(self) -> float:
        return self.dice_int8 - self.dice_fp32

    @property
    def ok(self) -> bool:
        return abs(self.dice_change) <= MAX_DICE_CHANGE

    def describe(self) -> str:
        k = self.label
        text = (
            f"{self.scans} scans at threshold {self.threshold:g}: mean Dice {k} vs fp32 masks "
            f"{self.dice_int8_vs_fp32:.4f}; Dice against the truth fp32 {self.dice_fp32:.4f}, {k} "
            f"{self.dice_int8:.4f}, change {self.dice_change:+.4f} (limit +-{MAX_DICE_CHANGE}); "
            f"max |p_{k.split()[0]} - p_fp32| {self.max_abs_prob_diff:.3f}"
        )
        if self.presence_max_abs_diff is not None:
            text += (
                f"; presence max |{k.split()[0]} - fp32| {self.presence_max_abs_diff:.4f}, "
                f"{self.presence_decisions_changed} decision(s) changed"
            )
        return text


def _truth(path: Path) -> np.ndarray:
    mask = read_scan(path).frames[0]
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 127


def check_int8_parity(fp32_path: Path, int8_path: Path, labelled: Path, label: str = "int8") -> Int8ParityReport:
    """Run both models on every scan of ``labelled`` (image/ + mask/) through the public ``Segmenter`` API.

    ``int8_path`` is any model derived from ``fp32_path`` (``label`` names it: the fp16-stored weights too).
    """
    from edge_runtime.core.metrics import scan_metrics
    from edge_runtime.errors import SetupError
    from edge_runtime.files.pairs import pair_by_stem as paired

    if not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
        raise SetupError(f"the int8 parity check needs {labelled}/image and {labelled}/mask")
    fp32, int8 = Segmenter(fp32_path), Segmenter(int8_path)
    threshold = fp32.threshold
    if int8.threshold != threshold:
        raise SetupError(f"{int8_path} has default threshold {int8.threshold:g}, its parent {threshold:g}")
    agree, d_fp32, d_int8, max_prob = [], [], [], 0.0
    presence_diffs: list[float] = []
    changed = 0
    for image_path, mask_path in paired(labelled / "image", labelled / "mask"):
        image, truth = read_scan(image_path).frames[0], _truth(mask_path)
        a, b = fp32.segment(image), int8.segment(image)
        ma, mb = a.masks[threshold], b.masks[threshold]
        agree.append(scan_metrics(mb, ma, with_hd95=False).dice)
        d_fp32.append(scan_metrics(ma, truth, with_hd95=False).dice)
        d_int8.append(scan_metrics(mb, truth, with_hd95=False).dice)
        max_prob = max(max_prob, float(np.abs(a.probability - b.probability).max()))
        if a.presence is not None and b.presence is not None:
            presence_diffs.append(abs(a.presence - b.presence))
            changed += a.nodule_present != b.nodule_present
    report = Int8ParityReport(
        scans=len(agree),
        threshold=threshold,
        dice_int8_vs_fp32=float(np.mean(agree)),
        dice_fp32=float(np.mean(d_fp32)),
        dice_int8=float(np.mean(d_int8)),
        max_abs_prob_diff=max_prob,
        presence_max_abs_diff=max(presence_diffs) if presence_diffs else None,
        presence_decisions_changed=changed if presence_diffs else None,
        label=label,
    )
    return report
