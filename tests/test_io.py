"""mimicry.io: the one atomic-write helper (old or new content, never a mix; no temporary file left)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mimicry.io import atomic_path, atomic_write_bytes, atomic_write_text, atomic_writer


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.json"
    atomic_write_text(target, "one\n")
    assert target.read_text(encoding="utf-8") == "one\n"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _siblings(target) == ["x.json"]


def test_an_error_inside_the_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.csv"
    target.write_text("old\n", encoding="utf-8")

    def write_half() -> None:
        with atomic_writer(target, text=True) as fh:
            fh.write("new partial")
            raise RuntimeError("half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_half()
    assert target.read_text(encoding="utf-8") == "old\n"
    assert _siblings(target) == ["data.csv"]


def test_permissions_follow_the_umask_or_the_given_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640  # as open(path, "w") would create it
    atomic_write_bytes(tmp_path / "fixed", b"x", mode=0o644)
    assert stat.S_IMODE((tmp_path / "fixed").stat().st_mode) == 0o644


def test_streaming_and_path_writers(tmp_path: Path) -> None:
    with atomic_writer(tmp_path / "arrays.npz") as fh:
        np.savez(fh, a=np.arange(3))
    with np.load(tmp_path / "arrays.npz", allow_pickle=False) as npz:
        assert npz["a"].tolist() == [0, 1, 2]
    with atomic_path(tmp_path / "named.bin") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name != "named.bin"
        tmp.write_bytes(b"by name")
    assert (tmp_path / "named.bin").read_bytes() == b"by name"
    assert _siblings(tmp_path / "x") == ["arrays.npz", "named.bin"]
