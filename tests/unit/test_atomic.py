"""tether.atomic, the one way tether replaces a file: whole or not at all, private unless told otherwise, and no
temporary file left behind when the write fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tether.atomic import atomic_write


def test_a_replace_is_whole_private_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text("old")
    atomic_write(path, "néw")  # a str is written as UTF-8
    assert path.read_bytes() == "néw".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(str(path), b"bytes", durable=False, mode=0o644)
    assert path.read_bytes() == b"bytes" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["doc.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(path, 42)  # type: ignore[arg-type]  # not bytes: fails after the temporary file exists
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["doc.json"]
