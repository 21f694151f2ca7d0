"""Quantize an F16/BF16/F32 GGUF with llama.cpp's own quantizer (through llama-cpp-python)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from .errors import QuantizeError
from .fsutil import atomic_path

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
# Very low-bit types abort without an importance matrix, which edgelora does not compute yet.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})


def supported_types() -> list[str]:
    """Type names :func:`quantize` accepts (those needing an importance matrix excluded)."""
    return [t for t in _FTYPES if t not in NEEDS_IMATRIX]


def ftype_for(qtype: str) -> int:
    name = qtype.upper()
    if name in NEEDS_IMATRIX:
        raise QuantizeError(f"quantization type {qtype!r} needs an importance matrix, which is not "
                            f"supported yet; choose one of {', '.join(supported_types())}")
    if name not in _FTYPES:
        raise QuantizeError(f"unknown quantization type {qtype!r}; known: {', '.join(supported_types())}")
    import llama_cpp

    value = getattr(llama_cpp, _FTYPES[name], None)
    if value is None:
        raise QuantizeError(f"quantization type {qtype!r} is not provided by this llama-cpp-python build")
    return int(value)


@contextlib.contextmanager
def _capture_stderr():
    """Collect llama.cpp's C-level log (fd 2) so a failure can quote it; silence it otherwise."""
    log = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    box = {"text": ""}
    try:
        yield box
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        log.seek(0)
        box["text"] = log.read().decode("utf-8", "replace")
        log.close()


def quantize(in_path, out_path, qtype: str, *, nthread: int = 0) -> dict:
    """Write ``out_path`` = ``in_path`` quantized to ``qtype`` (e.g. "Q8_0", "Q4_K_M").

    ``nthread=0`` uses every core. The output appears under its final name only when
    llama.cpp reports success.
    """
    import ctypes

    import llama_cpp

    in_path, out_path = Path(in_path), Path(out_path)
    ftype = ftype_for(qtype)
    if not in_path.is_file():
        raise QuantizeError(f"{in_path}: input GGUF not found")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(nthread)
    t0 = time.monotonic()
    with atomic_path(out_path) as tmp:
        with _capture_stderr() as log:
            rc = llama_cpp.llama_model_quantize(str(in_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            lines = [ln for ln in log["text"].splitlines() if ln.strip()]
            reason = lines[-1].strip() if lines else "no message"
            raise QuantizeError(f"{in_path}: llama.cpp quantize to {qtype.upper()} failed (code {rc}): {reason}")
    return {"in_path": str(in_path), "out_path": str(out_path), "qtype": qtype.upper(), "ftype": ftype,
            "in_bytes": in_path.stat().st_size, "out_bytes": out_path.stat().st_size,
            "seconds": round(time.monotonic() - t0, 3)}
