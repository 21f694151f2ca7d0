"""Bounded, fast sha256 over open files, and copying while hashing.

Reads go into one reused buffer (no per-block allocation) in large blocks; hashlib releases
the GIL while hashing, so this runs at the speed of the sha256 implementation (SHA-NI:
~2 GB/s a core). Every read is bounded by the size the caller expects plus one byte, so a
file that grows, or lies about its size, is never read to its end.
"""

from __future__ import annotations

import errno
import hashlib
import os

BLOCK = 8 << 20


def _bounded_blocks(src, expected_size: int):
    """Blocks read from ``src`` (``readinto``) into one reused buffer, at most ``expected_size + 1``
    bytes in all: the one byte more shows a source longer than expected without reading it to
    its end. Each block is a view valid until the next one is read."""
    buf = bytearray(min(BLOCK, expected_size + 1) or 1)
    view = memoryview(buf)
    remaining = expected_size + 1
    while remaining > 0:
        n = src.readinto(view[: min(len(buf), remaining)])
        if not n:
            return
        remaining -= n
        yield view[:n]


def sha256_fd(fd: int, expected_size: int) -> tuple[int, str]:
    """(bytes read, sha256 hex) of an open file from its current offset, reading at most
    ``expected_size + 1`` bytes."""
    h = hashlib.sha256()
    read = 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        for block in _bounded_blocks(f, expected_size):
            h.update(block)
            read += len(block)
    return read, h.hexdigest()


def sha256_file(path, *, limit: int | None = None) -> str:
    """sha256 of a file (links followed: the HF cache links snapshots to blobs). With ``limit``,
    read at most ``limit + 1`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_fd(fd, (1 << 62) if limit is None else limit)[1]
    finally:
        os.close(fd)


def copy_hashed(src_fd: int, dst_fd: int, expected_size: int) -> tuple[int, str]:
    """Copy at most ``expected_size + 1`` bytes from src to dst, hashing what was written.

    The hash is of the bytes that landed in the destination, so what is installed is what
    was checked, even if the source changes under us. ENOSPC propagates as OSError.
    """
    with open(src_fd, "rb", buffering=0, closefd=False) as src:
        return copy_stream_hashed(src, dst_fd, expected_size)


def copy_stream_hashed(src, dst_fd: int, expected_size: int) -> tuple[int, str]:
    """``copy_hashed`` from a readable binary object (``readinto``), e.g. a tar member.
    Returns (bytes read, sha256 of the bytes written); at most ``expected_size`` are written,
    so a longer source shows as ``read > expected_size`` with nothing extra on disk."""
    h = hashlib.sha256()
    read = 0
    with open(dst_fd, "wb", buffering=0, closefd=False) as dst:
        for block in _bounded_blocks(src, expected_size):
            # never write past the expected size: one byte more is only read, to detect it
            chunk = block[:max(0, min(len(block), expected_size - read))]
            written = 0
            while written < len(chunk):
                w = dst.write(chunk[written:])
                if not w:
                    raise OSError(errno.EIO, "short write")
                written += w
            h.update(chunk)
            read += len(block)
    return read, h.hexdigest()
