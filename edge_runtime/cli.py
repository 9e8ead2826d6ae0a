"""``edge-seg``: segment thyroid nodules in ultrasound scans with an ONNX model.

One-shot:  edge-seg IN --out OUT          every scan under IN (subfolders too), then exit
Daemon:    edge-seg --watch IN --out OUT  the same, then follow new scans until stopped
Cluster:   edge-seg IN --out OUT --cluster tcp://SCHEDULER:8786   one-shot, on Dask workers
Demo:      edge-seg --demo [DIR]          synthetic scans, segmented with the bundled model
Warm-up:   edge-seg --warm-up             build the model's optimised graph in the cache folder, then exit

Exit codes: 0 all scans done, 1 some scans failed (the others are written), 2 usage or setup error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime._version import __version__
from edge_runtime.console import (
    HelpFormatter,
    ae_title_arg,
    listen_arg,
    number_arg,
    outputs_doc,
    positive_int_arg,
    results_arg,
    setup_logging,
    spacing_arg,
    target_arg,
    threshold_arg,
)

if TYPE_CHECKING:
    from edge_runtime.job.parts import Part
    from edge_runtime.job.settings import RunSettings

log = logging.getLogger(__name__)

#: The systemd unit file, installed with the package (README: "Run it as a service").
UNIT_FILE = Path(__file__).resolve().parent / "service" / "edge-seg.service"

EPILOG = """examples:
  edge-seg scans/ --out masks/                       masks at the model's default threshold
  edge-seg scan.png --out masks/                     one file: masks/scan.png
  edge-seg scans/ --out masks/ --threshold 0.85 0.9 0.95   one folder per threshold
  edge-seg scans/ --out masks/ --overlay --report     also outlines to look at and findings as JSON
  edge-seg --watch /data/incoming --out /data/masks  run as a daemon
                                                     (systemd unit: {unit})
  edge-seg /nfs/scans --out /nfs/masks --cluster tcp://sched:8786   on a Dask cluster (see README)
  edge-seg --watch in/ --out out/ --dicom-listen 11112 --send-to PACS@10.0.0.5:104
                                                     a DICOM node: scans by C-STORE in, SEG and SR to PACS
  edge-seg --demo                                    try it without any scans of your own

Masks are PNGs at each scan's own size, 0 = background, 255 = nodule, at OUT/<same relative path>.png
(one file given: OUT/<its name>.png, recorded in OUT's ledger under its name, as if its folder were IN).
A scan that cannot be read gets OUT/<relative path>.error.txt with the reason.
Scans: PNG, JPEG, BMP, TIFF, WEBP, GIF, JPEG 2000; DICOM (.dcm, .dicom, or by content) with
pip install "edge-seg[dicom]". TIFF pages and GIF/WEBP frames are frames: OUT/<name>_f0001.png, ...
--overlay: OUT/overlays/<relative path>.png; --report: OUT/reports/<relative path>.json, the review
page OUT/index.html (every scan with its outline and findings, flagged ones first), and for
one-shot runs OUT/run-summary.csv and OUT/run-provenance.json; --dicom-results: OUT/dicom/<relative
path>.seg.dcm and .sr.dcm (and .sc.dcm with seg,sr,sc) for each DICOM scan.
Console: up to 20 scans, a line each; more, a progress bar on a terminal, otherwise a progress line at
every tenth and every minute (-v: a line each). --watch lines start with the time, except under
journald (which adds it).
Every output file and field: {outputs}
"""


def build_parser() -> argparse.ArgumentParser:
    epilog = EPILOG.format(outputs=outputs_doc(), unit=UNIT_FILE)
    p = argparse.ArgumentParser(prog="edge-seg", description=__doc__, epilog=epilog, formatter_class=HelpFormatter)
    _add_scan_options(p)
    _add_watch_options(p)
    _add_dicom_options(p)
    _add_setup_options(p)
    return p


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    """What to segment, where the results go, and how the work is spread."""
    p.add_argument(
        "input",
        nargs="?",
        type=Path,
        help="a folder of scans, or one scan file, to segment once (one-shot mode)",
    )
    p.add_argument("--out", type=Path, help="output folder for masks (must not be inside the input folder)")
    p.add_argument("--watch", type=Path, metavar="IN", help="run as a daemon: process IN, then follow new scans")
    p.add_argument("--model", type=Path, help="ONNX model exported by edge-seg-export (default: the bundled model)")
    p.add_argument(
        "--threshold",
        type=threshold_arg,
        nargs="+",
        metavar="T",
        help="probability threshold(s) P > T; several give one folder each (default: the model's)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="also draw the nodule outline on each scan: OUT/overlays/<relative path>.png",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also write the findings (nodules, areas, probabilities) as OUT/reports/<relative path>.json and "
        "a review page, OUT/index.html, to open in a browser (implies --overlay); "
        "one-shot runs add OUT/run-summary.csv and OUT/run-provenance.json",
    )
    p.add_argument(
        "--pixel-spacing",
        type=spacing_arg,
        metavar="MM",
        help="pixel size in mm, MM or MM_ROW,MM_COL, for scans whose file states none (PNG, JPEG, ...: a folder "
        "from one machine at one depth); gives the nodules' calipers and areas in mm. A DICOM's own ultrasound "
        "regions or PixelSpacing come first",
    )
    p.add_argument("--force", action="store_true", help="redo scans whose masks are already up to date")
    p.add_argument(
        "--num-parts",
        type=positive_int_arg,
        metavar="N",
        help="split the scans into N parts by a stable hash of their path (with --part-id); the N processes "
        "may share one OUT on one machine (the ledger is SQLite in WAL mode: not over NFS/SMB)",
    )
    p.add_argument(
        "--part-id",
        type=int,
        metavar="K",
        help="do only part K (0 to N-1) of --num-parts N; run records become OUT/run-summary.part-K-of-N.csv",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int_arg,
        help="scans per inference run (default 1: a run of 100 scans peaks at about 245 MB, 430 with 4, which "
        "is 1-2%% faster); the last scans of a run go in smaller batches, so that the workers finish together",
    )
    p.add_argument(
        "--threads",
        type=positive_int_arg,
        help="CPU cores to keep busy: N + 1 worker threads each take a batch from file to masks with a "
        "one-thread model run (default: the cores this process may use)",
    )
    p.add_argument(
        "--cluster",
        type=cluster_arg,
        metavar="ADDRESS",
        help="one-shot on a Dask cluster: the scheduler's address (tcp://HOST:8786; start it with `dask scheduler` "
        "and workers with `dask worker`), or local:N for N worker processes on this machine; IN and OUT must be "
        'reached by every worker by the same path; needs pip install "edge-seg[cluster]"',
    )


def _add_watch_options(p: argparse.ArgumentParser) -> None:
    """--watch: when a scan is taken, and how the folder is followed."""
    w = p.add_argument_group("watch mode")
    w.add_argument(
        "--settle",
        type=number_arg(0, 86400, low_ok=True),
        default=2.0,
        metavar="SECONDS",
        help="a scan with no close/rename event is taken once unchanged for this long",
    )
    w.add_argument(
        "--polling",
        type=number_arg(0, 3600),
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="poll the folder (network shares: SMB/NFS give no events) every SECONDS",
    )
    w.add_argument(
        "--rescan",
        type=number_arg(0, 7 * 86400),
        default=60.0,
        metavar="SECONDS",
        help="full rescan interval, to catch anything the events missed",
    )


def _add_dicom_options(p: argparse.ArgumentParser) -> None:
    """The DICOM node: receiving scans, writing DICOM results, sending them to a PACS."""
    d = p.add_argument_group('DICOM node (watch mode; README: "A DICOM node")')
    d.add_argument(
        "--dicom-listen",
        type=listen_arg,
        metavar="[HOST:]PORT",
        help="receive scans by DICOM C-STORE (a storage SCP) into IN/<StudyInstanceUID>/<SOPInstanceUID>.dcm",
    )
    d.add_argument("--ae-title", type=ae_title_arg, default="EDGESEG", help="this node's AE title")
    d.add_argument(
        "--allow-ae",
        type=ae_title_arg,
        nargs="+",
        metavar="AE",
        help="accept associations only from these calling AE titles (None: any)",
    )
    d.add_argument(
        "--max-associations", type=positive_int_arg, default=4, metavar="N", help="concurrent associations accepted"
    )
    d.add_argument(
        "--max-instance-mb", type=positive_int_arg, default=512, metavar="MB", help="largest instance accepted"
    )
    d.add_argument(
        "--min-free-mb",
        type=positive_int_arg,
        default=1024,
        metavar="MB",
        help="refuse new instances (out of resources) when less than this is free on IN's disk",
    )
    d.add_argument(
        "--dicom-results",
        type=results_arg,
        nargs="?",
        const=("seg", "sr"),
        metavar="seg,sr,sc",
        help="for each DICOM scan also write DICOM results: a SEG and a SR (TID 1500), and with sc a Secondary "
        "Capture of the overlay: OUT/dicom/<relative path>.seg.dcm, .sr.dcm, .sc.dcm (alone: seg,sr)",
    )
    d.add_argument(
        "--send-to",
        type=target_arg,
        action="append",
        metavar="AET@HOST:PORT|URL",
        help="send the results to this PACS by C-STORE, or to this DICOMweb service (http(s)://host:port/dicom-web) "
        "by STOW-RS (implies --dicom-results); repeat for several, each gets each result; they wait in an outbox "
        "in OUT/.edge-seg/ and are retried with back-off until the PACS takes them",
    )
    d.add_argument(
        "--send-auth",
        type=Path,
        metavar="FILE",
        help="credentials for the DICOMweb targets, read from FILE: a bearer token, or user:password",
    )
    d.add_argument(
        "--send-retry",
        type=number_arg(0, 600),
        default=5.0,
        metavar="SECONDS",
        help="first retry of a failed send after this long, each further one twice as long (at most 10 minutes)",
    )


def _add_setup_options(p: argparse.ArgumentParser) -> None:
    """The demo, the graph cache, the memory budget and the console."""
    p.add_argument(
        "--demo",
        type=Path,
        nargs="?",
        const=Path("edge-seg-demo"),
        metavar="DIR",
        help="write synthetic ultrasound scans into DIR/scans, segment them into DIR/masks and draw what was "
        "found into DIR/masks/overlays",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="keep onnxruntime's optimised graph of the model here, so that later runs open it several times "
        "faster (default: $XDG_CACHE_HOME/edge-seg, else ~/.cache/edge-seg; nothing is written if it takes no "
        "writes; safe to delete)",
    )
    p.add_argument(
        "--warm-up",
        action="store_true",
        help="only build the optimised graph of the model (--model, or the bundled one) in the cache folder, "
        "then exit: for an installer, so that the first run is as fast as the others",
    )
    p.add_argument(
        "--decode-budget-mb",
        type=number_arg(0, 1e6),
        metavar="MB",
        help="memory one scan's decoded frames may take; a scan whose headers declare more is refused before "
        "it is decoded (default: 1024, or the EDGE_SEG_DECODE_BUDGET_MB environment variable)",
    )
    p.add_argument("--log-file", type=Path, help="also log to this file (rotated at 10 MB, 5 kept)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors, warnings and the summary")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="a line for every scan (also the skipped ones) and debug output"
    )
    p.add_argument("--version", action="version", version=f"edge-seg {__version__}")


def settings_from_args(args: argparse.Namespace, argv: list[str]) -> RunSettings:
    """The typed settings of a run, built once from the parsed command line."""
    from edge_runtime.errors import SetupError
    from edge_runtime.job.settings import (
        DAEMON_BATCH_SIZE,
        FOLDER_BATCH_SIZE,
        JobRequest,
        NodeOptions,
        RunOptions,
        RunSettings,
        WatchOptions,
    )

    daemon = args.watch is not None
    # --report: the findings and the review page, which shows the overlays
    asked = (
        ("overlays", args.overlay or args.report),
        ("dicom", "seg" in (args.dicom_results or ()) or (args.send_to and not args.dicom_results)),
        ("dicom-sc", "sc" in (args.dicom_results or ())),
        ("reports", args.report),
        ("review", args.report),
    )
    outputs = tuple(kind for kind, wanted in asked if wanted)
    job = JobRequest(args.model, tuple(args.threshold) if args.threshold else None, outputs, args.pixel_spacing)
    run = RunOptions(
        workers=args.threads + 1 if args.threads else None,  # None: one per available core, plus one
        # A daemon favours latency (one scan a run, the workers still side by side); a folder, throughput.
        batch_size=args.batch_size or (DAEMON_BATCH_SIZE if daemon else FOLDER_BATCH_SIZE),
        force=args.force,
        cluster=args.cluster,
        part=_part(args.num_parts, args.part_id),
        cache_dir=cache_dir(args.cache_dir),
    )
    watch = WatchOptions(args.settle, args.polling, args.rescan)
    node = NodeOptions(
        listen=args.dicom_listen,
        ae_title=args.ae_title,
        allow_ae=tuple(args.allow_ae or ()),
        max_associations=args.max_associations,
        max_instance_mb=args.max_instance_mb,
        min_free_mb=args.min_free_mb,
        send_to=tuple(dict.fromkeys(args.send_to or ())),
        send_auth=args.send_auth,
        retry=args.send_retry,
    )
    if args.demo is not None:  # the demo writes its scans into DIR/scans, and masks by default into DIR/masks
        in_dir, out_dir = args.demo / "scans", args.out or args.demo / "masks"
    else:
        in_dir, out_dir = args.watch if daemon else args.input, args.out
    scan = None
    if not daemon and args.demo is None and in_dir.is_file():  # single-file mode: the file's folder is IN
        in_dir, scan = in_dir.parent, in_dir.name
    elif daemon and in_dir.is_file():
        once = f"edge-seg {in_dir} --out {out_dir}"
        raise SetupError(f"--watch follows a folder, and {in_dir} is a file; to segment it once: {once}")
    return RunSettings(in_dir, out_dir, job, run, watch, node, tuple(argv), scan)


def cache_dir(given: Path | None) -> Path:
    """``--cache-dir``, or the user's cache folder."""
    from edge_runtime.core.graph_cache import default_cache_dir

    return given if given is not None else default_cache_dir()


def warm_up(model: Path | None, folder: Path) -> int:
    """``--warm-up``: open the model once, so that its optimised graph is in the cache; 2 if it could not be."""
    from edge_runtime.core.graph_cache import cached_graph
    from edge_runtime.core.model import OnnxModel

    opened = OnnxModel(model, threads=1, cache_dir=folder)
    opened.wait_for_cache()
    paths = [cached_graph(sha256, folder) for _, sha256 in opened.files]  # (a second stage's file has its own)
    if None in paths:
        log.error("%s: %s", opened.info.describe(), opened.graph_cache.replace("being built", "could not be built"))
        return 2
    log.info("%s: optimised graph%s in %s", opened.info.describe(), "s" * (len(paths) > 1), ", ".join(map(str, paths)))
    return 0


def _part(num_parts: int | None, part_id: int | None) -> Part | None:
    """``--num-parts N --part-id K`` as a :class:`Part` (both or neither)."""
    from edge_runtime.errors import SetupError
    from edge_runtime.job.parts import Part

    if num_parts is None and part_id is None:
        return None
    if num_parts is None or part_id is None:
        raise SetupError("--num-parts N and --part-id K go together")
    return Part(part_id, num_parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = sum(x is not None for x in (args.input, args.watch, args.demo)) + args.warm_up
    if modes != 1:
        parser.error("give one of: IN (one-shot), --watch IN (daemon), --demo or --warm-up")
    if args.demo is None and not args.warm_up and args.out is None:
        parser.error("--out OUT is required")
    if args.cluster is not None and args.input is None:
        parser.error("--cluster runs one-shot conversions (edge-seg IN --out OUT --cluster ...), not --watch or --demo")
    if args.cluster is not None and args.threads is not None:
        parser.error("--threads is for this machine; with --cluster, each worker's are `dask worker --nthreads N`")
    if (args.dicom_listen or args.send_to) and args.watch is None:
        parser.error("--dicom-listen and --send-to are for the daemon: add --watch IN")
    if args.send_auth is not None and not any(str(t).startswith("http") for t in args.send_to or ()):
        parser.error("--send-auth is for DICOMweb targets: add --send-to https://host:port/dicom-web")
    if args.threshold:
        from edge_runtime.core.thresholds import check_labels

        try:
            check_labels(args.threshold)
        except ValueError as exc:
            parser.error(f"--threshold: {exc}")
    if args.decode_budget_mb is not None:  # read by files.headers in every worker thread (and child process)
        os.environ["EDGE_SEG_DECODE_BUDGET_MB"] = repr(args.decode_budget_mb)
    from edge_runtime.errors import SetupError

    try:
        setup_logging(args.verbose, args.quiet, args.log_file, timestamps=args.watch is not None)
        if args.warm_up:
            return warm_up(args.model, cache_dir(args.cache_dir))
        settings = settings_from_args(args, _argv(argv))
        if args.demo is not None:
            from edge_runtime.demo import run_demo

            return run_demo(settings, args.demo)
        if args.watch is not None:
            from edge_runtime.watch import run_watch

            return run_watch(settings)
        from edge_runtime.oneshot import run_once

        return run_once(settings)
    except SetupError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted; masks already written are complete")
        return 130


def cluster_arg(value: str) -> str:
    """argparse type for ``--cluster``: a Dask scheduler address or ``local:N``."""
    from edge_runtime.job.cluster import parse_address

    try:
        return parse_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _argv(argv: list[str] | None) -> list[str]:
    """The command line as given, for the run's provenance record."""
    return list(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
