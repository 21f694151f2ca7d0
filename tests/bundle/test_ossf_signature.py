"""model.sig: edgelora writes the OpenSSF model-signing format; that project's own verifier
(model-signing, the PyPI package) accepts it with the public key and rejects a changed bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.errors import SignatureError
from edgelora.bundle.ossf_signature import MODEL_SIGNATURE, load_ec_private_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle_fixtures import make_gguf  # noqa: E402


def _keygen(path: Path, key_type: str) -> Path:
    result = CliRunner().invoke(cli, ["keygen", str(path), "--type", key_type])
    assert result.exit_code == 0, result.output
    return path


def _signed_bundle(tmp_path: Path) -> tuple[Path, Path]:
    from edgelora.bundle.layout import write_bundle

    ec = _keygen(tmp_path / "keys" / "ms", "ecdsa-p256")
    ed = _keygen(tmp_path / "keys" / "ed", "ed25519")
    gguf = make_gguf(tmp_path / "m.gguf")
    (tmp_path / "eval.json").write_text("{}")
    out = write_bundle(dist_dir=tmp_path / "dist", name="demo", version="1.0.0",
                       files={"demo.Q8_0.gguf": gguf, "reports/eval.json": tmp_path / "eval.json"},
                       readme_text="demo\n", signing_key=ed, model_signing_key=ec)
    return Path(out["dir"]), Path(out["tar"])


def _model_signing_verify(folder: Path, public_key: Path) -> subprocess.CompletedProcess:
    """model-signing's own CLI, in a child process, offline where namespaces allow."""
    from edgelora.testing.offline import no_network_prefix

    cmd = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(folder / MODEL_SIGNATURE),
           "--public_key", str(public_key), str(folder)]
    return subprocess.run((no_network_prefix() or []) + cmd, capture_output=True, text=True, timeout=300)


def test_keygen_ecdsa_p256_and_key_checks(tmp_path):
    key = _keygen(tmp_path / "k", "ecdsa-p256")
    assert load_ec_private_key(key).curve.name == "secp256r1"
    assert oct(key.stat().st_mode & 0o777) == "0o600" and (tmp_path / "k.pub").read_text().startswith("-----BEGIN")
    ed = _keygen(tmp_path / "e", "ed25519")
    with pytest.raises(SignatureError, match="needs an ECDSA key on P-256, P-384 or P-521"):
        load_ec_private_key(ed)


def test_model_sig_is_in_the_folder_and_tar_and_verify_accepts_it(tmp_path):
    folder, tar = _signed_bundle(tmp_path)
    sig = json.loads((folder / MODEL_SIGNATURE).read_text())
    assert sig["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    import tarfile

    with tarfile.open(tar) as t:
        assert f"demo-1.0.0/{MODEL_SIGNATURE}" in t.getnames()
    for target in (folder, tar):
        result = CliRunner().invoke(cli, ["verify", str(target), "--no-probes", "--trust",
                                          str(tmp_path / "keys" / "ed.pub")])
        assert result.exit_code == 0, result.output


def test_openssf_verifier_accepts_model_sig_and_rejects_changes(tmp_path):
    pytest.importorskip("model_signing", reason="model-signing (the OpenSSF verifier) is in the test extra")
    folder, _ = _signed_bundle(tmp_path)
    public = tmp_path / "keys" / "ms.pub"
    ok = _model_signing_verify(folder, public)
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    # every file is covered, manifest.json and manifest.sig included
    for victim in ("manifest.json", "demo.Q8_0.gguf", "manifest.sig"):
        copy = tmp_path / f"copy-{victim}"
        shutil.copytree(folder, copy)
        with open(copy / victim, "ab") as f:
            f.write(b"\n")
        bad = _model_signing_verify(copy, public)
        assert bad.returncode != 0, victim
    extra = tmp_path / "copy-extra"
    shutil.copytree(folder, extra)
    (extra / "reports" / "added.txt").write_text("not signed")
    assert _model_signing_verify(extra, public).returncode != 0
    other = _keygen(tmp_path / "keys" / "other", "ecdsa-p256")
    assert _model_signing_verify(folder, Path(str(other) + ".pub")).returncode != 0
