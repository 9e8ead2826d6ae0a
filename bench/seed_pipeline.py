"""The seed's inference pipeline: the reference edge-seg is measured against, in two forms.

TensorFlow/Keras ``load_model``, then ``cv2.imread``, resize to the model's input, min-max normalise,
``model.predict``, threshold, 3x3 elliptical erode + dilate, ``cv2.imwrite`` of the model-size mask.
Nothing is overlapped or written atomically.

- ``--batch-predict``: as the blog post runs it: every scan of the folder read and normalised first,
  then one ``model.predict`` over all of them (Keras' own batching, 32 a step), then the masks.
  ``bench.run`` runs it with the blog's own FCN (``seed-fcn``).
- without it: one ``model.predict`` per scan (a batch of one), the way a per-scan service would call
  it; ``bench.run`` runs it with the architecture of the ONNX model measured, so the two pipelines
  do the same arithmetic.

    python -m bench.seed_pipeline IN OUT --model seed.keras --threshold 0.2 [--batch-predict]
    python -m bench.seed_pipeline --build seed-fcn 128 128 3 seed.keras   # make a Keras model to run

``--build`` makes an untrained model of the given architecture with ``train.models.get_model``: the
compute (and so the time) is the same as a trained one's. Kept deliberately plain: it is the baseline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off the console


def build(arch: str, height: int, width: int, channels: int, out: Path) -> None:
    from train.models import get_model

    model = get_model(arch, (height, width), channels)
    model.save(out)
    print(f"saved {arch} {height}x{width}x{channels} ({model.count_params():,} parameters) to {out}")


def run(in_dir: Path, out_dir: Path, model_path: Path, threshold: float, batch_predict: bool = False) -> None:
    import cv2
    import numpy as np
    import tensorflow as tf  # noqa: F401 - the blog imports TensorFlow; Keras 3 runs on it
    from tensorflow import keras

    model = keras.models.load_model(model_path)
    _, height, width, _ = model.input_shape
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    out_dir.mkdir(parents=True, exist_ok=True)

    def load(name: str) -> np.ndarray:
        img = cv2.imread(str(in_dir / name))
        assert img is not None, f"{name}: not an image"  # the bench stages only images here
        x = cv2.resize(img, (width, height)).astype(np.float32)
        return (x - x.min()) / (x.max() - x.min() + 1e-8)

    def save(name: str, prob: np.ndarray) -> None:
        mask = (prob > threshold).astype(np.uint8) * 255
        opened = cv2.dilate(cv2.erode(mask, kernel), kernel)
        cv2.imwrite(str(out_dir / (Path(name).stem + ".png")), opened)

    names = sorted(os.listdir(in_dir))
    if batch_predict:
        probs = model.predict(np.stack([load(name) for name in names]), verbose=0)[..., 0]
        for name, prob in zip(names, probs, strict=True):
            save(name, prob)
        return
    for name in names:
        save(name, model.predict(np.expand_dims(load(name), axis=0), verbose=0)[0, :, :, 0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", type=Path)
    p.add_argument("out", nargs="?", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--batch-predict", action="store_true", help="one model.predict over the whole folder (the blog)")
    p.add_argument("--build", nargs=5, metavar=("ARCH", "H", "W", "C", "OUT"))
    args = p.parse_args()
    if args.build:
        arch, h, w, c, out = args.build
        build(arch, int(h), int(w), int(c), Path(out))
    elif args.input and args.out and args.model:
        run(args.input, args.out, args.model, args.threshold, args.batch_predict)
    else:
        p.error("give IN OUT --model M, or --build ARCH H W C OUT")


if __name__ == "__main__":
    main()  # needs no other module of bench/: `python bench/seed_pipeline.py` and `-m bench.seed_pipeline` alike
