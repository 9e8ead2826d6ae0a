"""edge-seg benchmark suite (issues 5 and 14): one command, one table. Figures are printed, never asserted.

    python -m bench.run                 # 100 DDTI scans, 3 repeats: e2e, CPU, cold start, stages, bound, RSS
    python bench/run.py                 # the same (see bench/common.py)
    python -m bench.run --model runs/int8/ddti-fcn-int8.onnx   # another model, an int8 one too
    python -m bench.run --sizes         # also installed size of a runtime-only venv vs a TensorFlow one
    python -m bench.run --n 20 --repeats 1 --skip-seed   # quick look while tuning

Scans come from the DDTI splits (test, then val, then train, sorted by name), see bench/common.py.
The model is the bundled one (``--model`` for another); its architecture and input size are read from
its metadata. Two seed pipelines run beside edge-seg: the blog's own FCN (``seed-fcn``) with the blog's
one batch ``model.predict``, and an untrained Keras model of the ONNX model's architecture and size
with one ``predict`` a scan. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python bench/run.py`: run as `python -m bench.run`
    from common import run_as_module  # type: ignore[import-not-found]  # (this file's folder is on sys.path)

    run_as_module("bench.run")

from bench.common import REPO, ddti_root, pick_scans, stage_scans
from bench.report import Run, report

#: Where edge_runtime is imported from: this checkout, or another one given with --runtime (A/B runs).
RUNTIME = REPO
#: The blog's own network and input, for the seed pipeline that runs it as the blog does.
BLOG_ARCH, BLOG_INPUT = "seed-fcn", (128, 128, 3)


# -- the machine -------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import cv2
    import numpy
    import onnxruntime

    import edge_runtime
    from edge_runtime import __version__

    return {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
        "edge-seg": __version__,
        "edge_runtime from": str(Path(edge_runtime.__file__).resolve().parent),
    }


def busy_processes(exclude: set[int]) -> list[str]:
    """Other processes using more than 10% of a core right now (a training job makes figures noisy)."""
    try:
        import psutil
    except ImportError:
        return ["(psutil not installed: other load unknown)"]
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] in exclude:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
            if cpu > 10:
                cmd = " ".join(p.info["cmdline"] or [])[:90]
                busy.append(f"pid {p.info['pid']} at {cpu:.0f}% CPU: {cmd}")
        except psutil.Error:
            pass
    return busy


def machine() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores_available": cores,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        **versions(),
    }


def file_create_ms(folder: Path, n: int = 200) -> float:
    """Median milliseconds to create one new empty file in ``folder`` (a mask write creates one).

    On ext4 without a journal, creating a file scans past the inodes deleted in the last minutes of
    its block group, so a folder where many files were just deleted (a temp folder a test suite
    churns) can cost ten times more here than elsewhere on the same disk. The files stay until the
    bench's folder is removed, so that this probe does not add deletions of its own.
    """
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=folder))
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        os.close(os.open(probe / f"{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def with_priority(nice: int) -> None:
    """Re-run this command in a scheduling group of its own at raised priority, and exit with its status.

    Linux's autogroup scheduler shares the CPU between sessions, not processes: with training jobs
    running in another session, a benchmark gets at most its session's share whatever its nice value.
    Its own session (setsid) with a negative autogroup nice (root only) lets it measure the runtime as
    on an otherwise idle machine. Does nothing when already done or when not possible.
    """
    if os.environ.get("EDGE_SEG_BENCH_PRIORITY") or not Path("/proc/self/autogroup").exists():
        return
    env = {**os.environ, "EDGE_SEG_BENCH_PRIORITY": str(nice)}
    spec = sys.modules["__main__"].__spec__  # the benchmarks run as modules (bench/common.py)
    module = spec.name if spec else "bench.run"
    cmd = [sys.executable, "-m", module, *sys.argv[1:]]
    sys.exit(subprocess.call(cmd, env=env, start_new_session=True))


def take_priority(requested: bool) -> str:
    """``--priority``: re-run in a raised scheduling group (:func:`with_priority`), then set it; what was done."""
    if requested:
        with_priority(-19)
    return apply_priority()


def apply_priority() -> str:
    """In the re-run child: set this session's autogroup nice; returns what was done, for the report."""
    nice = os.environ.get("EDGE_SEG_BENCH_PRIORITY")
    if not nice:
        return "normal (shares the CPU with whatever else runs)"
    try:
        Path("/proc/self/autogroup").write_text(nice)
        os.setpriority(os.PRIO_PROCESS, 0, int(nice))
    except OSError as exc:
        return f"normal (could not raise it: {exc})"
    return f"raised: own session, autogroup nice {nice} (--priority)"


# -- running a pipeline in its own process -------------------------------------------------------------
#: GNU time: the one way found to read a child's own peak RSS (see timed_run)
GNU_TIME = Path("/usr/bin/time")


def timed_run(cmd: list[str], out_dir: Path, log: Path, env: dict[str, str]) -> Run:
    """Run ``cmd``; time it from just before the fork, read mask mtimes, its CPU (wait4) and its own peak RSS.

    The peak RSS is GNU time's (``%M``, the rusage of a child it forked): wait4's own ``ru_maxrss`` of a
    child of this process counts this process's peak too (Linux keeps the high-water mark of the memory a
    process had before its exec, and a forked child starts with this process's), which is hundreds of MB
    here. Without /usr/bin/time that upper bound is all there is, and the report says so.
    """
    rss_file = log.with_suffix(".rss")
    timed = [str(GNU_TIME), "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME.exists() else cmd
    with open(log, "wb") as fh:
        t0 = time.time()
        p = subprocess.Popen(timed, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=out_dir.parent)
        _, status, usage = os.wait4(p.pid, 0)  # the child's rusage (with GNU time's own, about 1 ms): its CPU
        t_exit = time.time()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.stderr.write(log.read_text(errors="replace")[-3000:])
        sys.exit(f"{' '.join(cmd)} exited with {p.returncode}")
    mtimes = [f.stat().st_mtime_ns / 1e9 for f in out_dir.rglob("*.png")]
    if not mtimes:
        sys.exit(f"{' '.join(cmd)} wrote no masks into {out_dir}")
    kib = int(rss_file.read_text().split()[-1]) if rss_file.exists() else usage.ru_maxrss  # KiB on Linux
    return Run(
        wall_s=t_exit - t0,
        first_mask_s=min(mtimes) - t0,
        last_mask_s=max(mtimes) - t0,
        masks=len(mtimes),
        peak_rss_mb=kib / 1024.0,
        returncode=p.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def edge_seg_cmd() -> list[str]:
    script = Path(sys.executable).parent / "edge-seg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edge_runtime"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Byte-code caching as in any normal install (a sandbox may switch it off; pip-installed code has .pyc).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RUNTIME), str(REPO), env.get("PYTHONPATH", "")]))
    return env


def runtime_only(checkout: Path) -> Path:
    """A folder holding only ``checkout``'s ``edge_runtime`` (a symlink), to put first on PYTHONPATH.

    For ``--runtime``: the other checkout's runtime is measured, with this checkout's benchmarks.
    """
    if not (checkout / "edge_runtime" / "__init__.py").is_file():
        sys.exit(f"--runtime {checkout}: no edge_runtime package there")
    tag = hashlib.sha256(str(checkout).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"edge-seg-bench-runtime-{tag}"
    folder.mkdir(exist_ok=True)
    link = folder / "edge_runtime"
    if not link.exists():
        link.symlink_to(checkout / "edge_runtime", target_is_directory=True)
    return folder


# -- installed sizes -----------------------------------------------------------------------------------
def tree_bytes(root: Path) -> int:
    """Disk usage like ``du`` (allocated blocks), without following symlinks."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def env_size(work: Path, name: str, requirements: list[str]) -> dict:
    """A fresh venv with ``requirements`` pip-installed; sizes of its site-packages."""
    venv = work / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    t0 = time.perf_counter()
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *requirements], check=True)
    seconds = time.perf_counter() - t0
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    sizes: dict[str, int] = {}
    for entry in site.iterdir():
        key = entry.name.split("-")[0].split(".")[0].lower()  # numpy, numpy.libs, numpy-2.x.dist-info -> numpy
        sizes[key] = sizes.get(key, 0) + (tree_bytes(entry) if entry.is_dir() else entry.lstat().st_blocks * 512)
    total = sum(sizes.values())
    tooling = sum(sizes.get(k, 0) for k in ("pip", "setuptools", "_distutils_hack", "distutils", "pkg_resources"))
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
    shutil.rmtree(venv, ignore_errors=True)
    return {
        "requirements": requirements,
        "site_packages_mb": total / 1e6,
        "without_pip_mb": (total - tooling) / 1e6,
        "largest_mb": {k: v / 1e6 for k, v in top},
        "install_s": seconds,
    }


# -- main ----------------------------------------------------------------------------------------------
def median_run(runs: list[dict]) -> dict:
    """The run with the median scans/s (the upper middle one for an even count)."""
    return sorted(runs, key=lambda x: x["scans_per_s"])[len(runs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="scans for the end-to-end runs")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median is shown")
    p.add_argument(
        "--rounds", type=int, default=7, help="alternating rounds of the steady state and the bound (median shown)"
    )
    p.add_argument("--model", type=Path, help="ONNX model (default: the bundled one)")
    p.add_argument("--sizes", action="store_true", help="also pip-install both environments and measure them")
    p.add_argument("--skip-seed", action="store_true", help="leave out the TensorFlow pipeline (quick tuning runs)")
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (inputs, outputs, logs)")
    p.add_argument("--work", type=Path, help="where to make the temporary folder (default: the system's temp folder)")
    p.add_argument(
        "--runtime", type=Path, help="import edge_runtime from this folder instead (e.g. an older checkout, for A/B)"
    )
    p.add_argument(
        "--priority",
        action="store_true",
        help="run in a session of its own at raised CPU priority (root; for a machine busy with other jobs)",
    )
    args = p.parse_args()
    if args.runtime:
        global RUNTIME
        RUNTIME = runtime_only(args.runtime.resolve())
        if os.environ.get("EDGE_SEG_BENCH_RUNTIME") != str(RUNTIME):  # start again with it first on PYTHONPATH
            os.environ["EDGE_SEG_BENCH_RUNTIME"] = str(RUNTIME)
            from bench.common import run_as_module

            run_as_module("bench.run", [RUNTIME])
    priority = take_priority(args.priority)

    from bench import inprocess
    from edge_runtime.core.model import OnnxModel, available_cores, default_model_path

    model_path = (args.model or default_model_path()).resolve()
    work = Path(tempfile.mkdtemp(prefix="edge-seg-bench-", dir=args.work))
    # the graph cache (issue 30): absent from an older runtime given with --runtime
    has_cache = "cache_dir" in inspect.signature(OnnxModel).parameters
    startup = inprocess.session_startup(  # before anything else warms the file's pages
        model_path, cache_dir=work / "cache-startup" if has_cache else None
    )
    model = OnnxModel(model_path)  # one run on all the cores: the lowest latency for a single scan
    cli_model = OnnxModel(model_path, threads=1)  # what the edge-seg CLI runs: one thread a run, a run per core
    cores = available_cores()
    meta = model.info.metadata
    training = meta.get("training") or {}  # None for a model exported without a training record
    # the graph's name says how it was built (effl0-unet_fliptta, effl0-unet_ens2); the seed side builds the
    # trained network's own architecture, one pass a scan, which the printed table names
    graph = meta.get("architecture") or training.get("architecture") or "seed-fcn"
    arch = training.get("architecture") or graph
    h, w, c = model.info.height, model.info.width, model.info.channels
    params = meta.get("parameters", training.get("parameters"))
    macs = meta.get("macs_per_scan", training.get("macs_per_scan"))

    print("measuring other load on the machine ...", file=sys.stderr)
    r: dict = {
        "n": args.n,
        "repeats": args.repeats,
        "machine": machine(),
        "priority": priority,
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "busy_start": busy_processes({os.getpid()}),
        "model": {
            "name": model.info.name,
            "version": model.info.version,
            "architecture": arch if arch == graph else f"{graph}: the seed side builds one {arch} pass",
            "input": f"{h}x{w}x{c}",
            "parameters": f"{params:,}" if params else "?",
            "gmac": f"{macs / 1e9:.2f}" if macs else "?",
            "precision": meta.get("precision", "fp32"),
            "second_stage": meta.get("refine") is not None,
            "file_mb": model_path.stat().st_size / 1e6,
            "session_startup_ms": startup,
        },
        "targets": [],
        "gnu_time": GNU_TIME.exists(),
    }
    r["work"] = {"folder": str(work), "create_ms": file_create_ms(work)}
    env = child_env()
    try:
        scans = pick_scans(ddti_root(), args.n)
        if len(scans) < args.n:
            print(f"only {len(scans)} scans found; using all of them", file=sys.stderr)
            r["n"] = args.n = len(scans)
        in_n = stage_scans(scans, work / "in")
        in_1 = stage_scans(scans[:1], work / "in1")
        sizes = sorted({f"{x[1]}x{x[0]}" for x in (_shape(s) for s in scans)})
        r["scan_sizes"] = "W x H: " + ", ".join(sizes)

        def edge_seg(cache: Path | None) -> list[str]:
            return [*edge_seg_cmd(), "--model", str(model_path), *(["--cache-dir", str(cache)] if cache else [])]

        # the graph cache in a folder of the run's own: built by the warm-up pass, then warm
        pipelines = {
            "edge-seg": lambda i, o: [*edge_seg(work / "cache" if has_cache else None), str(i), "--out", str(o)]
        }
        if has_cache:  # each run with an empty cache folder: the first run on a machine
            pipelines["first-use"] = lambda i, o: [*edge_seg(o.parent / f"cache-{o.name}"), str(i), "--out", str(o)]
        if not args.skip_seed:
            seed = [sys.executable, "-m", "bench.seed_pipeline"]
            blog_model, same_model = work / "blog.keras", work / "seed.keras"
            for a, (bh, bw, bc), dest in ((BLOG_ARCH, BLOG_INPUT, blog_model), (arch, (h, w, c), same_model)):
                print(f"building a Keras {a} {bh}x{bw}x{bc} for the seed pipelines ...", file=sys.stderr)
                build = [*seed, "--build", a, str(bh), str(bw), str(bc), str(dest)]
                subprocess.run(build, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
            thr = str(model.info.threshold)
            pipelines = {
                "blog": lambda i, o: (
                    [*seed, str(i), str(o), "--model", str(blog_model), "--threshold", thr, "--batch-predict"]
                ),
                "seed": lambda i, o: [*seed, str(i), str(o), "--model", str(same_model), "--threshold", thr],
                **pipelines,
            }

        count = 0

        def run(name: str, in_dir: Path) -> dict:
            nonlocal count
            count += 1
            out = work / f"out-{count:03d}-{name}"
            res = timed_run(pipelines[name](in_dir, out), out, work / f"log-{count:03d}-{name}.txt", env)
            # The outputs stay until the end: deleting them would make the next runs' file creation
            # dearer on some file systems (see "file creation" in bench/README.md).
            return asdict(res)

        print("warm-up (page cache, byte code, the graph cache) ...", file=sys.stderr)
        for name in pipelines:
            run(name, in_1)
        r["cold"] = {name: [] for name in pipelines}
        r["e2e"] = {name: [] for name in pipelines if name != "first-use"}
        for i in range(args.repeats):  # interleaved, so background load falls on both alike
            print(f"cold start and end to end, round {i + 1}/{args.repeats} ...", file=sys.stderr)
            for name in r["cold"]:
                r["cold"][name].append(run(name, in_1))
            for name in r["e2e"]:
                r["e2e"][name].append(run(name, in_n))

        r["work"]["create_ms_later"] = file_create_ms(work)
        print("stage breakdown, steady state and the inference bound ...", file=sys.stderr)
        staged = sorted(in_n.iterdir())
        r["serial"] = inprocess.serial_stages(staged, cli_model, work)
        r["durability"] = inprocess.durability_costs(work)
        tensors = inprocess.preprocessed(staged, model)
        # Both ways of spending the cores on inference alone; the report divides by the faster. The
        # pipeline and the bound are measured in alternation, so a drift in the machine's speed (a
        # shared host) falls on both alike; each figure is the median round.
        ways = {
            f"{cores} run(s) at once, 1 thread each (as edge-seg)": (cli_model, cores),
            f"1 run at a time, {cores} intra-op thread(s)": (model, 1),
        }
        # An unmeasured pass first: it pays for the worker threads' start and the session's first
        # allocations at this batch size, which the cold-start and end-to-end rows already count.
        inprocess.pipeline_steady(in_n, cli_model, work, repeats=1)
        steady, bound = [], {label: [] for label in ways}
        for i in range(args.rounds):
            print(f"steady state and bound, round {i + 1}/{args.rounds} ...", file=sys.stderr)
            steady.append(inprocess.pipeline_steady(in_n, cli_model, work, repeats=1))
            for label, (m, runs) in ways.items():
                bound[label].append(inprocess.inference_bound(tensors, m, (1, 4, 8), repeats=1, runs=runs))
        r["rounds"] = args.rounds
        r["steady"] = median_run(steady)
        r["steady_rounds"] = [x["scans_per_s"] for x in steady]
        # each round's share of that round's fastest bound figure: the paired view of the same rounds
        r["share_rounds"] = [
            steady[i]["scans_per_s"] / max(x[i][bs]["scans_per_s"] for x in bound.values() for bs in x[i])
            for i in range(args.rounds)
        ]
        r["bound"] = {label: {bs: median_run([x[bs] for x in runs]) for bs in runs[0]} for label, runs in bound.items()}
        del tensors

        if args.sizes:
            print("installing a runtime-only venv and a TensorFlow venv (a few minutes) ...", file=sys.stderr)
            r["sizes"] = {"edge-seg": env_size(work, "runtime", [str(REPO)])}
            r["sizes"]["seed"] = env_size(work, "tensorflow", _seed_requirements())
        r["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        r["busy_end"] = busy_processes({os.getpid()})
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    text = report(r)
    print(text)
    if args.json:
        r["targets"] = [list(t) for t in r["targets"]]
        args.json.write_text(json.dumps(r, indent=1, default=str))


def _shape(path: Path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape


def _seed_requirements() -> list[str]:
    """What the seed's script needs: TensorFlow (CPU) and OpenCV, at the dev environment's versions if known."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for name in ("tensorflow-cpu", "opencv-python-headless"):
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


if __name__ == "__main__":
    main()
