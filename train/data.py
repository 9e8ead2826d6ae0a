"""Labelled data: ``image/`` + ``mask/`` folders, paired by file stem, preprocessed by edge_runtime.

The seed paired images and masks by directory-listing order, which silently mis-pairs as soon as one
file is missing or named differently. Here pairs are made by stem (``image/12.png`` with
``mask/12.png`` or ``mask/12.bmp``), and anything unpaired or unreadable stops training with the
names listed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.core.preprocess import preprocess
from edge_runtime.errors import ScanError
from edge_runtime.files.pairs import PairingError, pair_by_stem
from edge_runtime.files.scans import decode_image, read_bytes

log = logging.getLogger(__name__)

LABEL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(Exception):
    """The labelled folder cannot be used; the message names the files and the reason."""


@dataclass
class Split:
    """A labelled folder loaded for training or validation."""

    folder: Path
    names: list[str]
    x: np.ndarray  #: float32 (N, h, w, c): preprocess() of each image
    y: np.ndarray  #: float32 (N, h, w, 1): mask resized to the model size, 0/1
    masks: list[np.ndarray] = field(repr=False)  #: bool masks at each scan's own size
    sizes: list[tuple[int, int]] = field(repr=False)  #: each scan's (height, width)
    fingerprint: str = ""
    images: list[np.ndarray] = field(default_factory=list, repr=False)  #: the decoded scans (for cutting views)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(
            self.folder,
            [self.names[i] for i in idx],
            self.x[idx],
            self.y[idx],
            [self.masks[i] for i in idx],
            [self.sizes[i] for i in idx],
            self.fingerprint,
            [self.images[i] for i in idx] if self.images else [],
        )

    def describe(self) -> dict:
        return {"folder": str(self.folder), "scans": len(self), "fingerprint": self.fingerprint}


def pair_folder(folder: str | Path) -> list[tuple[Path, Path]]:
    """Pairs (image, mask) under ``folder/image`` and ``folder/mask``, matched by file stem, in natural order."""
    folder = Path(folder)
    try:
        return pair_by_stem(folder / "image", folder / "mask", LABEL_SUFFIXES)
    except PairingError as exc:
        raise DataError(f"{folder}: {exc}") from None


def _read(path: Path) -> tuple[np.ndarray, bytes]:
    data, _ = read_bytes(path)
    return decode_image(data, path), data


def model_target(full: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The model-size training target (h, w) float32 0/1 of a scan-size bool mask (area resize, > 0.5)."""
    h, w = size
    return (cv2.resize(full.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)


def load_split(folder: str | Path, size: tuple[int, int], channels: int = 3, resize: str = "area") -> Split:
    """Load, check and preprocess a labelled folder. Masks: pixel value > 127 is nodule."""
    folder = Path(folder)
    pairs = pair_folder(folder)
    h, w = size
    x = np.empty((len(pairs), h, w, channels), np.float32)
    y = np.empty((len(pairs), h, w, 1), np.float32)
    names, masks, sizes, errors, decoded = [], [], [], [], []
    digest = hashlib.sha256()
    for i, (ip, mp) in enumerate(pairs):
        try:
            image, ib = _read(ip)
            mask, mb = _read(mp)
        except ScanError as exc:
            errors.append(str(exc))
            continue
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        if mask.shape[:2] != image.shape[:2]:
            errors.append(
                f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}"
            )
            continue
        full = mask > 127
        x[i] = preprocess(image, size, channels, resize)
        y[i, :, :, 0] = model_target(full, size)
        names.append(ip.stem)
        decoded.append(image)
        masks.append(full)
        sizes.append(image.shape[:2])
        for p, b in ((ip, ib), (mp, mb)):
            digest.update(f"{p.parent.name}/{p.name}\0".encode())
            digest.update(hashlib.sha256(b).digest())
    if errors:
        raise DataError(f"{len(errors)} unreadable file(s) in {folder}:\n  " + "\n  ".join(errors[:20]))
    log.info("loaded %s: %d scans", folder, len(names))
    return Split(folder, names, x, y, masks, sizes, digest.hexdigest(), decoded)


def views_split(split: Split, kinds: tuple[str, ...], channels: int = 3, resize: str = "area") -> Split:
    """The fixed views (:func:`train.views.fixed_views`) of each frame of ``split``, as a split of their own.

    ``kinds``: "neg" (nodule-free, empty masks) and/or "pos" (the nodule at another zoom); names are
    ``<frame>_<kind>``. Used for validation, so every choice made on ``val`` sees views of ``val`` only.
    """
    from .views import fixed_views

    cuts = [
        (f"{name}_{kind}", image, full, box)
        for name, image, full in zip(split.names, split.images, split.masks, strict=True)
        for kind, box in fixed_views(name, full).items()
        if kind in kinds
    ]
    return _cut_split(split, cuts, channels, resize)


def refine_split(split: Split, channels: int = 3, resize: str = "area", boxes: list | None = None) -> Split:
    """Each frame of ``split`` cut to :func:`train.views.refine_box` around its nodule, as a split of its own.

    What a second-stage (``--refine``) network is validated on: the crop the runtime would cut around a
    perfect first-stage mask; with ``boxes`` (``--refine-boxes``: each frame's out-of-fold first-stage box,
    or None), around the mask a first stage really drew, frames without one left out. Names are
    ``<frame>_refine``.
    """
    from .views import nodule_box, refine_box

    around = boxes if boxes is not None else [nodule_box(full) for full in split.masks]
    cuts = [
        (f"{name}_refine", image, full, refine_box(box, full.shape[:2]))
        for name, image, full, box in zip(split.names, split.images, split.masks, around, strict=True)
        if box is not None
    ]
    if not cuts:
        raise DataError(f"{split.folder}: no frame has a nodule, so there is no crop to validate a second stage on")
    return _cut_split(split, cuts, channels, resize)


def _cut_split(
    split: Split, cuts: list[tuple[str, np.ndarray, np.ndarray, tuple[int, int, int, int]]], channels: int, resize: str
) -> Split:
    """A split of crops ``(name, frame's image, frame's mask, box)`` of ``split``'s frames, at its model size."""
    from .views import crop

    size = split.x.shape[1:3]
    names, xs, ys, masks, sizes = [], [], [], [], []
    for name, image, full, box in cuts:
        im, m = crop(image, box), crop(full, box)
        names.append(name)
        xs.append(preprocess(im, size, channels, resize))
        ys.append(model_target(m, size)[:, :, None])
        masks.append(m)
        sizes.append(m.shape[:2])
    x = np.stack(xs) if xs else np.empty((0, *size, channels), np.float32)
    y = np.stack(ys) if ys else np.empty((0, *size, 1), np.float32)
    return Split(split.folder, names, x, y, masks, sizes, split.fingerprint, [])


def concat(*splits: Split) -> Split:
    """Several splits as one (validation frames and their views together)."""
    return Split(
        splits[0].folder,
        [n for s in splits for n in s.names],
        np.concatenate([s.x for s in splits]),
        np.concatenate([s.y for s in splits]),
        [m for s in splits for m in s.masks],
        [hw for s in splits for hw in s.sizes],
        splits[0].fingerprint if len(splits) == 1 else _combined([s.fingerprint for s in splits]),
        [im for s in splits for im in s.images] if all(len(s.images) == len(s) for s in splits) else [],
    )


def _combined(fingerprints: list[str]) -> str:
    return hashlib.sha256("\0".join(fingerprints).encode()).hexdigest()


def split_fraction(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out a random ``fraction`` of a folder for validation when no validation folder is given.

    The files carry no patient ids, so frames of one patient may land on both sides: validation
    figures from such a split are optimistic. Prefer a separate, patient-level validation folder.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))
    n_val = max(1, round(len(split) * fraction))
    log.warning(
        "no validation folder: holding out %d of %d scans at random; frames of one patient may be on both "
        "sides, so validation figures will be optimistic",
        n_val,
        len(split),
    )
    return split.subset(np.sort(idx[n_val:])), split.subset(np.sort(idx[:n_val]))
