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


class BackgroundTensorWriter:
    """``write(arr)`` queues ``arr`` for ``gguf_writer.write_tensor_data``; ``finish()`` waits
    for every queued write and re-raises the first write error in the caller's thread."""

    def __init__(self, gguf_writer, depth: int = 1):
        self._writer = gguf_writer
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
                    self._writer.write_tensor_data(arr)
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
