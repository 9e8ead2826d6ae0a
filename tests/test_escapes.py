"""Exceptions that used to escape and end a run with a traceback (issue 15): each is now one scan's FAIL line."""

from __future__ import annotations

import pytest

from edge_runtime.cli import main
from edge_runtime.core.segmenter import Segmenter
from tests.helpers import synthetic, write_png


def test_a_failing_inference_batch_is_retried_scan_by_scan_and_the_one_that_fails_gets_a_fail_line(
    tmp_path, tiny_model, monkeypatch, capfd
):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        write_png(src / f"s{i}.png", synthetic(i, 100 + 10 * i, 120)[0])
    real = Segmenter.run

    def flaky(self, batch):
        if len(batch) > 1:
            raise RuntimeError("onnxruntime: failed to allocate memory")  # a big batch is too much
        return real(self, batch)

    monkeypatch.setattr(Segmenter, "run", flaky)
    argv = [str(src), "--out", str(out), "--model", str(tiny_model), "--batch-size", "4", "--threads", "1"]
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "trying them one by one" in err and err.count("ok   ") == 4 and "Traceback" not in err

    def always(self, batch):
        raise RuntimeError("onnxruntime: bad input")

    monkeypatch.setattr(Segmenter, "run", always)
    assert main([*argv, "--force"]) == 1
    err = capfd.readouterr().err
    assert "FAIL s0.png: inference failed: RuntimeError: onnxruntime: bad input" in err
    assert "done: 0 segmented, 0 up to date, 4 failed" in err and "Traceback" not in err


@pytest.mark.parametrize("daemon", [True, False])
def test_a_scan_removed_after_it_was_listed_is_no_bad_scan(tmp_path, tiny_model, daemon):
    """The watcher requeues it (and finds it gone); a one-shot, which does not wait, has it failed at once.
    Neither writes it an error record: the next run looks again."""
    from edge_runtime.job.assemble import open_job
    from edge_runtime.job.outcome import Status
    from edge_runtime.job.settings import JobRequest, RunOptions

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "kept.png", synthetic(1)[0])
    job = open_job(src, out, JobRequest(tiny_model), RunOptions(workers=1, batch_size=2), daemon=daemon)
    try:
        outcomes = list(job.scheduler.process(["kept.png", "gone.png"]))
        assert job.ledger.get("gone.png") is None
    finally:
        job.close()
    assert [o.status for o in outcomes] == [Status.OK, Status.CHANGED if daemon else Status.FAILED]
    assert not (out / "gone.png.error.txt").exists()


def test_an_error_the_watch_loop_keeps_meeting_is_logged_in_full_once_not_every_second(
    tmp_path, tiny_model, monkeypatch, caplog
):
    import logging
    import threading
    import time

    from edge_runtime import watch as watch_mod
    from edge_runtime.job.assemble import open_job
    from edge_runtime.job.settings import JobRequest, RunOptions
    from edge_runtime.job.sources import WatchedFolder

    monkeypatch.setattr(watch_mod, "ERROR_WAIT_FIRST", 0.01)
    monkeypatch.setattr(watch_mod, "RETRY_MAX", 0.02)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    job = open_job(src, out, JobRequest(tiny_model), RunOptions(workers=1, batch_size=1), daemon=True)
    folder = WatchedFolder(job.in_dir, lambda r: True, 0.2)
    daemon = watch_mod.Daemon(job, folder, rescan=60.0)
    real, calls = folder.take_ready, [0]

    def failing(limit: int):
        calls[0] += 1
        if calls[0] <= 30:
            raise OSError(5, "Input/output error")
        return real(limit)

    monkeypatch.setattr(folder, "take_ready", failing)
    caplog.set_level(logging.INFO)
    t = threading.Thread(target=daemon.run)
    t.start()
    try:
        end = time.monotonic() + 60
        while calls[0] <= 31 and time.monotonic() < end:
            time.sleep(0.02)
        write_png(src / "x.png", synthetic(1)[0])
        while not (out / "x.png").exists() and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        daemon.request_stop()
        t.join(60)
        job.close()
    assert calls[0] > 30 and (out / "x.png").exists()  # it went on, and works once the error is gone
    full = [r for r in caplog.records if "unexpected error in the watch loop" in r.getMessage()]
    assert len(full) == 1 and full[0].exc_info is not None
