"""verify: good bundles pass; every tampering in security.md's target-side tables fails, named."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from edgelora.bundle.layout import sums_text, write_bundle
from edgelora.errors import VerifyError
from edgelora.util.files import sha256_bytes
from edgelora.host.verify import verify_bundle

from bundle_fixtures import make_tiny_gguf

PROMPTS = [[{"role": "system", "content": "Extract the support ticket as JSON with keys product, severity, sentiment."},
            {"role": "user", "content": "My printer caught fire. I am furious."}],
           [{"role": "user", "content": "Hi!"}]]


@pytest.fixture
def bundle(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    make_tiny_gguf(src / "demo.Q8_0.gguf")
    (src / "Modelfile").write_text("FROM ./demo.Q8_0.gguf\n")
    (src / "eval.json").write_text("{}")
    out = write_bundle(dist_dir=tmp_path / "dist", name="demo", version="1.0", readme_text="# demo\n",
                       files={"demo.Q8_0.gguf": src / "demo.Q8_0.gguf", "Modelfile": src / "Modelfile",
                              "reports/eval.json": src / "eval.json"}, manifest_extra={})
    return Path(out["dir"])


def failed(report) -> list[dict]:
    return [c for c in report["checks"] if not c["ok"]]


def rewrite_manifest(folder: Path, text: str) -> None:
    """Replace manifest.json and keep SHA256SUMS consistent, as a forger would."""
    (folder / "manifest.json").write_text(text)
    sums = [ln.split("  ", 1) for ln in (folder / "SHA256SUMS").read_text().splitlines()]
    entries = [(p, d if p != "manifest.json" else sha256_bytes(text.encode())) for d, p in sums]
    (folder / "SHA256SUMS").write_text(sums_text(entries))


def test_good_bundle_dir_and_tar_pass(bundle):
    for path in (bundle, bundle.with_name("demo-1.0.tar")):
        report = verify_bundle(path, run_probes=False)
        assert report["ok"], failed(report)
        names = [c["name"] for c in report["checks"]]
        assert names[0] == "signature" and names[1] in ("manifest", "archive") and "SHA256SUMS" in names and "gguf:demo.Q8_0.gguf" in names
        assert report["manifest"]["name"] == "demo"


def test_one_flipped_bit_names_file_expected_actual(bundle):
    gguf = bundle / "demo.Q8_0.gguf"
    expected = json.loads((bundle / "manifest.json").read_text())["files"][2]["sha256"]
    data = bytearray(gguf.read_bytes())
    data[-5] ^= 0x01
    os.unlink(gguf)  # the bundle hard-links the source; do not flip the source too
    gguf.write_bytes(bytes(data))
    report = verify_bundle(bundle)
    bad = failed(report)
    assert not report["ok"] and len(bad) == 1
    detail = bad[0]["detail"]
    assert "demo.Q8_0.gguf" in detail and expected in detail and sha256_bytes(bytes(data)) in detail
    assert not any(c["name"].startswith(("gguf:", "load:")) for c in report["checks"])  # never parsed


def test_extra_missing_truncated_and_linked_files(bundle):
    from edgelora.host.verify import first_failure

    (bundle / "extra.txt").write_text("x")
    assert first_failure(verify_bundle(bundle)) == "unexpected file: extra.txt is not in manifest.json"
    (bundle / "extra.txt").unlink()
    os.unlink(bundle / "reports" / "eval.json")
    # one "missing file:", not "missing file: missing file: ..."
    assert first_failure(verify_bundle(bundle)) == \
        "missing file: reports/eval.json is listed in manifest.json but absent"
    (bundle / "reports" / "eval.json").symlink_to("/etc/hostname")
    assert "symlink" in failed(verify_bundle(bundle))[0]["detail"]
    (bundle / "reports" / "eval.json").unlink()
    (bundle / "reports" / "eval.json").write_text("{")
    assert "incomplete" in failed(verify_bundle(bundle))[0]["detail"]


@pytest.mark.parametrize("mutate,reason", [
    (lambda t: t.replace('"name": "demo"', '"name": "demo", "name": "evil"'), "duplicate key"),
    (lambda t: t.replace('"schema_version": 1', '"schema_version": NaN'), "NaN"),
    (lambda t: re.sub(r'"size": (\d+)', r'"size": -\1', t, count=1), "size"),
    (lambda t: re.sub(r'"size": (\d+)', r'"size": 1e400', t, count=1), "overflows"),
    (lambda t: t.replace('"path": "Modelfile"', '"path": "README.md"'), "duplicate"),
    (lambda t: t.replace('"path": "Modelfile"', '"path": "../Modelfile"'), ".."),
    (lambda t: t.replace('"path": "Modelfile"', '"path": "/etc/Modelfile"'), "absolute"),
    (lambda t: t.replace('"path": "Modelfile"', '"path": "Model\\\\file"'), "backslash"),
    (lambda t: t.replace('"schema_version": 1', '"schema_version": 2'), "schema_version"),
    (lambda t: t.replace('"sha256": "', '"sha256": "A', 1), "sha256"),
    (lambda t: t.replace('"sha256": "', '"md5": "', 1), "unknown hash"),
    (lambda t: t + " " * (1 << 20), "larger than"),
])
def test_invalid_manifest(bundle, mutate, reason):
    text = (bundle / "manifest.json").read_text()
    new = mutate(text)
    assert new != text
    rewrite_manifest(bundle, new)
    report = verify_bundle(bundle)
    bad = failed(report)
    assert bad[0]["name"] == "manifest" and "invalid manifest" in bad[0]["detail"] and reason in bad[0]["detail"]


def test_sums_disagreeing_with_manifest_fails(bundle):
    lines = (bundle / "SHA256SUMS").read_text().splitlines()
    (bundle / "SHA256SUMS").write_text("\n".join(lines[1:]) + "\n")
    bad = failed(verify_bundle(bundle))
    assert bad[0]["name"] == "SHA256SUMS"


def _tar_with(bundle: Path, tmp_path: Path, extra) -> Path:
    out = tmp_path / "evil.tar"
    with tarfile.open(bundle.with_name("demo-1.0.tar")) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        extra(dst)
    return out


def _add_file(name):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return add


def _add_link(name, kind):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)
    return add


@pytest.mark.parametrize("extra,reason", [
    (_add_file("../x"), ".."),
    (_add_file("demo-1.0/../../x"), ".."),
    (_add_file("/abs/x"), "absolute"),
    (_add_link("demo-1.0/link", tarfile.SYMTYPE), "symlink"),
    (_add_link("demo-1.0/hard", tarfile.LNKTYPE), "hardlink"),
    (_add_link("demo-1.0/dev", tarfile.CHRTYPE), "device"),
    (_add_link("demo-1.0/fifo", tarfile.FIFOTYPE), "FIFO"),
    (_add_link("demo-1.0/blk", tarfile.BLKTYPE), "device"),
    (_add_file("demo-1.0/Modelfile"), "duplicate"),
    (_add_file("demo-1.0/notes.txt"), "unexpected file"),
])
def test_hostile_tar_members_refused(bundle, tmp_path, extra, reason):
    evil = _tar_with(bundle, tmp_path, extra)
    report = verify_bundle(evil, run_probes=False)
    from edgelora.host.verify import first_failure

    assert not report["ok"] and reason in first_failure(report)
    assert not (tmp_path / "x").exists() and not Path("/abs/x").exists()


def test_truncated_tar_and_unreadable_input(bundle, tmp_path):
    data = bundle.with_name("demo-1.0.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    report = verify_bundle(cut, run_probes=False)
    assert not report["ok"] and "incomplete" in " ".join(c["detail"] for c in failed(report))
    with pytest.raises(VerifyError):
        verify_bundle(tmp_path / "nope")
    (tmp_path / "junk.tar").write_bytes(b"\x00junk" * 10)
    with pytest.raises(VerifyError):
        verify_bundle(tmp_path / "junk.tar")


# ---- probes on the real embedded GGUF ----------------------------------------------------


@pytest.fixture(scope="module")
def probe_bundle(tmp_path_factory, smollm2_gguf):
    from edgelora.bundle.probes import record_probes

    tmp = tmp_path_factory.mktemp("probes")
    records = record_probes(smollm2_gguf, PROMPTS, max_tokens=8)
    out = write_bundle(dist_dir=tmp / "dist", name="smol", version="1", readme_text=None,
                       files={"smol.Q4_1.gguf": smollm2_gguf},
                       manifest_extra={"probes": {"model": "smol.Q4_1.gguf", "logit_tolerance": 0.05,
                                                  "items": records}})
    return Path(out["dir"]), records


def test_probes_replay_identical_on_same_machine(probe_bundle, smollm2_gguf):
    folder, records = probe_bundle
    assert records[0]["prompt"].startswith("<|im_start|>system\nExtract")
    assert records[1]["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert all(len(r["expected_token_ids"]) >= 1 and len(r["top_k"]) == 5 for r in records)
    report = verify_bundle(folder)
    assert report["ok"], failed(report)
    assert [c["name"] for c in report["checks"]][-2:] == ["load:smol.Q4_1.gguf", "probes:smol.Q4_1.gguf"]
    assert all(p["ok"] and p["logits_bit_identical"] and p["max_abs_logit_delta"] == 0.0 for p in report["probes"])


def test_replay_reports_moved_tokens_and_logits(probe_bundle, smollm2_gguf):
    from edgelora.bundle.probes import replay_probes

    _, records = probe_bundle
    moved = json.loads(json.dumps(records))
    moved[0]["expected_token_ids"][1] += 1
    moved[1]["top_k"][0][1] += 0.5
    results = replay_probes(smollm2_gguf, moved, logit_tolerance=0.05)
    assert not results[0]["ok"] and results[0]["first_divergence"] == 1
    assert not results[1]["ok"] and abs(results[1]["max_abs_logit_delta"] - 0.5) < 1e-4
    assert "tolerance" in results[1]["detail"]
    assert replay_probes(smollm2_gguf, moved, logit_tolerance=1.0)[1]["ok"]
