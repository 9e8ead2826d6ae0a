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
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.console import HelpFormatter, threshold_arg

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


def _int8_inputs_problem(calibration: Path | None, labelled: Path | None, count: int) -> str | None:
    """Why the int8 step could not run with these folders (None when it can), checked before any work."""
    from edge_runtime.errors import SetupError

    from .quantize import calibration_files

    if calibration is None:
        return "int8 needs training scans to calibrate on: pass --calibration DIR (the record names none)"
    if labelled is None or not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
        return f"the int8 parity check needs a labelled folder (image/ + mask/): pass --int8-parity DIR ({labelled})"
    try:
        calibration_files(calibration, count)
    except SetupError as exc:
        return str(exc)
    return None


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


def _ensemble_members(first: Path, record: dict | None, more: list[Path]) -> list[tuple[str, dict | None]] | None:
    """Every ensemble member (file, training record beside it), the first included; [] without --ensemble;
    None (after saying why) when a member file is missing."""
    if not more:
        return []
    members: list[tuple[str, dict | None]] = [(str(first), record)]
    for path in more:
        if not path.is_file():
            log.error("%s: no such model file (--ensemble)", path)
            return None
        rec_path = path.with_name("training.json")
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else None
        if rec is None:
            log.warning("no training record at %s: the metadata will say nothing of that member", rec_path)
        members.append((str(path), rec))
    return members


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.from_onnx is not None:
        if args.precision != "int8" or args.keras_model is not None:
            log.error("--from-onnx quantizes an fp32 ONNX file: give --precision int8 and no Keras model")
            return 2
        if not args.from_onnx.is_file():
            log.error("%s: no such model file", args.from_onnx)
            return 2
        return quantize_checked(
            args.from_onnx,
            args.out,
            args.calibration,
            args.int8_parity,
            args.calibration_count,
            args.pre_process,
        )
    if args.keras_model is None:
        log.error("give a model.keras to export (or --from-onnx FILE with --precision int8)")
        return 2
    try:
        import onnx
        import tf2onnx  # noqa: F401
    except ImportError:
        log.error("export needs TensorFlow, tf2onnx and onnx: pip install 'edge-seg[train]'")
        return 2
    from edge_runtime.core.metadata import COMPARE_THRESHOLDS
    from edge_runtime.errors import ModelError, ScanError, SetupError
    from edge_runtime.files.durable import write_atomic

    from .choose import choose_presence_on, choose_threshold_on
    from .convert import (
        attach_metadata,
        build_metadata,
        has_presence,
        load_keras,
        to_onnx,
        with_ensemble,
        with_flip_tta,
        with_refine,
    )
    from .parity import check_parity, parity_images

    if not args.keras_model.is_file():
        log.error("%s: no such model file", args.keras_model)
        return 2
    record_path = args.record or args.keras_model.with_name("training.json")
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is None:
        log.warning("no training record at %s: the metadata will carry no training facts", record_path)
    threshold = args.threshold or (record or {}).get("threshold") or 0.5
    cfg = (record or {}).get("config", {})
    name = args.name or cfg.get("name") or args.keras_model.stem
    version = args.model_version or cfg.get("version") or "0.0.0"
    parity_dir = args.parity_scans or (Path(cfg["val_dir"]) if cfg.get("val_dir") else None)
    if parity_dir is None or not parity_dir.is_dir():
        log.error("parity check needs real scans: pass --parity-scans DIR (looked for %s)", parity_dir)
        return 2

    fp32_out = args.out
    labelled = args.int8_parity or (Path(cfg["val_dir"]) if cfg.get("val_dir") else None)
    calibration = args.calibration or (Path(cfg["train_dir"]) if cfg.get("train_dir") else None)
    if args.precision == "int8" and args.weights != "fp32":
        log.error(f"--weights {args.weights} and --precision int8 are two ways to shrink the file: give one")
        return 2
    if args.weights != "fp32":  # the fp32 parent is written and checked first, then stored smaller into --out
        fp32_out = args.fp32_out or args.out.with_name(f"{args.out.stem}.fp32.onnx")
        if labelled is None or not (labelled / "image").is_dir() or not (labelled / "mask").is_dir():
            log.error(
                f"--weights {args.weights} is checked on a labelled folder (image/ + mask/): pass --int8-parity DIR"
            )
            return 2
    if args.precision == "int8":  # the fp32 parent is written and checked first, then quantized into --out
        fp32_out = args.fp32_out or args.out.with_name(f"{args.out.stem}.fp32.onnx")
        problem = _int8_inputs_problem(calibration, labelled, args.calibration_count)
        if problem:  # before the conversion, not after it
            log.error("%s", problem)
            return 2

    members = _ensemble_members(args.keras_model, record, args.ensemble)
    if members is None:
        return 2
    refine: tuple[str, dict | None, float] | None = None  # (file, record, box threshold) once stage 1 is chosen
    if args.refine is not None and not args.refine.is_file():
        log.error("%s: no such model file (--refine)", args.refine)
        return 2
    if args.refine is not None and args.precision == "int8":
        log.error("--refine and --precision int8: a two-stage graph is not quantized (use --weights int8 or fp16)")
        return 2
    presence_threshold: float | None = None  # None: the record's (chosen again below for --tta / --ensemble)
    chosen: dict | None = None  # what the export chose again, for the metadata

    def metadata(threshold: float) -> dict:
        meta = build_metadata(
            graph, record, name, version, threshold, args.opset, args.tta, presence_threshold, chosen, members, refine
        )
        meta["precision"] = "fp32"
        return meta

    t0 = time.time()
    model = load_keras(args.keras_model)
    if args.ensemble:
        try:
            model = with_ensemble([model, *(load_keras(m) for m in args.ensemble)])
        except ValueError as exc:
            log.error("%s", exc)
            return 2
    if args.tta == "flip":
        model = with_flip_tta(model)
    graph = model  # what is converted: the first stage, then (with --refine) both stages
    proto = to_onnx(model, args.opset)
    attach_metadata(proto, metadata(threshold))
    onnx.checker.check_model(proto)
    tmp = fp32_out.with_name(f".{fp32_out.name}.parity")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, tmp)
    try:
        reason = " ".join(([f"--tta {args.tta}"] if args.tta != "none" else []) + (["--ensemble"] if members else []))
        if reason and args.threshold is None:
            # The record's thresholds were chosen for the plain model: choose again, on the same validation
            # folder, with the graph as exported and the runtime's own scoring (export/choose.py).
            val_dir = Path(cfg["val_dir"]) if cfg.get("val_dir") else parity_dir
            if has_presence(model):
                presence_threshold, _ = choose_presence_on(tmp, val_dir)
                attach_metadata(proto, metadata(threshold))
                onnx.save(proto, tmp)
            threshold = choose_threshold_on(tmp, val_dir)
            chosen = {"folder": str(val_dir), "reason": reason, "threshold": threshold}
            if presence_threshold is not None:
                chosen["presence_threshold"] = presence_threshold
            attach_metadata(proto, metadata(threshold))
            onnx.save(proto, tmp)
        second = None
        if args.refine is not None:
            second = load_keras(args.refine)
            try:
                graph = with_refine(model, second)
            except ValueError as exc:
                log.error("%s", exc)
                return 2
            rec_path = args.refine.with_name("training.json")
            refine = (str(args.refine), json.loads(rec_path.read_text()) if rec_path.is_file() else None, threshold)
            proto = to_onnx(graph, args.opset)
            attach_metadata(proto, metadata(threshold))
            onnx.save(proto, tmp)
            if args.threshold is None:  # the box comes from the first stage's threshold; the masks from the blend's
                val_dir = Path(cfg["val_dir"]) if cfg.get("val_dir") else parity_dir
                first_threshold, threshold = threshold, choose_threshold_on(tmp, val_dir)
                chosen = {
                    **(chosen or {"folder": str(val_dir)}),
                    "reason": " ".join(filter(None, [(chosen or {}).get("reason"), "--refine"])),
                    "threshold": threshold,
                    "box_threshold": first_threshold,
                }
                attach_metadata(proto, metadata(threshold))
                onnx.save(proto, tmp)
        images = parity_images(parity_dir, args.parity_count)
        thresholds = sorted({*COMPARE_THRESHOLDS, float(threshold)})
        report = check_parity(model, tmp, images, thresholds, second)
        if not report.ok:
            log.error("parity check FAILED: %s", report.describe())
            return 1
        log.info("parity ok: %s", report.describe())
        write_atomic(fp32_out, tmp.read_bytes())
    except (ModelError, ScanError, SetupError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        tmp.unlink(missing_ok=True)
    size = fp32_out.stat().st_size
    log.info("wrote %s (%.2f MB) in %.1f s; threshold %g", fp32_out, size / 1e6, time.time() - t0, threshold)
    if args.precision == "int8":
        return quantize_checked(fp32_out, args.out, calibration, labelled, args.calibration_count, args.pre_process)
    if args.weights != "fp32" and labelled is not None:
        return store_weights_checked(fp32_out, args.out, labelled, args.weights)
    log.info("use it:  edge-seg IN --out OUT --model %s", fp32_out)
    return 0


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
