"""``edge-seg-export``: convert a trained ``model.keras`` to the ONNX file ``edge-seg`` runs.

The model's facts (input size, preprocessing, default threshold, morphology, training data and
validation Dice, tool versions) go into the file's metadata; the export only succeeds once the ONNX
model matches the Keras one on real scans.

With ``--precision int8`` the fp32 model is exported and checked as above (and kept beside the output
as ``<out stem>.fp32.onnx``), then quantized (:mod:`export.quantize`) and checked against it on the
labelled validation folder (:func:`export.parity.check_int8_parity`). ``--from-onnx`` quantizes an
existing fp32 ONNX file instead, without TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.console import HelpFormatter, threshold_arg

from .pipeline import (
    Exported,
    Failed,
    Refused,
    Settings,
    add_second_stage,
    check,
    check_and_write,
    choose_again,
    convert,
)

log = logging.getLogger(__name__)

EPILOG = """example:
  edge-seg-export runs/seed/model.keras --out runs/seed/model.onnx
(reads runs/seed/training.json for the threshold chosen on validation and the training facts,
and checks parity on the validation scans named there)
  edge-seg-export runs/seed/model.keras --out runs/seed/model.onnx --precision int8
(also writes runs/seed/model.fp32.onnx, calibrates on the record's training folder)
  edge-seg-export --from-onnx model.onnx --precision int8 --out model-int8.onnx \\
      --calibration ../shared/data/ddti/train --int8-parity ../shared/data/ddti/val
(no TensorFlow; the folders default to those in model.onnx's training metadata)
  edge-seg-export runs/a/model.keras --ensemble runs/b/model.keras --weights fp16 --out model.onnx
(both models averaged in one graph, thresholds chosen again on validation, weights stored as float16)
  edge-seg-export runs/a/model.keras --ensemble runs/b/model.keras --refine runs/r/model.keras --out model.onnx
(a second stage, trained with edge-seg-train --refine, looks again at a crop around the first stage's mask)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-seg-export", description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    p.add_argument("keras_model", type=Path, nargs="?", help="model.keras written by edge-seg-train")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--record", type=Path, help="training record (default: training.json beside the model)")
    p.add_argument("--name", help="model name for the metadata (default: from the training record)")
    p.add_argument("--model-version", help="model version for the metadata (default: from the training record)")
    p.add_argument("--threshold", type=threshold_arg, help="default threshold (default: the one chosen on validation)")
    p.add_argument(
        "--parity-scans",
        type=Path,
        help="folder of real scans for the parity check (default: the record's validation folder)",
    )
    p.add_argument("--parity-count", type=int, default=32, help="scans used for the parity check")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip: average with the mirrored scan inside the graph (2x inference); the default threshold is then "
        "chosen again on the validation folder unless --threshold is given",
    )
    p.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        default=[],
        metavar="MODEL",
        help="more model.keras files (same input and outputs) averaged with the first inside the graph (one "
        "pass each); both thresholds are then chosen again on the validation folder unless --threshold is given",
    )
    p.add_argument(
        "--refine",
        type=Path,
        metavar="MODEL",
        help="a second-stage model.keras (edge-seg-train --refine) in the same graph: the runtime runs it on a crop "
        "of the scan around the first stage's mask and averages the two maps there; the mask threshold is then "
        "chosen again on the validation folder unless --threshold is given",
    )
    p.add_argument(
        "--refine-blend",
        choices=["mean", "replace"],
        default="mean",
        help="with --refine: inside the crop's box, average the two maps (mean) or take the second stage's alone "
        "(replace: for a second stage trained with --refine-boxes, which must be free to shrink the mask)",
    )
    p.add_argument(
        "--box-threshold",
        type=float,
        metavar="T",
        help="with --refine: the first stage's mask at this threshold gives the crop's box (default: the first "
        "stage's threshold: its record's, chosen again with --ensemble or --tta, or --threshold); give "
        "python -m train.oof_refine's box_threshold with its --threshold when the choices were made out of fold",
    )
    p.add_argument(
        "--weights",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="fp16: store the weights as float16 (half the file); int8: convolution and matrix weights as int8 per "
        "output channel, the rest float16 (about a quarter); the arithmetic stays float32 either way. Checked "
        "against the fp32 export (kept as <out stem>.fp32.onnx) on the validation folder like --precision int8",
    )
    q = p.add_argument_group("int8")
    q.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="precision of the model written")
    q.add_argument("--int8", dest="precision", action="store_const", const="int8", help="same as --precision int8")
    q.add_argument("--from-onnx", type=Path, help="quantize this fp32 ONNX file (no Keras model, no TensorFlow)")
    q.add_argument(
        "--calibration",
        type=Path,
        help="training scans to calibrate on (default: the training folder in the record or the fp32 metadata)",
    )
    q.add_argument("--calibration-count", type=int, default=32, help="calibration scans (every k-th by name)")
    q.add_argument(
        "--pre-process", action="store_true", help="run onnxruntime's quant_pre_process first (no gain measured)"
    )
    q.add_argument(
        "--int8-parity",
        type=Path,
        help="labelled folder (image/ + mask/) for the int8 (or --weights fp16) vs fp32 check (default: the "
        "validation folder)",
    )
    q.add_argument("--fp32-out", type=Path, help="where the fp32 parent goes (default: <out stem>.fp32.onnx)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _training_folder(meta: dict, split: str) -> Path | None:
    """The ``split`` folder named in a model's training metadata, if any."""
    folder = (((meta.get("training") or {}).get("data") or {}).get(split) or {}).get("folder")
    return Path(folder) if folder else None


def quantize_checked(
    fp32_path: Path, out: Path, calibration: Path | None, labelled: Path | None, count: int, pre_process: bool
) -> int:
    """Quantize ``fp32_path`` into ``out`` if the int8 model holds its val Dice; exit status (0, 1 or 2)."""
    from edge_runtime.errors import ModelError, ScanError, SetupError

    from .parity import check_int8_parity
    from .quantize import quantize, read_metadata

    try:
        meta = read_metadata(fp32_path)
        if meta.get("refine") is not None:
            log.error(
                "%s has a second stage: its int8 arithmetic is not supported; --weights int8 stores its weights in "
                "int8 at float32 arithmetic",
                fp32_path,
            )
            return 2
        calibration = calibration or _training_folder(meta, "train")
        labelled = labelled or _training_folder(meta, "val")
        if calibration is None or labelled is None:
            log.error(
                "%s names no %s folder in its metadata: pass %s",
                fp32_path,
                "training" if calibration is None else "validation",
                "--calibration DIR" if calibration is None else "--int8-parity DIR",
            )
            return 2
        tmp = out.with_name(f".{out.name}.int8")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        checked = labelled
        status = _write_derived(
            tmp,
            out,
            "int8 parity",
            lambda: quantize(fp32_path, tmp, calibration, count, pre_process),
            lambda: check_int8_parity(fp32_path, tmp, checked),
        )
        if status:
            return status
    except SetupError as exc:
        log.error("%s", exc)
        return 2
    except (ModelError, ScanError) as exc:
        log.error("%s", exc)
        return 1
    log.info("wrote %s (%.2f MB, int8; fp32 parent %s)", out, out.stat().st_size / 1e6, fp32_path)
    log.info("use it:  edge-seg IN --out OUT --model %s", out)
    return 0


def _write_derived(tmp: Path, out: Path, what: str, make: Callable[[], object], check: Callable[[], Any]) -> int:
    """``make`` a model derived from a checked fp32 one into ``tmp``; ``check`` it (a report with ``ok`` and
    ``describe()``); only then move it to ``out``. 0, or 1 after saying why; ``tmp`` never stays."""
    from edge_runtime.files.durable import write_atomic

    try:
        make()
        report = check()
        if not report.ok:
            log.error("%s check FAILED: %s", what, report.describe())
            return 1
        log.info("%s ok: %s", what, report.describe())
        write_atomic(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``edge-seg-export``: check, convert, choose again, add the second stage, check parity and write, shrink."""
    args = build_parser().parse_args(argv)
    _log_to_console(args.verbose)
    if args.from_onnx is not None:
        return _quantize_onnx(args)
    try:
        settings = check(args)
        t0 = time.time()
        exported = _export_fp32(settings)
    except Refused as exc:
        log.error("%s", exc)
        return 2
    except Failed as exc:
        log.error("%s", exc)
        return 1
    out, seconds = settings.fp32_out, time.time() - t0
    log.info("wrote %s (%.2f MB) in %.1f s; threshold %g", out, out.stat().st_size / 1e6, seconds, exported.threshold)
    return _shrink(settings)


def _export_fp32(s: Settings) -> Exported:
    """The fp32 model through every step into ``s.fp32_out``; the temporary graph never stays."""
    from edge_runtime.errors import ModelError, ScanError, SetupError

    tmp = s.fp32_out.with_name(f".{s.fp32_out.name}.parity")
    try:
        exported = convert(s, tmp)
        try:
            return check_and_write(add_second_stage(choose_again(exported, tmp), tmp), tmp)
        except (ModelError, ScanError, SetupError) as exc:
            raise Failed(str(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _shrink(s: Settings) -> int:
    """After the checked fp32 model: quantize it (--precision int8) or store its weights smaller (--weights)."""
    if s.precision == "int8":
        return quantize_checked(s.fp32_out, s.out, s.calibration, s.labelled, s.calibration_count, s.pre_process)
    if s.weights != "fp32" and s.labelled is not None:
        return store_weights_checked(s.fp32_out, s.out, s.labelled, s.weights)
    log.info("use it:  edge-seg IN --out OUT --model %s", s.fp32_out)
    return 0


def _quantize_onnx(args: argparse.Namespace) -> int:
    """``--from-onnx``: quantize an existing fp32 ONNX file (no TensorFlow)."""
    if args.precision != "int8" or args.keras_model is not None:
        log.error("--from-onnx quantizes an fp32 ONNX file: give --precision int8 and no Keras model")
        return 2
    if not args.from_onnx.is_file():
        log.error("%s: no such model file", args.from_onnx)
        return 2
    return quantize_checked(
        args.from_onnx, args.out, args.calibration, args.int8_parity, args.calibration_count, args.pre_process
    )


def _log_to_console(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def store_weights_checked(fp32_path: Path, out: Path, labelled: Path, kind: str = "fp16") -> int:
    """``fp32_path`` with ``kind`` (fp16 / int8) weights into ``out``, if it keeps the val Dice; exit status."""
    from edge_runtime.errors import ModelError, ScanError, SetupError

    from .parity import check_int8_parity
    from .storage import store_weights_fp16, store_weights_int8

    tmp = out.with_name(f".{out.name}.{kind}")
    store = store_weights_int8 if kind == "int8" else store_weights_fp16
    label = f"{kind} weights"
    try:
        status = _write_derived(
            tmp,
            out,
            label,
            lambda: store(fp32_path, tmp),
            lambda: check_int8_parity(fp32_path, tmp, labelled, label=label),
        )
    except (ModelError, ScanError, SetupError) as exc:
        log.error("%s", exc)
        return 1
    if status:
        return status
    log.info("wrote %s (%.2f MB, %s; fp32 parent %s)", out, out.stat().st_size / 1e6, label, fp32_path)
    log.info("use it:  edge-seg IN --out OUT --model %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
