"""Read safetensors tensors with plain file reads, straight into float32.

safetensors' ``safe_open`` memory-maps the file: every page a conversion touches stays mapped
and counts toward the process's resident memory, so converting a 2 GB base "uses" 2 GB more
than the one tensor it holds at a time. Reading each tensor with ``readinto`` in fixed-size
chunks and widening each chunk into the float32 result keeps memory at the result tensor
plus one chunk, and the page cache (not the process) holds the file.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from edgelora.errors import BaseModelError
from edgelora.util.files import reject_duplicate_keys

_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2), "F64": ("float64", 8),
           "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
           "BOOL": ("bool", 1)}
CHUNK_BYTES = 16 << 20


class SafetensorsFile:
    """Names, dtypes, shapes and float32 reads of one safetensors file (header validated by
    :func:`check_safetensors_header` before this is built)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self._data_start = 8 + n
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}

    def keys(self):
        return self._entries.keys()

    def shape(self, name: str) -> list[int]:
        return list(self._entries[name]["shape"])

    def dtype(self, name: str) -> str:
        return self._entries[name]["dtype"]

    def read_f32(self, name: str, scratch=None):
        """The tensor as float32, converted chunk by chunk while reading.

        A new tensor, or a view of the flat float32 ``scratch`` when it is large enough (a
        caller converting tensor after tensor reuses one buffer instead of paying the kernel's
        page faults for a fresh one each time)."""
        import math

        import torch

        entry = self._entries[name]
        src_dtype, itemsize = _DTYPES[entry["dtype"]]
        src_dtype = getattr(torch, src_dtype)
        begin, end = entry["data_offsets"]
        numel = math.prod(entry["shape"])
        if scratch is not None and scratch.dtype == torch.float32 and scratch.numel() >= numel:
            out = scratch[:numel].view(entry["shape"])
        else:
            out = torch.empty(entry["shape"], dtype=torch.float32)
        flat = out.view(-1)
        n = flat.numel()
        if n * itemsize != end - begin:
            raise OSError(f"{self.path}: tensor {name} size mismatch")
        if src_dtype == torch.float32:  # already the result's layout: read in place
            self._read_into(flat.view(torch.uint8).numpy(), begin, name)
            return out
        per_chunk = max(1, CHUNK_BYTES // itemsize)
        buf = torch.empty(min(n, per_chunk), dtype=src_dtype)
        raw = buf.view(torch.uint8).numpy()
        done = 0
        while done < n:
            count = min(per_chunk, n - done)
            self._read_into(raw[: count * itemsize], begin + done * itemsize, name)
            flat[done:done + count].copy_(buf[:count])
            done += count
        return out

    def read_raw(self, name: str, buf, rows: tuple[int, int] | None = None):
        """The tensor (or its rows ``rows[0]:rows[1]``) in its stored dtype, read into (a view
        of) the flat uint8 torch ``buf``, shaped."""
        import torch

        entry = self._entries[name]
        src_dtype, itemsize = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = list(entry["shape"])
        if end - begin != math.prod(shape) * itemsize:
            raise OSError(f"{self.path}: tensor {name} size mismatch")
        if rows is not None:
            row_bytes = math.prod(shape[1:]) * itemsize
            begin, shape = begin + rows[0] * row_bytes, [rows[1] - rows[0], *shape[1:]]
        raw = buf[: math.prod(shape) * itemsize]
        self._read_into(raw.numpy(), begin, name)
        return raw.view(getattr(torch, src_dtype)).view(shape)

    def nbytes(self, name: str) -> int:
        begin, end = self._entries[name]["data_offsets"]
        return end - begin

    def _read_into(self, dest, offset: int, name: str) -> None:
        view = memoryview(dest).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._data_start + offset)
            got = 0
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    raise OSError(f"{self.path}: tensor {name} truncated")
                got += k


_ST_DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_ST_MAX_HEADER = 100 << 20  # safetensors itself caps the header at 100 MB


def check_safetensors_header(path: str | Path) -> dict:
    """Validate a safetensors file's header against its size before any loader maps it.

    Returns {tensor name: (dtype, shape)}. Refuses a header longer than the file, offsets
    past the end, tensors whose byte size disagrees with dtype x shape, and overlaps.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BaseModelError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > _ST_MAX_HEADER:
            raise BaseModelError(f"{path}: safetensors header length {n} exceeds file size {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw, object_pairs_hook=reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as e:
        raise BaseModelError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise BaseModelError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    spans = []
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BaseModelError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _ST_DTYPE_SIZE:
            raise BaseModelError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape) or not (
                isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise BaseModelError(f"{path}: tensor {name!r} has invalid shape or offsets")
        if end > data_len:
            raise BaseModelError(
                f"{path}: tensor {name!r} ends at byte {end}, past the data section ({data_len} bytes)")
        count = 1
        for d in shape:
            count *= d
        if count * _ST_DTYPE_SIZE[dtype] != end - begin:
            raise BaseModelError(
                f"{path}: tensor {name!r} spans {end - begin} bytes, expected "
                f"{count * _ST_DTYPE_SIZE[dtype]} for {dtype}{shape}")
        spans.append((begin, end, name))
        out[name] = (dtype, list(shape))
    spans.sort()
    reach, reach_name = 0, None  # furthest end of the non-empty spans seen so far
    for begin, end, name in spans:
        if begin == end:
            continue
        if begin < reach:
            raise BaseModelError(f"{path}: tensors {reach_name!r} and {name!r} overlap")
        reach, reach_name = end, name
    return out
