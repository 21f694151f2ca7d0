"""Resource exhaustion on the target host (issue 15, class 4): untrusted chat templates and
model loads run in a limited child process; tar members are hashed while written, never past
their declared size and never when the disk cannot hold them; the GGUF header reader does
not materialise arrays; probes are capped and stop at the first failure."""

from __future__ import annotations

import io
import json
import struct
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle_fixtures import make_bundle  # noqa: E402

from edgelora.bundle.layout import write_bundle  # noqa: E402
from edgelora.errors import DiskFullError  # noqa: E402
from edgelora.host.verify import first_failure, verify_bundle  # noqa: E402


def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def with_template(src: Path, dest: Path, template: str) -> None:
    """Copy a GGUF with tokenizer.chat_template replaced, padded to the same length."""
    data = bytearray(src.read_bytes())
    key = b"tokenizer.chat_template"
    at = data.index(_s(key)) + 8 + len(key)
    vtype, length = struct.unpack_from("<IQ", data, at)
    body = template.encode()
    body += b"{#" + b" " * (length - len(body) - 4) + b"#}"
    data[at + 12: at + 12 + length] = body
    dest.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def recorded(smollm2_gguf):
    from edgelora.bundle.probes import record_probes

    return record_probes(smollm2_gguf, [[{"role": "user", "content": "Hi"}]], max_tokens=2)


PAYLOADS = {
    # constant folding at compile time: minutes of big-integer arithmetic without a limit
    "arithmetic": ("{{ 9 ** (9 ** 8) }}", "template:", "CPU-time limit of 2 s for compiling the chat template"),
    # a 2 GiB string, above the child's address-space limit (~1.2 GiB here): Jinja's folding
    # gives up on the MemoryError, then rendering hits it again
    "string repetition": ("{{ 'x' * 2 ** 31 }}", "probes:", "MemoryError"),
}


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_template_payload_fails_in_seconds_with_one_line(tmp_path, smollm2_gguf, recorded, case):
    template, check, reason = PAYLOADS[case]
    evil = tmp_path / "smol.gguf"
    with_template(smollm2_gguf, evil, template)
    out = write_bundle(dist_dir=tmp_path / "dist", name="smol", version="1", files={"smol.gguf": evil},
                       manifest_extra={"probes": {"model": "smol.gguf", "logit_tolerance": 0.05, "items": recorded}})
    start = time.monotonic()
    report = verify_bundle(out["dir"])
    elapsed = time.monotonic() - start
    bad = [c for c in report["checks"] if not c["ok"]]
    assert len(bad) == 1 and bad[0]["name"] == f"{check}smol.gguf", bad
    assert reason in bad[0]["detail"] and "\n" not in bad[0]["detail"], bad[0]["detail"]
    assert elapsed < 45, elapsed  # 2 s of CPU; wall time on a shared 2-core machine is longer


def test_wall_clock_limit_stops_the_child(tmp_path, smollm2_gguf, recorded):
    from edgelora.host.sandbox import Limits

    out = write_bundle(dist_dir=tmp_path / "dist", name="smol", version="1", files={"smol.gguf": smollm2_gguf},
                       manifest_extra={"probes": {"model": "smol.gguf", "logit_tolerance": 0.05, "items": recorded}})
    start = time.monotonic()
    report = verify_bundle(out["dir"], limits=Limits(cpu_s=600, memory_bytes=4 << 30, wall_s=0.3))
    assert time.monotonic() - start < 10
    assert "wall-clock limit of 0.3 s" in first_failure(report)


IN_PROCESS = """
import sys
from edgelora.bundle.probes import load_llama, replay_probes
import json
items = json.load(open(sys.argv[2]))
llm = load_llama(sys.argv[1])
assert all(r["ok"] for r in replay_probes(sys.argv[1], items, logit_tolerance=0.05, llm=llm))
llm.close()
"""
IN_CHILD = """
import sys, json, os
from edgelora.host.sandbox import default_limits, run_model_checks
items = json.load(open(sys.argv[2]))
checks = run_model_checks([{"arc": "m", "path": sys.argv[1], "items": items}], logit_tolerance=0.05,
                          n_threads=None, limits=default_limits([os.path.getsize(sys.argv[1])], len(items)))
assert all(c["ok"] for c in checks), checks
"""


def test_sandbox_costs_well_under_a_second(tmp_path, smollm2_gguf, recorded):
    """What a verify process pays: load + replay in-process (before) vs in the limited child
    (now), each in a fresh process, interleaved."""
    import subprocess

    (tmp_path / "items.json").write_text(json.dumps(recorded))
    args = [str(smollm2_gguf), str(tmp_path / "items.json")]
    costs = []
    for _ in range(3):
        times = []
        for script in (IN_PROCESS, IN_CHILD):
            start = time.monotonic()
            subprocess.run([sys.executable, "-c", script, *args], check=True)
            times.append(time.monotonic() - start)
        costs.append(times[1] - times[0])
    print("sandbox extra seconds per run:", [f"{c:.2f}" for c in costs])
    assert min(costs) < 1.0, costs  # an interpreter start and imports; noisy on a shared 2-core host


# ---- tar members: hashed while written, bounded, space checked first ------------------------------


def _rewrite_tar(src: Path, dest: Path, edit) -> Path:
    with tarfile.open(src) as a, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as b:
        for m in a.getmembers():
            data = a.extractfile(m).read()
            m, data = edit(m, data)
            b.addfile(m, io.BytesIO(data))
    return dest


def test_sparse_member_is_refused_before_anything_is_written(tmp_path):
    b = make_bundle(tmp_path)

    def sparse(m, data):
        if m.name.endswith(".gguf"):  # PAX sparse 0.1: one data region covering the whole file
            m.pax_headers = {"GNU.sparse.size": str(len(data)), "GNU.sparse.map": f"0,{len(data)}"}
        return m, data

    evil = _rewrite_tar(Path(b["tar"]), tmp_path / "sparse.tar", sparse)
    report = verify_bundle(evil, run_probes=False, extract_to=tmp_path / "x")
    assert "sparse member refused" in first_failure(report), first_failure(report)
    assert not (tmp_path / "x" / "bundle").exists()


def test_member_changed_in_the_tar_stops_at_the_first_mismatch(tmp_path):
    b = make_bundle(tmp_path)

    def flip(m, data):
        return m, (bytes([data[0] ^ 1]) + data[1:]) if m.name.endswith("Modelfile") else data

    evil = _rewrite_tar(Path(b["tar"]), tmp_path / "flip.tar", flip)
    report = verify_bundle(evil, run_probes=False, extract_to=tmp_path / "x")
    assert first_failure(report).startswith("file:Modelfile: Modelfile: hash mismatch")
    files = [c["name"] for c in report["checks"] if c["name"].startswith("file:")]
    assert files[-1] == "file:Modelfile" and "file:demo.Q8_0.gguf" not in files  # nothing after it
    assert not (tmp_path / "x/bundle/reports").exists() and not (tmp_path / "x/bundle/demo.Q8_0.gguf").exists()


@pytest.mark.parametrize("where", ["inside the last header", "inside the end marker"])
def test_tar_cut_inside_a_header_is_incomplete_not_missing(tmp_path, where):
    b = make_bundle(tmp_path)
    data = Path(b["tar"]).read_bytes()
    with tarfile.open(b["tar"]) as t:
        last = t.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    at = last.offset + 100 if where == "inside the last header" else end + 512
    (tmp_path / "cut.tar").write_bytes(data[:at])
    report = verify_bundle(tmp_path / "cut.tar", run_probes=False)
    assert "incomplete" in first_failure(report) and "missing file" not in first_failure(report), \
        first_failure(report)


def test_no_room_for_the_declared_sizes_refuses_before_writing(tmp_path, monkeypatch):
    from edgelora.host import private_copy

    b = make_bundle(tmp_path, floats=65536)
    monkeypatch.setattr(private_copy, "free_bytes", lambda folder: 100_000)
    for src in ("dir", "tar"):
        dest = tmp_path / f"copy-{src}"
        with pytest.raises(DiskFullError) as e:
            verify_bundle(b[src], run_probes=False, extract_to=dest)
        msg = str(e.value)
        assert msg.startswith("disk full: need 2") and "have 97.7 KiB free" in msg and "\n" not in msg, msg
        assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_enospc_after_the_check_never_claims_more_free_than_needed(tmp_path, monkeypatch):
    import errno

    from edgelora.util import hashing
    from edgelora.host.install import install_bundle

    b = make_bundle(tmp_path)

    def full(src, dst, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hashing, "copy_hashed", full)
    with pytest.raises(DiskFullError) as e:
        install_bundle(b["dir"], store=tmp_path / "m", run_probes=False, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("disk full: need ") and ", have less: " in msg and "refused a write" in msg, msg


# ---- bounded header reading and probe replay --------------------------------------------------------


def test_header_reader_skips_arrays_without_materialising_them(tmp_path):
    from edgelora.gguf.reader import SkippedArray, read_metadata

    n = 5_000_000
    kv = _s(b"big") + struct.pack("<IIQ", 9, 4, n) + b"\0" * (4 * n)
    strings = _s(b"names") + struct.pack("<IIQ", 9, 8, 200_000) + _s(b"tok") * 200_000
    path = tmp_path / "arrays.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv + strings + b"\0" * 64)
    start = time.monotonic()
    read_metadata(path, arrays=False)
    elapsed = time.monotonic() - start
    tracemalloc.start()
    meta = read_metadata(path, arrays=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert meta.kv["big"] == SkippedArray(n, "UINT32") and meta.kv["names"] == SkippedArray(200_000, "STRING")
    assert peak < 1 << 20 and elapsed < 1.0, (peak, elapsed)


def test_too_many_probes_is_an_invalid_manifest(tmp_path):
    from edgelora.bundle.probes import MAX_PROBES

    b = make_bundle(tmp_path)
    src = tmp_path / "g.gguf"
    src.write_bytes((Path(b["dir"]) / "demo.Q8_0.gguf").read_bytes())
    out = write_bundle(dist_dir=tmp_path / "d2", name="p", version="1", files={"g.gguf": src},
                       manifest_extra={"probes": {"model": "g.gguf", "logit_tolerance": 0.05,
                                                  "items": [{}] * (MAX_PROBES + 1)}})
    report = verify_bundle(out["dir"], run_probes=False)
    assert first_failure(report) == f"manifest: invalid manifest: probes for g.gguf: expected a list of at most " \
        f"{MAX_PROBES} probes"


def test_replay_stops_at_the_first_failed_probe(smollm2_gguf, recorded):
    from edgelora.bundle.probes import replay_probes

    moved = json.loads(json.dumps(recorded * 3))
    moved[0]["expected_token_ids"][0] += 1
    results = replay_probes(smollm2_gguf, moved, logit_tolerance=0.05, stop_at_failure=True)
    assert len(results) == 1 and not results[0]["ok"]


def test_copy_never_writes_past_the_declared_size(tmp_path):
    import os

    from edgelora.util.hashing import copy_hashed

    src = tmp_path / "src"
    src.write_bytes(b"x" * 10_000)
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        read, _ = copy_hashed(fd_in, fd_out, 4096)
    finally:
        os.close(fd_in)
        os.close(fd_out)
    assert read == 4097 and (tmp_path / "dst").stat().st_size == 4096
