"""Quantize an F16/BF16/F32 GGUF with llama.cpp's own quantizer (through llama-cpp-python)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from edgelora.errors import QuantizeError
from edgelora.util.files import atomic_path

# Type name -> llama_cpp constant name; values are read from the module, never hard-coded.
_FTYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K", "Q2_K_S": "LLAMA_FTYPE_MOSTLY_Q2_K_S",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S", "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "IQ1_S": "LLAMA_FTYPE_MOSTLY_IQ1_S", "IQ1_M": "LLAMA_FTYPE_MOSTLY_IQ1_M",
    "IQ2_XXS": "LLAMA_FTYPE_MOSTLY_IQ2_XXS", "IQ2_XS": "LLAMA_FTYPE_MOSTLY_IQ2_XS",
    "IQ2_S": "LLAMA_FTYPE_MOSTLY_IQ2_S", "IQ2_M": "LLAMA_FTYPE_MOSTLY_IQ2_M",
    "IQ3_XXS": "LLAMA_FTYPE_MOSTLY_IQ3_XXS", "IQ3_XS": "LLAMA_FTYPE_MOSTLY_IQ3_XS",
    "IQ3_S": "LLAMA_FTYPE_MOSTLY_IQ3_S", "IQ3_M": "LLAMA_FTYPE_MOSTLY_IQ3_M",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL", "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
}
# Very low-bit types abort in llama.cpp without an importance matrix (edgelora.quantize.imatrix makes one).
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})


def supported_types(with_imatrix: bool = False) -> list[str]:
    """Type names :func:`quantize` accepts; those needing an importance matrix only ``with_imatrix``."""
    return [t for t in _FTYPES if with_imatrix or t not in NEEDS_IMATRIX]


def ftype_for(qtype: str, *, with_imatrix: bool = False) -> int:
    name = qtype.upper()
    if name not in _FTYPES:
        raise QuantizeError(f"unknown quantization type {qtype!r}; known: {', '.join(supported_types(True))}")
    if name in NEEDS_IMATRIX and not with_imatrix:
        raise QuantizeError(f"quantization type {qtype!r} needs an importance matrix (export.imatrix); "
                            f"without one choose one of {', '.join(supported_types())}")
    import llama_cpp

    value = getattr(llama_cpp, _FTYPES[name], None)
    if value is None:
        raise QuantizeError(f"quantization type {qtype!r} is not provided by this llama-cpp-python build")
    return int(value)


@contextlib.contextmanager
def _capture_stderr():
    """Collect llama.cpp's log so a failure can quote it; silence it otherwise. Errors arrive
    through llama-cpp-python's log callback (Python's ``sys.stderr``), other output on fd 2."""
    import io
    import logging

    from llama_cpp import _logger

    # After any Llama(verbose=False) the callback drops llama.cpp errors (their level maps to DEBUG).
    level = _logger.logger.level
    _logger.logger.setLevel(logging.DEBUG)
    log = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    py_stderr, sys.stderr = sys.stderr, io.StringIO()
    box = {"text": ""}
    try:
        yield box
    finally:
        callback_text, sys.stderr = sys.stderr.getvalue(), py_stderr
        _logger.logger.setLevel(level)
        os.dup2(saved, 2)
        os.close(saved)
        log.seek(0)
        box["text"] = log.read().decode("utf-8", "replace") + callback_text
        log.close()


def _imatrix_array(imatrix: dict):
    """A NULL-terminated ``llama_model_imatrix_data[]`` over float32 copies (kept alive by the caller)."""
    import ctypes

    import llama_cpp
    import numpy as np

    keep = []
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        arr = np.ascontiguousarray(values, dtype=np.float32)
        if arr.ndim != 1 or not arr.size or not np.isfinite(arr).all():
            raise QuantizeError(f"importance matrix entry {name!r}: expected finite 1-D values")
        raw_name = name.encode()
        keep.append((raw_name, arr))
        entries[i].name = raw_name
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(imatrix)].name = None  # terminator
    return entries, keep


def quantize(in_path, out_path, qtype: str, *, nthread: int = 0, imatrix: dict | None = None) -> dict:
    """Write ``out_path`` = ``in_path`` quantized to ``qtype`` (e.g. "Q8_0", "Q4_K_M").

    ``nthread=0`` uses every core. ``imatrix`` maps GGUF tensor names to per-input-column
    importances (mean squared activations, as :mod:`edgelora.quantize.imatrix` computes them). llama.cpp
    reads and writes the files directly; the output appears under its final name only when
    llama.cpp reports success, so no copy is made beyond llama.cpp's own.
    """
    import ctypes

    import llama_cpp

    in_path, out_path = Path(in_path), Path(out_path)
    ftype = ftype_for(qtype, with_imatrix=bool(imatrix))
    if not in_path.is_file():
        raise QuantizeError(f"{in_path}: input GGUF not found")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(nthread)
    keep = None
    if imatrix:
        entries, keep = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    t0 = time.monotonic()
    with atomic_path(out_path) as tmp:
        with _capture_stderr() as log:
            rc = llama_cpp.llama_model_quantize(str(in_path).encode(), str(tmp).encode(), ctypes.byref(params))
        del keep
        if rc != 0:
            lines = [ln for ln in log["text"].splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else "no message"
            raise QuantizeError(f"{in_path}: llama.cpp quantize to {qtype.upper()} failed (code {rc}): {reason}")
    return {"in_path": str(in_path), "out_path": str(out_path), "qtype": qtype.upper(), "ftype": ftype,
            "in_bytes": in_path.stat().st_size, "out_bytes": out_path.stat().st_size,
            "imatrix": bool(imatrix), "seconds": round(time.monotonic() - t0, 3)}
