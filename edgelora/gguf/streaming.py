"""Write tensor data on a background thread while the next tensor is computed.

Converting is read → widen → add the LoRA delta → narrow → write, one tensor at a time. The
write (numpy ``tofile``) and the compute (torch) both release the GIL, so handing each
finished tensor to a writer thread overlaps them. The hand-off queue holds one tensor, so
at most two finished tensors exist at once: memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import queue
import threading

_DONE = object()


def write_tensor_bytes(gguf_writer, arr) -> None:
    """``gguf_writer.write_tensor_data(arr)`` for a native-endian array on a single-file writer,
    with one plain ``write`` of the array's buffer: numpy's ``tofile`` on a Python file object
    costs ~2.5x the kernel time of a direct write (measured: 2.5 GB in 1.96 s vs 0.74 s)."""
    import sys

    from gguf import GGUFEndian
    from gguf.gguf_writer import WriterState

    w = gguf_writer
    native = GGUFEndian.BIG if sys.byteorder == "big" else GGUFEndian.LITTLE
    if len(w.fout or ()) != 1 or w.endianess != native or not arr.flags.c_contiguous:
        w.write_tensor_data(arr)  # split files, byte-swapping, strided: gguf-py's own path
        return
    if w.state not in (WriterState.TI_DATA, WriterState.WEIGHTS):
        raise ValueError(f"GGUF writer: expected tensor info or weights, got {w.state}")
    fout, infos = w.fout[0], w.tensors[0]
    info = infos.pop(next(iter(infos)))
    if info.nbytes != arr.nbytes:
        raise ValueError(f"GGUF writer: tensor of {arr.nbytes} bytes where {info.nbytes} were declared")
    w.write_padding(fout, fout.tell())
    fout.write(memoryview(arr.reshape(-1)).cast("B"))
    w.write_padding(fout, arr.nbytes)
    w.state = WriterState.WEIGHTS


class BackgroundTensorWriter:
    """``write(arr)`` queues ``arr`` for ``write_fn(arr)`` (e.g. ``partial(write_tensor_bytes,
    gguf_writer)``); ``finish()`` waits for every queued write and re-raises the first write
    error in the caller's thread."""

    def __init__(self, write_fn, depth: int = 1):
        self._write_fn = write_fn
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gguf-tensor-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            arr, on_written = item
            if self._error is None:
                try:
                    self._write_fn(arr)
                except BaseException as e:  # surfaced by write()/finish() in the caller
                    self._error = e
            if on_written is not None:
                on_written()

    def write(self, arr, on_written=None) -> None:
        """Queue ``arr``; ``on_written()`` runs on the writer thread once its bytes are out
        (or skipped after an error): the caller may then reuse ``arr``'s memory."""
        if self._error is not None:
            raise self._error
        self._queue.put((arr, on_written))

    def finish(self) -> None:
        self.stop()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the writer thread after the queued writes (idempotent; also after an error)."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
