"""The background tensor writer keeps order and surfaces write errors in the caller."""

from __future__ import annotations

import pytest

from edgelora.gguf.streaming import BackgroundTensorWriter


class _Writer:
    def __init__(self, fail_at=None):
        self.written, self.fail_at = [], fail_at

    def write_tensor_data(self, arr):
        if len(self.written) == self.fail_at:
            raise OSError("disk full")
        self.written.append(arr)


def test_writes_in_order():
    w = _Writer()
    out = BackgroundTensorWriter(w)
    for i in range(50):
        out.write(i)
    out.finish()
    assert w.written == list(range(50))
    out.stop()  # idempotent


def test_write_error_reaches_the_caller():
    out = BackgroundTensorWriter(_Writer(fail_at=3))
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            out.write(i)
        out.finish()
    out.stop()
    assert not out._thread.is_alive()
