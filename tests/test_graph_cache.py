"""The per-machine cache of onnxruntime's optimised graph (edge_runtime.core.graph_cache)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.core import graph_cache
from edge_runtime.core.model import OnnxModel, default_model_path
from edge_runtime.core.segmenter import Segmenter
from edge_runtime.files.scans import read_scan
from tests.helpers import make_tiny_model, synthetic, write_png


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory) -> Path:
    """A tiny model with a presence output and a second stage: every kind of graph input and output."""
    return make_tiny_model(tmp_path_factory.mktemp("m") / "two.onnx", presence_threshold=0.5, refine_size=32)


def opened(model: Path, cache: Path | None) -> OnnxModel:
    m = OnnxModel(model, threads=1, cache_dir=cache)
    m.wait_for_cache()
    return m


def cached(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.onnx"))


def outputs(m: OnnxModel) -> list[np.ndarray]:
    return m.session.run(None, graph_cache.check_feeds(m.session))


def test_first_open_builds_the_cache_and_the_next_loads_it(two_stage, tmp_path):
    cache = tmp_path / "cache"
    first = opened(two_stage, cache)
    assert first.graph_cache == f"optimised graph being built into {cache}, for the next runs"
    (path,) = cached(cache)
    assert path.name.startswith(graph_cache.cache_key(first.info.sha256) + "-")
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left
    second = opened(two_stage, cache)
    assert second.graph_cache == f"optimised graph loaded from {path}"
    assert cached(cache) == [path]


def test_outputs_are_identical_with_and_without_the_cache(two_stage, tmp_path):
    cache = tmp_path / "cache"
    plain, _build, warm = opened(two_stage, None), opened(two_stage, cache), opened(two_stage, cache)
    assert warm.graph_cache.startswith("optimised graph loaded from")
    for a, b in zip(outputs(plain), outputs(warm), strict=True):
        assert np.array_equal(a, b)
    image, _ = synthetic(3, 180, 220)
    a = Segmenter(plain).segment(image, [0.3, 0.5])
    b = Segmenter(warm).segment(image, [0.3, 0.5])
    assert np.array_equal(a.probability, b.probability) and a.presence == b.presence
    assert all(np.array_equal(a.masks[t], b.masks[t]) for t in (0.3, 0.5))


def test_the_bundled_model_gives_the_same_masks_from_its_cached_graph(tmp_path, ddti):
    cache = tmp_path / "cache"
    plain = Segmenter(default_model_path(), threads=1)
    opened(default_model_path(), cache)
    warm = Segmenter(default_model_path(), threads=1, cache_dir=cache)
    assert warm.model.graph_cache.startswith("optimised graph loaded from")
    for scan in sorted((ddti / "test" / "image").iterdir())[:3]:
        image = read_scan(scan).frames[0]
        a, b = plain.segment(image), warm.segment(image)
        assert np.array_equal(a.probability, b.probability) and a.presence == b.presence
        assert np.array_equal(a.masks[plain.threshold], b.masks[warm.threshold])


@pytest.mark.parametrize("change", ["model", "onnxruntime", "cpu"])
def test_a_changed_key_builds_a_new_graph(change, two_stage, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    model = two_stage
    opened(model, cache)
    (old,) = cached(cache)
    if change == "model":
        model = make_tiny_model(tmp_path / "other.onnx", presence_threshold=0.5, refine_size=24)
    elif change == "onnxruntime":
        monkeypatch.setattr(graph_cache, "ort_version", lambda: "9.9.9")
    else:
        monkeypatch.setattr(graph_cache, "cpu_features", lambda: "x86_64 sse2")
    again = opened(model, cache)
    assert again.graph_cache.startswith("optimised graph being built")
    new = [p for p in cached(cache) if p != old]
    assert len(new) == 1 and opened(model, cache).graph_cache == f"optimised graph loaded from {new[0]}"


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "not onnx under a matching name"])
def test_a_corrupt_graph_is_ignored_removed_and_rebuilt(damage, two_stage, tmp_path, caplog):
    cache = tmp_path / "cache"
    opened(two_stage, cache)
    (path,) = cached(cache)
    data = bytearray(path.read_bytes())
    if damage == "flipped bytes":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # right CRC, wrong content: onnxruntime itself refuses it
        junk = b"not an onnx graph" * 10
        path.unlink()
        path = path.with_name(path.name.rsplit("-", 1)[0] + f"-{graph_cache.zlib.crc32(junk):08x}.onnx")
        path.write_bytes(junk)
    with caplog.at_level(logging.WARNING):
        m = opened(two_stage, cache)
    assert f"graph cache: {path} is corrupt" in caplog.text and "removed and built again" in caplog.text
    assert m.graph_cache.startswith("optimised graph being built")
    (rebuilt,) = cached(cache)
    assert rebuilt.name.endswith(f"-{graph_cache.file_crc(rebuilt):08x}.onnx")  # whole again
    for a, b in zip(outputs(opened(two_stage, None)), outputs(opened(two_stage, cache)), strict=True):
        assert np.array_equal(a, b)


def test_a_graph_that_computes_otherwise_is_not_cached(two_stage, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    monkeypatch.setattr(graph_cache.np, "array_equal", lambda a, b: False)
    with caplog.at_level(logging.WARNING):
        opened(two_stage, cache)
    assert "computes other outputs; not cached" in caplog.text
    assert list(cache.iterdir()) == []


def unwritable(tmp_path: Path) -> Path:
    """A cache folder that cannot be made, even by root: its parent is a file."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    return blocker / "edge-seg"


def test_an_unwritable_cache_folder_writes_nothing_and_the_run_works(tiny_model, tmp_path, caplog):
    scans, out, cache = tmp_path / "in", tmp_path / "out", unwritable(tmp_path)
    write_png(scans / "a.png", synthetic(1, 120, 160)[0])
    before = sorted(tmp_path.rglob("*"))
    with caplog.at_level(logging.DEBUG):
        assert main([str(scans), "--out", str(out), "--model", str(tiny_model), "--cache-dir", str(cache), "-v"]) == 0
    assert f"no graph cache: {cache} takes no writes" in caplog.text
    assert (out / "a.png").is_file()
    assert [p for p in sorted(tmp_path.rglob("*")) if not p.is_relative_to(out)] == before


def test_verbose_names_the_graph_and_warm_up_builds_it(tiny_model, tmp_path, caplog):
    scans, cache = tmp_path / "in", tmp_path / "cache"
    write_png(scans / "a.png", synthetic(1, 120, 160)[0])
    with caplog.at_level(logging.INFO):
        assert main(["--warm-up", "--model", str(tiny_model), "--cache-dir", str(cache)]) == 0
    (path,) = cached(cache)
    assert f"optimised graph in {path}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        argv = [str(scans), "--model", str(tiny_model), "--cache-dir", str(cache)]
        assert main([*argv, "--out", str(tmp_path / "o")]) == 0
        assert "optimised graph" not in caplog.text  # named with -v only
        assert main([*argv, "--out", str(tmp_path / "o2"), "-v"]) == 0
    assert f"tiny.onnx: optimised graph loaded from {path}" in caplog.text


def test_warm_up_into_an_unwritable_folder_exits_2(tiny_model, tmp_path, caplog):
    cache = unwritable(tmp_path)
    assert main(["--warm-up", "--model", str(tiny_model), "--cache-dir", str(cache)]) == 2
    assert "could not be built" in caplog.text or "takes no writes" in caplog.text


def test_a_refused_model_builds_nothing(tmp_path):
    from edge_runtime.errors import ModelError
    from tests.helpers import tiny_metadata

    bad = make_tiny_model(tmp_path / "bad.onnx", metadata=tiny_metadata(64, schema=2))  # schema 2 without a refine
    cache = tmp_path / "cache"
    with pytest.raises(ModelError):
        OnnxModel(bad, threads=1, cache_dir=cache)
    assert [t.name for t in threading.enumerate() if t.name == "edge-seg-graph-cache"] == []
    assert list(cache.iterdir()) == []
