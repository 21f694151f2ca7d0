"""The background tensor writer keeps order and surfaces write errors in the caller."""

from __future__ import annotations

import pytest

from edgelora.gguf.streaming import BackgroundTensorWriter, write_tensor_bytes


class _Writer:
    def __init__(self, fail_at=None):
        self.written, self.fail_at = [], fail_at

    def write_tensor_data(self, arr):
        if len(self.written) == self.fail_at:
            raise OSError("disk full")
        self.written.append(arr)


def test_writes_in_order():
    w = _Writer()
    out = BackgroundTensorWriter(w.write_tensor_data)
    for i in range(50):
        out.write(i)
    out.finish()
    assert w.written == list(range(50))
    out.stop()  # idempotent


def test_write_error_reaches_the_caller():
    out = BackgroundTensorWriter(_Writer(fail_at=3).write_tensor_data)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            out.write(i)
        out.finish()
    out.stop()
    assert not out._thread.is_alive()


def _tiny_gguf(path, arrays, write):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for name, arr in arrays.items():
        w.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for arr in arrays.values():
        write(w, arr)
    w.close()
    return path.read_bytes()


def test_direct_write_is_byte_identical_to_gguf_py(tmp_path):
    """Odd sizes, so the alignment padding between tensors is exercised."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float16), "b": rng.standard_normal(7).astype(np.float32),
              "c": rng.standard_normal((33, 9)).astype(np.float16)}
    ours = _tiny_gguf(tmp_path / "ours.gguf", arrays, write_tensor_bytes)
    theirs = _tiny_gguf(tmp_path / "theirs.gguf", arrays, gguf.GGUFWriter.write_tensor_data)
    assert ours == theirs
    read = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(tmp_path / "ours.gguf")).tensors}
    assert all(np.array_equal(read[k].reshape(v.shape), v) for k, v in arrays.items())


def test_direct_write_refuses_a_size_other_than_declared(tmp_path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    w.add_tensor_info("a", (4,), np.dtype(np.float32), 16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    with pytest.raises(ValueError, match="declared"):
        write_tensor_bytes(w, np.zeros(5, dtype=np.float32))
    w.close()
