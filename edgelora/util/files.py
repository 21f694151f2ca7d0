"""Hashing and atomic file operations shared by every stage.

Nothing is ever written under its final name until it is complete: files go to a
temporary sibling and are renamed; directories are staged and renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj) -> str:
    """Stable digest of a JSON-serialisable object (sorted keys)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def fsync_dir(path: Path, *, strict: bool = False) -> None:
    """Make a rename or create in ``path`` durable. ``strict`` (the model store) raises what
    fails; otherwise a file system that cannot fsync a folder is accepted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    try:  # mkstemp creates 0600; the finished file gets the mode open() would give it
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def atomic_write_json(final: str | os.PathLike, obj) -> None:
    atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory beside ``final``; swap it in on success.

    The previous ``final`` (if any) stays in place until the new one is complete,
    then is replaced. On failure the staging directory is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".staging", dir=final.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp creates 0700
    try:
        yield staging
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(staging, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def delete_cached(p: Path) -> None:
    """Remove a cached file and, for an HF snapshot link, the blob it points to
    (otherwise the bad blob stays and the next lookup trusts it again)."""
    p = Path(p)
    if p.is_symlink():
        target = p.resolve()
        p.unlink()
        if target.is_file():
            target.unlink()
    elif p.exists():
        p.unlink()


def reject_duplicate_keys(pairs):
    """``object_pairs_hook`` for json.loads: duplicate keys are an error, not last-wins."""
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def jsonl_records(path: str | os.PathLike, problems: list[str]) -> Iterator[tuple[int, object]]:
    """``(line number, decoded JSON)`` for every non-blank line of a JSONL file.

    A line that is not UTF-8 or not JSON is skipped and described in ``problems`` as
    ``file:line: reason``, so a caller can report every bad line at once."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")


def read_jsonl(path: str | os.PathLike) -> list:
    """Every record of a JSONL file edgelora wrote itself (stage outputs); a bad line raises."""
    problems: list[str] = []
    records = [record for _, record in jsonl_records(path, problems)]
    if problems:
        raise ValueError(problems[0])
    return records


def write_new_file(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (never an existing file or link), write all of ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class NotRegularFile(OSError):
    """The path is a link, FIFO, device or folder: refused before anything could block on it."""


def open_regular(path: str | os.PathLike) -> int:
    """A read-only fd of the regular file at ``path``, never through a link and never blocking:
    lstat first, then open with O_NOFOLLOW|O_NONBLOCK (a FIFO swapped in between cannot block),
    then fstat must show the same regular file. FileNotFoundError if absent; NotRegularFile
    (an OSError) naming the kind otherwise."""
    import stat

    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"{'symlink' if stat.S_ISLNK(st.st_mode) else 'not a regular file'} refused")
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if os.path.islink(path):
            raise NotRegularFile("symlink refused") from None
        raise
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise NotRegularFile("not a regular file (replaced while opening) refused")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int) -> bytes | None:
    """All bytes of a small regular file, read once; None if absent. ValueError naming the
    reason for a link, special file, or more than ``limit`` bytes."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    except NotRegularFile as e:
        raise ValueError(str(e)) from None
    except OSError as e:
        raise ValueError(f"cannot open: {e.strerror}") from None
    try:
        if os.fstat(fd).st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        chunks, total = [], 0
        while total <= limit:
            block = os.read(fd, limit + 1 - total)
            if not block:
                break
            chunks.append(block)
            total += len(block)
        if total > limit:
            raise ValueError(f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes an unprivileged writer can still use on ``folder``'s file system."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize
