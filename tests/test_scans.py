"""files.scans.read_bytes: the whole file, even one that grows while it is read; a clear refusal when too large."""

from __future__ import annotations

import os

import pytest

from edge_runtime.errors import ScanError
from edge_runtime.files import scans as scanio


def test_read_bytes_reads_the_whole_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(bytes(range(256)) * 1000)
    data, st = scanio.read_bytes(path)
    assert data == path.read_bytes() and st.st_size == len(data)


def test_read_bytes_takes_what_was_appended_after_fstat(tmp_path, monkeypatch):
    """A file still being written is longer than fstat said: all of it is read (the caller sees the change)."""
    path = tmp_path / "growing.bin"
    path.write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def stale_fstat(fd):  # as if 4,000 of the bytes were appended just after fstat
        st = real_fstat(fd)
        return os.stat_result((*st[:6], st.st_size - 4000, *st[7:]))

    monkeypatch.setattr(scanio.os, "fstat", stale_fstat)
    data, st = scanio.read_bytes(path)
    assert st.st_size == 1000 and data == b"x" * 5000


def test_read_bytes_refuses_a_file_over_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(b"y" * 2000)
    monkeypatch.setattr(scanio, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ScanError, match="file too large: 2,000 bytes is over the limit of 1,000") as err:
        scanio.read_bytes(path)
    assert err.value.path == str(path)
