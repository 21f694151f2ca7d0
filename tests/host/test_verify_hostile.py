"""Hostile model content on the target host (security.md, "Model content" rows): crafted GGUF
headers are rejected by the bounded reader in well under a second, before llama.cpp sees the
file; a chat template that tries to escape the Jinja sandbox or loop forever fails the probe
check instead of running; and hypothesis fuzzes manifest paths and GGUF headers."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelora.bundle.layout import write_bundle
from edgelora.errors import ConversionError
from edgelora.bundle.manifest import parse_manifest
from edgelora.host.verify import check_gguf_header, verify_bundle

from bundle_fixtures import make_gguf

# ---- crafted GGUF headers -----------------------------------------------------------------------


def _s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def gguf(kvs: bytes = b"", tensors: bytes = b"", *, n_kv: int = 0, n_tensors: int = 0, magic=b"GGUF",
         version: int = 3, tail: bytes = b"") -> bytes:
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tensors + tail


def _kv_u32(key: bytes, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


CRAFTED = {
    "wrong magic": (gguf(magic=b"GGUX", tail=b"\0" * 64), "bad magic"),
    "unsupported version": (gguf(version=99, tail=b"\0" * 64), "version"),
    "huge kv count": (gguf(n_kv=2 ** 62, tail=b"\0" * 64), "implausible counts"),
    "huge tensor count": (gguf(n_tensors=2 ** 40, tail=b"\0" * 64), "implausible counts"),
    "counts that cannot fit": (gguf(n_kv=90_000, tail=b"\0" * 64), "do not fit"),
    "string length past EOF": (gguf(struct.pack("<Q", 2 ** 40) + b"k", n_kv=1, tail=b"\0" * 64), "string length"),
    "huge array count": (gguf(_s(b"a") + struct.pack("<IIQ", 9, 4, 2 ** 60), n_kv=1, tail=b"\0" * 64), "too large"),
    "string array longer than file": (gguf(_s(b"a") + struct.pack("<IIQ", 9, 8, 10_000_000), n_kv=1,
                                           tail=b"\0" * 64), "longer than the file"),
    "unknown value type": (gguf(_s(b"a") + struct.pack("<I", 77), n_kv=1, tail=b"\0" * 64), "unknown GGUF value type"),
    "alignment zero": (gguf(_kv_u32(b"general.alignment", 0), n_kv=1, tail=b"\0" * 64), "alignment"),
    "tensor past EOF": (gguf(tensors=_s(b"t") + struct.pack("<IQIQ", 1, 8, 0, 1 << 30), n_tensors=1,
                             tail=b"\0" * 64), "past the end"),
    "tensor of unknown type": (gguf(tensors=_s(b"t") + struct.pack("<IQIQ", 1, 8, 999, 0), n_tensors=1,
                                    tail=b"\0" * 64), "unknown ggml type"),
    "truncated header": (gguf(_s(b"general.architecture"), n_kv=1, tail=b"\0\0"), "truncated"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_gguf_rejected_fast_before_loading(tmp_path, case):
    data, reason = CRAFTED[case]
    src = tmp_path / "evil.gguf"
    src.write_bytes(data)
    out = write_bundle(dist_dir=tmp_path / "dist", name="evil", version="1", files={"evil.gguf": src})
    start = time.monotonic()
    report = verify_bundle(out["dir"])  # probes on: the loader must never be reached
    elapsed = time.monotonic() - start
    bad = [c for c in report["checks"] if not c["ok"]]
    assert len(bad) == 1 and bad[0]["name"] == "gguf:evil.gguf" and reason in bad[0]["detail"], bad
    assert not any(c["name"].startswith("load:") for c in report["checks"])
    assert elapsed < 1.0


def test_real_gguf_header_passes_quickly(smollm2_gguf):
    start = time.monotonic()
    summary = check_gguf_header(smollm2_gguf)
    assert time.monotonic() - start < 1.0
    assert "architecture 'llama'" in summary and "tensors" in summary


# ---- chat templates that attack the sandbox ----------------------------------------------------------

ESCAPES = {
    "sandbox escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    "10^9 loop": ("{% for i in range(10**9) %}x{% endfor %}", "chat_template"),
}


def _with_template(src: Path, dest: Path, template: str) -> None:
    """Copy a GGUF, replacing tokenizer.chat_template by ``template`` padded to the same length
    (same length: every offset after it stays valid)."""
    data = bytearray(src.read_bytes())
    key = b"tokenizer.chat_template"
    at = data.index(_s(key)) + 8 + len(key)
    vtype, length = struct.unpack_from("<IQ", data, at)
    assert vtype == 8
    body = template.encode()
    pad = length - len(body)
    assert pad >= 5
    body += b"{#" + b" " * (pad - 4) + b"#}"
    data[at + 12: at + 12 + length] = body
    dest.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def recorded(smollm2_gguf):
    from edgelora.bundle.probes import record_probes

    return record_probes(smollm2_gguf, [[{"role": "user", "content": "Hi"}]], max_tokens=2)


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_hostile_chat_template_is_refused_not_run(tmp_path, smollm2_gguf, recorded, case):
    template, reason = ESCAPES[case]
    evil = tmp_path / "smol.gguf"
    _with_template(smollm2_gguf, evil, template)
    out = write_bundle(dist_dir=tmp_path / "dist", name="smol", version="1", files={"smol.gguf": evil},
                       manifest_extra={"probes": {"model": "smol.gguf", "logit_tolerance": 0.05, "items": recorded}})
    start = time.monotonic()
    report = verify_bundle(out["dir"])
    bad = [c for c in report["checks"] if not c["ok"]]
    assert len(bad) == 1 and bad[0]["name"] == "probes:smol.gguf", bad
    assert "ChatTemplateError" in bad[0]["detail"] and reason in bad[0]["detail"]
    assert time.monotonic() - start < 15


# ---- fuzzing -----------------------------------------------------------------------------------------

_BASE_FILE = {"size": 1, "sha256": "a" * 64}
path_chars = st.sampled_from(list("aA./\\\x00\n-_ é") + ["..", "ß", "SS", "\u212a", "k"])
paths = st.lists(path_chars, min_size=0, max_size=12).map("".join)


def _clean(path: str) -> bool:
    parts = path.split("/")
    return (bool(path) and not path.startswith("/") and "\\" not in path and "\x00" not in path
            and "\n" not in path and all(p not in ("", ".", "..") for p in parts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(paths, min_size=1, max_size=4))
def test_fuzz_manifest_paths(path_list):
    doc = {"schema_version": 1, "name": "n", "version": "1",
           "files": [{"path": p, **_BASE_FILE} for p in path_list]}
    raw = json.dumps(doc).encode()
    try:
        m = parse_manifest(raw)
    except ValueError:
        return
    accepted = [e["path"] for e in m["files"]]
    assert all(_clean(p) for p in accepted), accepted
    folded = [p.casefold() for p in accepted]
    assert len(set(folded)) == len(folded), accepted
    for p in accepted:  # never both a file and a folder
        assert not any(q.casefold().startswith(p.casefold() + "/") for q in accepted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_gguf_headers(tmp_path, data):
    """Random mutations of a real small GGUF: the bounded checker either accepts or raises
    ConversionError, in under a second; nothing else escapes."""
    if not hasattr(test_fuzz_gguf_headers, "seed_bytes"):
        test_fuzz_gguf_headers.seed_bytes = make_gguf(tmp_path / "seed.gguf").read_bytes()
    original = test_fuzz_gguf_headers.seed_bytes
    buf = bytearray(original)
    header_len = min(len(buf), 400)
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["byte", "u64", "truncate"]))
        pos = data.draw(st.integers(0, header_len - 1))
        if kind == "byte":
            buf[pos] = data.draw(st.integers(0, 255))
        elif kind == "u64" and pos + 8 <= len(buf):
            buf[pos:pos + 8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, 2 ** 31, 2 ** 63, 2 ** 64 - 1,
                                                                             data.draw(st.integers(0, 2 ** 64 - 1))])))
        else:
            del buf[pos:]
            header_len = max(1, min(header_len, len(buf)))
            if not buf:
                buf = bytearray(b"G")
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(buf))
    start = time.monotonic()
    try:
        check_gguf_header(path)
    except ConversionError:
        pass
    assert time.monotonic() - start < 1.0


# ---- bounded reads -------------------------------------------------------------------------------------


def test_hasher_stops_one_byte_past_the_declared_size(tmp_path):
    import os

    from edgelora.util.hashing import sha256_fd

    big = tmp_path / "big"
    big.write_bytes(b"x" * 10_000_000)
    fd = os.open(big, os.O_RDONLY)
    try:
        read, _ = sha256_fd(fd, 4)
    finally:
        os.close(fd)
    assert read == 5


def test_file_longer_than_declared_is_refused_without_hashing(tmp_path):
    from bundle_fixtures import make_bundle

    b = make_bundle(tmp_path)
    gguf = Path(b["dir"]) / "demo.Q8_0.gguf"
    data = gguf.read_bytes()
    gguf.unlink()
    gguf.write_bytes(data + b"\0" * 4096)
    report = verify_bundle(b["dir"], run_probes=False)
    bad = [c for c in report["checks"] if not c["ok"]]
    assert len(bad) == 1 and "larger than declared" in bad[0]["detail"] and "demo.Q8_0.gguf" in bad[0]["detail"]


def test_bundle_signing_key_is_a_config_field():
    from edgelora import config

    cfg = config.from_dict({"bundle": {"signing_key": "keys/team.key"}})
    assert cfg.bundle.signing_key == "keys/team.key"
    assert "signing_key" in config.render_template()
