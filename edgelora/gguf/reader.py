"""A small, bounded GGUF metadata reader (header, key/values, tensor infos; no tensor data).

gguf-py's GGUFReader builds a numpy view per array element, which takes seconds on a
50k-token vocabulary; this reads the same facts in milliseconds and refuses absurd
counts instead of allocating for them (the file may come from elsewhere).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from edgelora.errors import ConversionError

# GGUF value type ids -> (name, struct format or None)
_SCALARS = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
            4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
            10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d")}
_STRING, _ARRAY = 8, 9
MAX_KV, MAX_TENSORS, MAX_ARRAY, MAX_STRING = 100_000, 1_000_000, 50_000_000, 1 << 30
MAX_STRING_ARRAY = 4_000_000  # vocabularies and merge lists are well under 1M


@dataclass(frozen=True)
class SkippedArray:
    """An array value read with ``arrays=False``: bounds-checked and counted, not materialised."""
    count: int
    item_type: str


@dataclass
class GGUFMetadata:
    version: int
    kv: dict          # key -> value (python scalars, str, or list)
    kv_types: dict    # key -> ("UINT32",) or ("ARRAY", "STRING")
    tensors: list     # [(name, shape innermost-first tuple, ggml type id, offset in data section)]
    data_start: int   # file offset of the tensor data section


def f32_tensor(path, meta: GGUFMetadata, name: str):
    """One F32 tensor as a numpy array in HF (row-major, outermost-first) shape."""
    import numpy as np

    for tname, shape, ttype, offset in meta.tensors:
        if tname == name:
            if ttype != 0:
                raise ConversionError(f"{path}: tensor {name} is not F32")
            count = int(np.prod(shape)) if shape else 1
            arr = np.fromfile(path, dtype=np.float32, count=count, offset=meta.data_start + offset)
            return arr.reshape(tuple(reversed(shape)))
    raise KeyError(name)


class _Cursor:
    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise ConversionError(f"{self.path}: truncated GGUF header") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if n > MAX_STRING or self.pos + n > len(self.buf):
            raise ConversionError(f"{self.path}: bad string length {n} at byte {self.pos}")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.take("<Q")
        if n > MAX_STRING or self.pos + n > len(self.buf):
            raise ConversionError(f"{self.path}: bad string length {n} at byte {self.pos}")
        self.pos += n


def _value(cur: _Cursor, vtype: int, arrays: bool = True):
    if vtype == _STRING:
        return cur.string(), (_STRING_NAME,)
    if vtype in _SCALARS:
        name, fmt = _SCALARS[vtype]
        return cur.take(fmt), (name,)
    if vtype == _ARRAY:
        sub = cur.take("<I")
        n = cur.take("<Q")
        if n > MAX_ARRAY:
            raise ConversionError(f"{cur.path}: array of {n} items is too large")
        if sub == _STRING:
            if n * 8 > len(cur.buf) - cur.pos:  # every string costs at least its 8-byte length
                raise ConversionError(f"{cur.path}: array of {n} strings is longer than the file")
            if n > MAX_STRING_ARRAY:
                raise ConversionError(f"{cur.path}: array of {n} strings is too large")
            if not arrays:
                for _ in range(n):
                    cur.skip_string()
                return SkippedArray(n, _STRING_NAME), ("ARRAY", _STRING_NAME)
            return [cur.string() for _ in range(n)], ("ARRAY", _STRING_NAME)
        if sub not in _SCALARS:
            raise ConversionError(f"{cur.path}: unsupported array item type {sub}")
        name, fmt = _SCALARS[sub]
        size = struct.calcsize(fmt)
        if cur.pos + n * size > len(cur.buf):
            raise ConversionError(f"{cur.path}: truncated array")
        if not arrays:
            cur.pos += n * size
            return SkippedArray(n, name), ("ARRAY", name)
        items = list(struct.unpack_from(f"<{n}{fmt[1]}", cur.buf, cur.pos))
        cur.pos += n * size
        return items, ("ARRAY", name)
    raise ConversionError(f"{cur.path}: unknown GGUF value type {vtype}")


_STRING_NAME = "STRING"


def read_metadata(path, *, arrays: bool = True) -> GGUFMetadata:
    """Header, key/values and tensor infos. ``arrays=False`` (verify, install): array values
    are bounds-checked and skipped (``SkippedArray``), so memory does not grow with them."""
    path = Path(path)
    with open(path, "rb") as f:
        if path.stat().st_size < 24:
            raise ConversionError(f"{path}: not a GGUF file (too short)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            if bytes(buf[:4]) != b"GGUF":
                raise ConversionError(f"{path}: not a GGUF file (bad magic)")
            cur.pos = 4
            version = cur.take("<I")
            if version not in (2, 3):
                raise ConversionError(f"{path}: unsupported GGUF version {version}")
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
                raise ConversionError(f"{path}: implausible counts ({n_kv} keys, {n_tensors} tensors)")
            # smallest possible entries: key/value 13 bytes, tensor info 24 bytes
            if n_kv * 13 + n_tensors * 24 > len(buf) - cur.pos:
                raise ConversionError(f"{path}: header counts ({n_kv} keys, {n_tensors} tensors) "
                                      "do not fit in the file")
            kv, kv_types = {}, {}
            for _ in range(n_kv):
                key = cur.string()
                kv[key], kv_types[key] = _value(cur, cur.take("<I"), arrays)
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.take("<I")
                if n_dims > 8:
                    raise ConversionError(f"{path}: tensor {name} has {n_dims} dims")
                shape = tuple(cur.take("<Q") for _ in range(n_dims))
                ttype = cur.take("<I")
                tensors.append((name, shape, ttype, cur.take("<Q")))
            align = kv.get("general.alignment", 32)
            if type(align) is not int or not 0 < align <= 1 << 20 or align & (align - 1):
                raise ConversionError(f"{path}: general.alignment {align!r} is not a power of two")
            data_start = (cur.pos + align - 1) // align * align
            del cur  # release the mmap-backed buffer before the map closes
    return GGUFMetadata(version=version, kv=kv, kv_types=kv_types, tensors=tensors, data_start=data_start)
