"""Verify and install on the real embedded SmolLM2 GGUF with networking off (a network
namespace via ``unshare -rn``): signature, hashes, GGUF header, llama-cpp-python load, probe
replay, then the store install, exactly as on an air-gapped host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgelora.bundle.layout import write_bundle
from edgelora.bundle.signing import generate_keypair
from edgelora.testing.offline import no_network_prefix

from bundle_fixtures import MODELFILE, assert_store_consistent

PROMPTS = [[{"role": "user", "content": "Say hi."}], [{"role": "system", "content": "Reply in French."},
                                                     {"role": "user", "content": "Good morning"}]]


@pytest.fixture(scope="module")
def signed_smol(tmp_path_factory, smollm2_gguf):
    from edgelora.bundle.probes import record_probes

    tmp = tmp_path_factory.mktemp("offline")
    keys = generate_keypair(tmp / "keys" / "publisher.key")
    (tmp / "Modelfile").write_text(MODELFILE.format(gguf="smol.Q4_1.gguf"))
    records = record_probes(smollm2_gguf, PROMPTS, max_tokens=6)
    out = write_bundle(dist_dir=tmp / "dist", name="smol", version="0.2.0", readme_text="# smol\n",
                       files={"smol.Q4_1.gguf": smollm2_gguf, "Modelfile": tmp / "Modelfile"},
                       manifest_extra={"ollama": {"model": "smol:0.2.0"},
                                       "probes": {"model": "smol.Q4_1.gguf", "logit_tolerance": 0.05,
                                                  "items": records}},
                       signing_key=keys["private"])
    return out, keys, tmp


def test_verify_and_install_with_networking_off(signed_smol):
    prefix = no_network_prefix()
    if prefix is None:
        pytest.skip("unshare -n is not available here")
    out, keys, tmp = signed_smol
    probe = subprocess.run(prefix + [sys.executable, "-c",
                                     "import socket; socket.create_connection(('1.1.1.1', 443), timeout=2)"],
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the namespace must really have no network"
    exe = prefix + [sys.executable, "-m", "edgelora.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_MODELS",)}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not Path(p, "ollama").exists())
    store = tmp / "models"
    verify = subprocess.run(exe + ["verify", out["tar"], "--trust", keys["public"], "--json"],
                            capture_output=True, text=True, env=env)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    report = json.loads(verify.stdout)
    names = [c["name"] for c in report["checks"]]
    assert names[0] == "signature" and names[-2:] == ["load:smol.Q4_1.gguf", "probes:smol.Q4_1.gguf"]
    assert len(report["probes"]) == 2 and all(p["ok"] for p in report["probes"])
    install = subprocess.run(exe + ["install", out["tar"], "--trust", keys["public"], "--store", str(store)],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    assert "installed smol:0.2.0" in install.stdout
    listing = subprocess.run(exe + ["list", "--store", str(store), "--json"], capture_output=True, text=True, env=env)
    rows = json.loads(listing.stdout)
    assert rows[0]["model"] == "smol:0.2.0" and rows[0]["version"] == "0.2.0" and rows[0]["present"]
    assert "publisher.key.pub" in rows[0]["signed_by"]
    assert_store_consistent(store)
    # the GGUF blob is byte-identical to the verified file
    gguf_sha = next(e["sha256"] for e in out["manifest"]["files"] if e["path"] == "smol.Q4_1.gguf")
    assert (store / "blobs" / f"sha256-{gguf_sha}").stat().st_size == Path(out["dir"], "smol.Q4_1.gguf").stat().st_size


def test_readable_table_names_moved_probes(signed_smol, tmp_path):
    """A probe whose recorded logits moved past the tolerance is named, with how far it moved."""
    from click.testing import CliRunner

    from edgelora.cli import cli

    out, _, _ = signed_smol
    manifest = dict(out["manifest"])
    probes = json.loads(json.dumps(manifest["probes"]))
    probes["items"][1]["top_k"][0][1] += 0.25
    moved = write_bundle(dist_dir=tmp_path / "dist", name="smol", version="0.2.1",
                         files={"smol.Q4_1.gguf": Path(out["dir"], "smol.Q4_1.gguf"),
                                "Modelfile": Path(out["dir"], "Modelfile")},
                         manifest_extra={"probes": probes})
    result = CliRunner().invoke(cli, ["verify", moved["dir"]])
    assert result.exit_code == 1
    table = result.output
    assert "probe 1: first-token logit moved by 0.25" in table
    rows = [ln for ln in table.splitlines() if ln.strip().startswith(("0 ", "1 "))]
    assert "ok" in rows[0] and "MOVED" in rows[1] and "0.25" in rows[1]
