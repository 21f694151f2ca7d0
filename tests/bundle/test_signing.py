"""Signing: keygen, signed builds, verify --trust (security.md, target side: signature rows),
and the by-hand OpenSSL check the bundle README describes."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.errors import SignatureError
from edgelora.bundle.signing import generate_keypair
from edgelora.host.verify import verify_bundle

from bundle_fixtures import make_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return generate_keypair(d / "publisher.key"), generate_keypair(d / "stranger.key")


@pytest.fixture
def signed(tmp_path, keys):
    return make_bundle(tmp_path, signing_key=keys[0]["private"])


def failed(report):
    return [c for c in report["checks"] if not c["ok"]]


def test_keygen_modes_and_no_overwrite(tmp_path):
    result = CliRunner().invoke(cli, ["keygen", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (tmp_path / "k").read_bytes()
    again = CliRunner().invoke(cli, ["keygen", str(tmp_path / "k")])
    assert again.exit_code == 1 and "already exists" in again.output
    assert (tmp_path / "k").read_bytes() == before
    (tmp_path / "k2.pub").write_text("x")  # a stray public key also blocks, private not created
    with pytest.raises(SignatureError):
        generate_keypair(tmp_path / "k2")
    assert not (tmp_path / "k2").exists()


def test_signed_bundle_verifies_dir_and_tar(signed, keys):
    folder, tar = Path(signed["dir"]), Path(signed["tar"])
    assert (folder / "manifest.sig").read_text().startswith("edgelora-sig-v1 ed25519 " + keys[0]["key_id"])
    with tarfile.open(tar) as t:
        assert any(m.name.endswith("/manifest.sig") for m in t.getmembers())
    for path in (folder, tar):
        for trust in (keys[0]["public"], Path(keys[0]["public"]).parent):  # a key file or a trust folder
            report = verify_bundle(path, run_probes=False, trust=trust)
            assert report["ok"], failed(report)
            assert report["checks"][0]["name"] in ("signature", "archive")
            assert "publisher.key.pub" in report["signed_by"]


def test_unsigned_refused_when_trust_given_even_if_hashes_match(tmp_path, keys):
    unsigned = make_bundle(tmp_path)
    for path in (unsigned["dir"], unsigned["tar"]):
        report = verify_bundle(path, run_probes=False, trust=keys[0]["public"])
        bad = failed(report)
        assert not report["ok"] and bad[0]["name"] == "signature" and "missing" in bad[0]["detail"]
        assert report["manifest"] is None  # nothing parsed
    assert verify_bundle(unsigned["dir"], run_probes=False)["ok"]  # without --trust it still passes


def test_signed_by_untrusted_key(tmp_path, keys):
    other = make_bundle(tmp_path, signing_key=keys[1]["private"])
    report = verify_bundle(other["dir"], run_probes=False, trust=keys[0]["public"])
    assert failed(report)[0]["name"] == "signature" and "untrusted key" in failed(report)[0]["detail"]


def test_manifest_changed_by_one_byte_is_a_signature_failure(signed, keys, tmp_path):
    folder = Path(signed["dir"])
    raw = bytearray((folder / "manifest.json").read_bytes())
    raw[raw.index(b'"1.0.0"') + 1] = ord("9")  # still valid JSON: version 9.0.0
    (folder / "manifest.json").write_bytes(bytes(raw))
    report = verify_bundle(folder, run_probes=False, trust=keys[0]["public"])
    bad = failed(report)
    assert len(bad) == 1 and bad[0]["name"] == "signature" and "signature failure" in bad[0]["detail"]
    assert report["manifest"] is None
    # re-serialising would hide whitespace changes; the exact bytes are what is signed
    (folder / "manifest.json").write_bytes(bytes(raw).replace(b'"9.0.0"', b'"1.0.0"') + b"\n")
    assert "signature failure" in failed(verify_bundle(folder, run_probes=False, trust=keys[0]["public"]))[0]["detail"]


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"x" * 5000,
                                     b"edgelora-sig-v1 ed25519 " + b"0" * 64 + b" " + b"Z" * 128 + b"\n"])
def test_malformed_signature_file(signed, keys, content):
    folder = Path(signed["dir"])
    (folder / "manifest.sig").write_bytes(content)
    bad = failed(verify_bundle(folder, run_probes=False, trust=keys[0]["public"]))
    assert bad[0]["name"] == "signature"


def test_signature_symlink_refused(signed, keys, tmp_path):
    folder = Path(signed["dir"])
    shutil.copy(folder / "manifest.sig", tmp_path / "real.sig")
    (folder / "manifest.sig").unlink()
    (folder / "manifest.sig").symlink_to(tmp_path / "real.sig")
    bad = failed(verify_bundle(folder, run_probes=False, trust=keys[0]["public"]))
    assert bad[0]["name"] == "signature" and "symlink" in bad[0]["detail"]


def test_cli_verify_trust(signed, keys, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", signed["tar"], "--no-probes", "--trust", keys[0]["public"]])
    assert ok.exit_code == 0 and "signed by trusted key" in ok.output, ok.output
    bad = runner.invoke(cli, ["verify", signed["tar"], "--no-probes", "--trust", keys[1]["public"]])
    assert bad.exit_code == 1 and "untrusted key" in bad.output


def test_openssl_by_hand_as_the_readme_says(signed, keys):
    """The README's OpenSSL recipe really checks the signature (and fails on a changed manifest)."""
    if not (shutil.which("openssl") and shutil.which("xxd")):
        pytest.skip("openssl/xxd not installed")
    folder = Path(signed["dir"])
    script = ("cut -d' ' -f4 manifest.sig | tr -d '\\n' | xxd -r -p > sig.bin && "
              f"openssl pkeyutl -verify -pubin -inkey {keys[0]['public']} -rawin -in manifest.json -sigfile sig.bin")
    readme = (Path(__file__).resolve().parents[2] / "templates" / "bundle_README.md.j2").read_text()
    assert "openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin -in manifest.json" in readme
    # the bundle must stay clean for later checks: run in a copy
    work = folder.with_name("copy")
    shutil.copytree(folder, work)
    proc = subprocess.run(["sh", "-c", script], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0 and "Signature Verified Successfully" in proc.stdout, proc.stdout + proc.stderr
    (work / "manifest.json").write_bytes((work / "manifest.json").read_bytes() + b" ")
    assert subprocess.run(["sh", "-c", script], cwd=work, capture_output=True).returncode != 0
