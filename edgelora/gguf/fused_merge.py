"""One merged weight straight to its 16-bit GGUF bytes, in row chunks that stay in the CPU cache.

The general path (``MergedView.get`` then ``to_output``) runs over the whole tensor four times
in float32: widen the stored bf16 weight, add ``s · B @ A``, narrow to F16, scan for overflow.
For a 2-D weight that is the stored tensor plus at most a plain LoRA delta
(:meth:`edgelora.merge.MergedView.plain_source`) the same arithmetic is done here a few hundred
rows at a time in a small float32 buffer: the stored bytes are read once and the output written
once, and the widen / add / narrow / overflow steps happen in cache. Values are the same as the
general path's (the same widen, the same ``addmm_`` per row, the same round-to-nearest-even).

An architecture's ``transform`` may reorder rows (llama's rotary permutation of q/k);
:func:`row_order` finds that order by running the transform on row numbers, so the chunks read
the base rows in the order they are written. A transform that does anything else (for example
Gemma's norm +1) is left to the general path.
"""

from __future__ import annotations

import math

CHUNK_ELEMENTS = 1 << 20  # float32 work buffer: 4 MiB (1<<16 .. 1<<22 measured: 1<<20 fastest on 2 cores)


class NotRowOrder(Exception):
    """The architecture's transform changes values, not only the order of rows."""


def row_order(arch, gguf_name: str, rows: int, config: dict):
    """The row order ``arch.transform`` gives a (rows, n) weight: None when unchanged, else an
    int64 torch index (output row i = input row order[i]). Raises :class:`NotRowOrder` when
    the transform is not a pure row reordering."""
    import numpy as np
    import torch

    ids = np.arange(rows, dtype=np.float64)
    probe = np.stack([ids, -ids - 1.0], axis=1)  # each row recognisable, both columns checked
    try:
        got = np.asarray(arch.transform(gguf_name, probe, config))
    except Exception as e:  # the transform needs the real shape: not ours to second-guess
        raise NotRowOrder(str(e)) from None
    if got.shape != probe.shape:
        raise NotRowOrder("transform changes the shape")
    order = got[:, 0]
    if not (np.array_equal(got[:, 1], -order - 1.0) and np.array_equal(np.sort(order), ids)):
        raise NotRowOrder("transform changes values")
    if np.array_equal(order, ids):
        return None
    return torch.from_numpy(order.astype(np.int64))


def merged_rows(stored, lora, rows_out: int, order, out, work):
    """``stored`` (rows, cols) tensor in its file dtype, plus ``lora = (A, B, scale)`` or None,
    first ``rows_out`` rows, in ``order`` -> (rows_out, cols) view of the flat 16-bit ``out``.

    ``work``: a flat float32 buffer of at least one chunk. Raises OverflowError when a value
    does not fit float16 (``out`` F16 only)."""
    import torch

    cols = stored.shape[1]
    result = out[: rows_out * cols].view(rows_out, cols)
    a = b = None
    if lora is not None:
        a, b, scale = lora
        b = b[:rows_out] if order is None else b.index_select(0, order)
    step = max(1, min(rows_out, work.numel() // cols))
    check = result.dtype == torch.float16
    for r0 in range(0, rows_out, step):
        r1 = min(rows_out, r0 + step)
        src = stored[r0:r1] if order is None else stored.index_select(0, order[r0:r1])
        dst = result[r0:r1]
        if b is None:
            dst.copy_(src)  # bf16/f16/f32 -> 16-bit rounds as widening to f32 first would
        else:
            acc = work[: (r1 - r0) * cols].view(r1 - r0, cols)
            acc.copy_(src)
            acc.addmm_(b[r0:r1], a, alpha=scale)
            dst.copy_(acc)
        if check:  # |x| >= 65520 rounded to inf; NaN fails both comparisons
            lo, hi = torch.aminmax(dst)
            if not (lo.item() > -math.inf and hi.item() < math.inf):
                raise OverflowError("a weight overflows float16")
    return result
