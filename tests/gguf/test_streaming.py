"""The background tensor writer keeps order and surfaces write errors in the caller."""

from __future__ import annotations

import pytest

from edgelora.gguf.streaming import BackgroundTensorWriter, TensorDataWriter


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
    write(w, arrays)
    w.close()
    return path.read_bytes()


def _arrays():
    import numpy as np

    rng = np.random.default_rng(0)
    # odd sizes, so the alignment padding between tensors is exercised
    return {"a": rng.standard_normal((3, 5)).astype(np.float16), "b": rng.standard_normal(7).astype(np.float32),
            "c": rng.standard_normal((33, 9)).astype(np.float16)}


def _gguf_py(w, arrays):
    for arr in arrays.values():
        w.write_tensor_data(arr)


def test_direct_writes_are_byte_identical_to_gguf_py(tmp_path):
    import gguf
    import numpy as np

    def whole(w, arrays):
        out = TensorDataWriter(w)
        for arr in arrays.values():
            out(arr)

    def in_blocks(w, arrays):  # "c" as row blocks 0:10, 10:11, 11:33
        out = TensorDataWriter(w)
        out(arrays["a"])
        out(arrays["b"])
        c = arrays["c"]
        out(c[:10], first=True, last=False)
        out(c[10:11], first=False, last=False)
        out(c[11:], first=False, last=True)

    theirs = _tiny_gguf(tmp_path / "theirs.gguf", _arrays(), _gguf_py)
    assert _tiny_gguf(tmp_path / "whole.gguf", _arrays(), whole) == theirs
    assert _tiny_gguf(tmp_path / "blocks.gguf", _arrays(), in_blocks) == theirs
    read = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(tmp_path / "blocks.gguf")).tensors}
    assert all(np.array_equal(read[k].reshape(v.shape), v) for k, v in _arrays().items())


def _started_writer(tmp_path, n=4):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    w.add_tensor_info("a", (n,), np.dtype(np.float32), 4 * n)
    w.add_tensor_info("b", (n,), np.dtype(np.float32), 4 * n)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w


@pytest.mark.parametrize("calls, match", [
    ([(5, True, True)], "declared"),  # too big
    ([(3, True, True)], "declared"),  # too small
    ([(2, True, False), (3, False, True)], "declared"),  # blocks overrun
    ([(2, True, False), (1, False, True)], "declared"),  # blocks fall short
    ([(2, False, True)], "no tensor started"),
    ([(2, True, False), (2, True, True)], "left unfinished"),
])
def test_direct_writes_refuse_sizes_other_than_declared(tmp_path, calls, match):
    import numpy as np

    w = _started_writer(tmp_path)
    out = TensorDataWriter(w)
    with pytest.raises(ValueError, match=match):
        for n, first, last in calls:
            out(np.zeros(n, dtype=np.float32), first=first, last=last)
    w.close()
