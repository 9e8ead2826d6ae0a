"""Labelled data: images and their true masks, paired by file stem (``image/12.png`` with ``mask/12.bmp``).

The one pairing rule, for ``edge-seg-eval`` and for training: every image needs exactly one mask of the
same stem and every mask an image; anything unpaired, or two files of one stem, is refused with the
names. Pairs come in natural order (``2`` before ``10``).
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_runtime.errors import SetupError
from edge_runtime.files.formats import IMAGE_SUFFIXES

SHOWN = 10  #: unpaired names listed in the message


class PairingError(SetupError):
    """The folders do not pair up; the message names the files."""


def natural_key(stem: str) -> tuple[int, int, str]:
    """Numbers in numeric order, before other names in name order."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def files_by_stem(folder: Path, suffixes: frozenset[str] | tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """The image files directly in ``folder`` (not hidden), by stem; two files of one stem are refused."""
    if not folder.is_dir():
        raise PairingError(f"{folder} is not a folder")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith((".", "~")) or p.name.endswith("~") or os.path.splitext(p.name)[1].lower() not in suffixes:
            continue
        if not p.is_file():
            continue
        if p.stem in found:
            raise PairingError(f"{found[p.stem].name} and {p.name} in {folder} have the same stem: which is meant?")
        found[p.stem] = p
    return found


def pair_by_stem(
    images: Path, masks: Path, suffixes: frozenset[str] | tuple[str, ...] = IMAGE_SUFFIXES
) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by stem, in natural order. Raises :class:`PairingError` naming the unpaired."""
    im, ms = files_by_stem(images, suffixes), files_by_stem(masks, suffixes)
    only_im, only_ms = sorted(set(im) - set(ms), key=natural_key), sorted(set(ms) - set(im), key=natural_key)
    problems = []
    if only_im:
        names = ", ".join(im[s].name for s in only_im[:SHOWN])
        problems.append(f"{len(only_im)} image(s) in {images} have no mask in {masks}: {names}")
    if only_ms:
        names = ", ".join(ms[s].name for s in only_ms[:SHOWN])
        problems.append(f"{len(only_ms)} mask(s) in {masks} have no image in {images}: {names}")
    if problems:
        raise PairingError("; ".join(problems))
    if not im:
        raise PairingError(f"no images in {images}")
    return [(im[s], ms[s]) for s in sorted(im, key=natural_key)]
