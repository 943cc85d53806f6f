"""Atomic writes leave complete files with the permissions a plain write would give them."""

from __future__ import annotations

import os
import stat

import pytest

from editdecay.util.io import atomic_dir, atomic_write_json, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)], ids=["022", "077", "002"])
def test_atomic_files_and_folders_follow_the_umask_not_the_temp_files_private_mode(tmp_path, umask, mask,
                                                                                   file_mode, dir_mode):
    umask(mask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_text(tmp_path / "a.json", "again\n")  # replacing keeps the same rule
    with atomic_dir(tmp_path / "folder") as tmp:
        atomic_write_text(tmp / "inside.txt", "x")
    open(tmp_path / "plain.txt", "w").close()  # what a plain open gives, for comparison
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "folder" / "inside.txt").stat().st_mode) == file_mode
    assert (tmp_path / "a.json").read_text() == "again\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
