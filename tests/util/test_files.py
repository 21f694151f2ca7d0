"""Atomic writes give the finished file the mode a plain open() would (the umask decides)."""

import os
import stat

import pytest

from edgelora.util.files import atomic_dir, atomic_write_text


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                         (0o002, 0o664, 0o775)])
def test_atomic_writes_respect_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "edgelora.toml", "x = 1\n")
        with atomic_dir(tmp_path / "bundle") as staging:
            (staging / "a").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "edgelora.toml").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == dir_mode
    assert os.umask(old) == old  # the helper put the process umask back
