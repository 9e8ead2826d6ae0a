"""`edge-seg IN --out OUT --cluster ...`: a real Dask LocalCluster of two worker processes.

The same outputs, byte for byte, as a one-shot run; a worker killed with SIGKILL in the middle of a
batch loses nothing and has nothing recorded twice; a bad scan is named; workers that do not match the
run are refused with one line.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from edge_runtime.cli import main  # noqa: E402
from edge_runtime.job.cluster import parse_address  # noqa: E402
from edge_runtime.job.ledger import Ledger, read_records  # noqa: E402
from edge_runtime.outputs.naming import Names  # noqa: E402
from tests.helpers import synthetic, write_png  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two worker processes (each under a nanny, which restarts a killed one)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield lc.scheduler_address, client


def scans(root: Path, n: int, bad: tuple[str, ...] = ()) -> list[str]:
    rels = [f"{'sub/' if i % 3 == 0 else ''}s{i:03d}.png" for i in range(n)]
    for i, rel in enumerate(rels):
        write_png(root / rel, synthetic(i, 60 + i % 7, 70 + i % 5)[0])
    for rel in bad:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return rels


def files(out: Path, pattern: str = "*.png") -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob(pattern) if ".edge-seg" not in p.parts}


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_cluster_outputs_are_byte_identical_to_one_shot(cluster, tmp_path, tiny_model):
    address, _ = cluster
    rels = scans(tmp_path / "in", 40)
    common = ("--model", tiny_model, "--overlay", "--report")
    assert run(tmp_path / "in", "--out", tmp_path / "one", *common) == 0
    assert run(tmp_path / "in", "--out", tmp_path / "dask", *common, "--cluster", address) == 0
    one, dask = files(tmp_path / "one"), files(tmp_path / "dask")
    assert len(one) == 2 * len(rels)  # masks and overlays
    assert dask == one
    assert sorted(files(tmp_path / "dask", "*.json")) == sorted(files(tmp_path / "one", "*.json"))
    # up to date now: a second cluster run has nothing to do
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "dask").rglob("*.png")}
    assert run(tmp_path / "in", "--out", tmp_path / "dask", *common, "--cluster", address) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "dask").rglob("*.png")} == before
    # a scan touched (same bytes, new mtime): read on a worker, nothing written, recorded as it is now
    os.utime(tmp_path / "in" / rels[1], ns=(1_000_000_000, 1_000_000_000))
    assert run(tmp_path / "in", "--out", tmp_path / "dask", *common, "--cluster", address) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "dask").rglob("*.png")} == before
    assert read_records(tmp_path / "dask")[rels[1]]["mtime_ns"] == 1_000_000_000


def _hold_after_writing(gate: str) -> None:
    """On a worker: each batch writes its outputs, starts one more, says so in ``gate``, waits for ``gate/open``."""
    from edge_runtime.job import processor

    real = processor.Processor.work
    if getattr(real, "_held", False):
        return

    def work(self, batch, known=None):  # type: ignore[no-untyped-def]
        import tempfile

        results = real(self, batch, known)
        # ... and is in the middle of rewriting its first mask: write_atomic's temporary file, half written
        first = self.out_dir / next(r for r in results if isinstance(r, processor.Written)).outcome.outputs[0]
        fd, _ = tempfile.mkstemp(prefix=f".{first.name}.", suffix=".tmp", dir=first.parent)
        os.write(fd, b"\x89PNG half a mask")
        Path(gate, f"written-{os.getpid()}-{time.monotonic_ns()}").touch()
        while not Path(gate, "open").exists():
            time.sleep(0.02)
        return results

    work._held = True  # type: ignore[attr-defined]
    work._real = real  # type: ignore[attr-defined]
    processor.Processor.work = work  # type: ignore[method-assign]


def _release() -> None:
    from edge_runtime.job import processor

    processor.Processor.work = getattr(processor.Processor.work, "_real", processor.Processor.work)  # type: ignore[method-assign]


def test_a_worker_killed_mid_batch_loses_and_repeats_nothing(cluster, tmp_path, tiny_model, monkeypatch):
    address, client = cluster
    rels = scans(tmp_path / "in", 64)
    assert run(tmp_path / "in", "--out", tmp_path / "one", "--model", tiny_model, "--report") == 0
    gate = tmp_path / "gate"
    gate.mkdir()
    pids = client.run(os.getpid)
    client.run(_hold_after_writing, str(gate))
    recorded: list[str] = []
    real_done = Ledger.done

    def done(self, state, outputs):  # type: ignore[no-untyped-def]
        recorded.append(state.rel)
        return real_done(self, state, outputs)

    monkeypatch.setattr(Ledger, "done", done)
    out = tmp_path / "dask"
    codes: list[int] = []
    client_run = threading.Thread(
        target=lambda: codes.append(
            run(tmp_path / "in", "--out", out, "--model", tiny_model, "--report", "--cluster", address)
        )
    )
    client_run.start()
    try:
        deadline = time.monotonic() + 120
        while not list(gate.glob("written-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        held = list(gate.glob("written-*"))
        assert held, "no worker wrote a batch"
        victim = int(held[0].name.split("-")[1])
        assert victim in pids.values()
        assert not recorded  # the batch's outputs are written, and not one recorded yet
        assert list(out.rglob("*.tmp"))
        os.kill(victim, signal.SIGKILL)  # in the middle of its batch: written, not returned, one file half written
    finally:
        (gate / "open").touch()
        client_run.join(timeout=300)
        client.run(_release)
    assert codes == [0]
    assert sorted(recorded) == sorted(rels)  # every scan recorded done exactly once
    assert files(out) == files(tmp_path / "one")  # every mask there, with one-shot's bytes
    with open(out / "run-summary.csv", newline="") as fh:
        rows = [r["path"] for r in csv.DictReader(fh)]
    assert sorted(rows) == sorted(rels)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_a_bad_scan_is_named_as_in_one_shot(cluster, tmp_path, tiny_model, capsys):
    address, _ = cluster
    scans(tmp_path / "in", 12, bad=("sub/broken.png",))
    assert run(tmp_path / "in", "--out", tmp_path / "one", "--model", tiny_model) == 1
    capsys.readouterr()
    assert run(tmp_path / "in", "--out", tmp_path / "dask", "--model", tiny_model, "--cluster", address) == 1
    err = capsys.readouterr().err
    assert "FAIL sub/broken.png" in err
    assert "done: 12 segmented, 0 up to date, 1 failed" in err

    def without_time(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if not line.startswith("time:")]

    error = "sub/broken.png.error.txt"
    assert without_time(tmp_path / "dask" / error) == without_time(tmp_path / "one" / error)
    assert files(tmp_path / "dask") == files(tmp_path / "one")


def _pretend_version(version: str) -> None:
    import edge_runtime.job.cluster_worker as cw

    cw.__version__ = version


def test_workers_of_another_version_are_refused(cluster, tmp_path, tiny_model, capsys):
    address, client = cluster
    scans(tmp_path / "in", 3)
    client.run(_pretend_version, "0.0.1")
    try:
        code = run(tmp_path / "in", "--out", tmp_path / "dask", "--model", tiny_model, "--cluster", address)
    finally:
        from edge_runtime._version import __version__

        client.run(_pretend_version, __version__)
    assert code == 2
    err = capsys.readouterr().err
    assert f"refused: it runs edge-seg 0.0.1, the client {__version__}" in err
    assert not files(tmp_path / "dask")
    assert not list((tmp_path / "dask" / ".edge-seg").glob("cluster-probe-*"))


def test_a_worker_that_does_not_see_out_is_refused(tmp_path, tiny_model):
    from edge_runtime._version import __version__
    from edge_runtime.job.cluster_worker import WorkerBrief, in_listing, refusal
    from edge_runtime.job.settings import JobRequest, RunOptions

    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    write_png(tmp_path / "in" / "a.png", synthetic(0, 40, 40)[0])
    (tmp_path / "out" / "probe").write_text("token")
    brief = WorkerBrief(
        __version__, JobRequest(tiny_model), "sha", "sig", RunOptions(), str(tmp_path / "in"), str(tmp_path / "out"),
        in_listing(tmp_path / "in"), "probe", "token",
    )  # fmt: skip
    assert refusal(brief) is None
    other = refusal(WorkerBrief(**{**brief.__dict__, "probe_token": "another machine's"}))
    assert other is not None and other.startswith(
        f"it does not see the file the client wrote in OUT {tmp_path / 'out'}"
    )
    assert "same path (NFS/SMB)" in other
    lists = refusal(WorkerBrief(**{**brief.__dict__, "in_names": ("b.png",)}))
    assert lists is not None and lists.startswith("it sees other files in IN")
    missing = refusal(WorkerBrief(**{**brief.__dict__, "request": JobRequest(tmp_path / "nope.onnx")}))
    assert missing == f"it has no model file {tmp_path / 'nope.onnx'} (give a --model path every worker reaches)"


def test_cluster_addresses(capsys):
    assert parse_address("sched:8786") == "tcp://sched:8786"
    assert parse_address("local:2") == "local:2"
    with pytest.raises(ValueError, match="local:N needs"):
        parse_address("local:0")
    with pytest.raises(SystemExit):
        main(["--watch", "in", "--out", "out", "--cluster", "local:1"])
    assert "--cluster runs one-shot conversions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["in", "--out", "out", "--cluster", "local:1", "--threads", "2"])
    assert "with --cluster, each worker's are `dask worker --nthreads N`" in capsys.readouterr().err


def test_no_scheduler_is_one_line_and_exit_2(tmp_path, tiny_model, capsys, monkeypatch):
    import socket

    import edge_runtime.job.cluster as cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1.0)  # Dask retries a refused connection until then

    with socket.socket() as s:  # a free port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "a.png", synthetic(0, 40, 40)[0])
    code = run(
        tmp_path / "in", "--out", tmp_path / "out", "--model", tiny_model, "--cluster", f"tcp://127.0.0.1:{port}"
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")


def test_without_dask_cluster_says_what_to_install(tmp_path, tiny_model):
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "a.png", synthetic(0, 40, 40)[0])
    code = f"""
import sys
sys.modules["distributed"] = None  # as in an install without the [cluster] extra
from edge_runtime.cli import main
sys.exit(main([{str(tmp_path / "in")!r}, "--out", {str(tmp_path / "out")!r}, "--model", {str(tiny_model)!r},
               "--cluster", "local:1"]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == 'error: --cluster needs Dask: pip install "edge-seg[cluster]"'


@contextlib.contextmanager
def _one_worker(tmp_path: Path, tiny_model: Path) -> Iterator[tuple[Any, Any, Path]]:
    """A LocalCluster of one worker process (under a nanny) and a DaskExecutor connected to it for a job
    on ``tmp_path/in`` with a copy of the tiny model (``model``, which the test may remove)."""
    import shutil

    from edge_runtime.core.segmenter import Segmenter
    from edge_runtime.job.cluster import connect
    from edge_runtime.job.settings import JobRequest, RunOptions

    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model, model)
    (tmp_path / "out" / ".edge-seg").mkdir(parents=True)
    request = JobRequest(model)
    spec = request.resolve(Segmenter(model, threads=1).info)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", scheduler_port=0
    ) as lc:
        yield lc, connect(lc.scheduler_address, request, spec, RunOptions(), tmp_path / "in", tmp_path / "out"), model


def test_a_worker_that_joins_later_and_does_not_match_gets_no_work(tmp_path, tiny_model, caplog):
    """A worker joining in the middle of a run is checked as the first ones were; one that cannot run it
    (here: the model file is gone when it joins) is named once and never given a batch, and the run goes
    on, on the workers admitted (before: its first task raised and the run stopped)."""
    from edge_runtime.job.processor import Written
    from tests.helpers import wait_for

    rels = scans(tmp_path / "in", 16)
    with _one_worker(tmp_path, tiny_model) as (lc, dask, model):
        try:
            assert dask.workers == 1 and not dask.refused
            model.unlink()  # the first worker has its session; one that joins now finds no model file
            lc.scale(2)
            dask.client.wait_for_workers(2, timeout=60)
            with caplog.at_level(logging.WARNING, logger="edge_runtime.job.cluster"):
                wait_for(lambda: dask.workers >= 1 and dask.refused, "the late worker to be checked")
            [(address, why)] = dask.refused.items()
            assert why == (
                f"Dask worker {address} refused: it has no model file {model} (give a --model path every worker "
                "reaches)"
            )
            assert f"{why}; the run goes on without it" in caplog.text
            assert dask.workers == 1  # its thread is not counted
            results = [t.result() for t in [dask.submit(dask.work, [Names(rel)]) for rel in rels]]
            assert all(isinstance(r, Written) for [r] in results)
            assert sorted(r.outcome.rel for [r] in results) == sorted(rels)
            assert dask.workers == 1 and len(dask.refused) == 1  # said once
        finally:
            dask.close()


def test_parts_on_a_cluster_do_every_scan_once_with_the_one_shot_bytes(cluster, tmp_path, tiny_model):
    """``--num-parts N --part-id K`` with ``--cluster``: each part's client sends only its own scans to the
    workers; the parts together write exactly what one one-shot run writes, each scan in one part's record."""
    address, _ = cluster
    rels = scans(tmp_path / "in", 30)
    assert run(tmp_path / "in", "--out", tmp_path / "one", "--model", tiny_model, "--report") == 0
    listed: list[str] = []
    for k in range(3):
        parts = ("--num-parts", "3", "--part-id", str(k))
        args = ("--model", tiny_model, "--report", *parts, "--cluster", address)
        assert run(tmp_path / "in", "--out", tmp_path / "dask", *args) == 0
        with open(tmp_path / "dask" / f"run-summary.part-{k}-of-3.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(r["status"] == "ok" for r in rows)
        listed += [r["path"] for r in rows]
    assert sorted(listed) == sorted(rels)  # each scan in exactly one part
    assert files(tmp_path / "dask") == files(tmp_path / "one")


def _errors(out: Path) -> dict[str, list[str]]:
    return {
        p.relative_to(out).as_posix(): [ln for ln in p.read_text().splitlines() if not ln.startswith("time:")]
        for p in out.rglob("*.error.txt")
    }


def _add(src: Path, name: str) -> None:
    import cv2

    from tests.test_collisions import tiff

    seed = sum(map(ord, name))
    if name.endswith(".tif"):
        tiff(src / name, [synthetic(seed + k, 120, 140)[0] for k in range(3)])
    else:
        src.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / name), synthetic(seed, 90 + seed % 20, 80)[0])


@pytest.mark.parametrize(
    "steps",
    [
        [["same.png", "same.jpg"]],  # together: the one named like the mask keeps it
        [["cine.tif", "cine_f0002.png"]],  # a scan named like a frame of another
        [["x.jpg"], ["x.png"]],  # x.png comes later and takes OUT/x.png from x.jpg, done before
        [["x.png"], ["x.bmp"]],  # x.bmp comes later: refused, x.png keeps its mask
        [["cine.tif"], ["cine_f0002.png"]],  # takes a frame's name: cine.tif's other frames are removed
        [["cine_f0002.png"], ["cine.tif"]],  # known only once cine.tif is read: refused
    ],
    ids=["together", "frame-together", "mask-named-later", "other-later", "frame-named-later", "cine-later"],
)
def test_output_name_collisions_end_as_in_one_shot(cluster, tmp_path, tiny_model, steps):
    """A Dask worker reserves its scans' output names as one process does (the client sends each batch the
    done records of the scans it may take names from): the same exit codes, masks, error records and
    ledger, so no mask on a cluster is another scan's (before: both scans wrote OUT/x.png, both "ok")."""
    from collections import Counter

    address, _ = cluster
    src = tmp_path / "in"
    for names in steps:
        for name in names:
            _add(src, name)
        one = run(src, "--out", tmp_path / "one", "--model", tiny_model, "--overlay")
        dask = run(src, "--out", tmp_path / "dask", "--model", tiny_model, "--overlay", "--cluster", address)
        assert dask == one
        assert files(tmp_path / "dask") == files(tmp_path / "one")
        assert _errors(tmp_path / "dask") == _errors(tmp_path / "one")
        records = read_records(tmp_path / "dask")
        assert {r: rec["event"] for r, rec in records.items()} == {
            r: rec["event"] for r, rec in read_records(tmp_path / "one").items()
        }
        owned = Counter(o for rec in records.values() if rec["event"] == "done" for o in rec["outputs"])
        assert max(owned.values()) == 1
    assert one == 1  # each case ends with one scan refused


def test_a_run_whose_workers_are_all_gone_or_refused_stops_with_one_line(tmp_path, tiny_model, monkeypatch):
    """The only admitted worker dies and the one its nanny starts again cannot run the job (the model file
    is gone): the tasks would wait forever; after WORKER_TIMEOUT the run stops with a SetupError naming
    the refusal (exit 2; the scans not recorded are done by the next run)."""
    import edge_runtime.job.cluster as cluster_mod
    from edge_runtime.errors import SetupError
    from tests.helpers import wait_for

    monkeypatch.setattr(cluster_mod, "WORKER_TIMEOUT", 3.0)
    rels = scans(tmp_path / "in", 2)
    with _one_worker(tmp_path, tiny_model) as (lc, dask, model):
        try:
            model.unlink()
            [pid] = dask.client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)  # its nanny starts another, which finds no model file
            wait_for(lambda: dask.workers and dask.refused, "the new worker to be refused")
            task = dask.submit(dask.work, [Names(rels[0])])
            with pytest.raises(SetupError) as err:
                task.result()
            assert str(err.value).startswith(
                f"no Dask worker that can run this job has been at {lc.scheduler_address} for 3 s; 1 refused, e.g. "
                "Dask worker "
            )
            assert f"refused: it has no model file {model}" in str(err.value)
            hint = f"; start one with `dask worker {lc.scheduler_address}` and run again to finish"
            assert str(err.value).endswith(hint)
        finally:
            dask.close()
