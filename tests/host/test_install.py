"""edgelora install/list/uninstall into an Ollama model store, and security.md's install-fault
table row by row: each refusal is one line, installs nothing, and leaves the previous version
usable (every manifest names complete blobs, no staging or unnamed blob left behind)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.errors import InstallError
from edgelora.host.install import install_bundle, list_installed, uninstall
from edgelora.host.store import Store

from bundle_fixtures import assert_store_consistent, make_bundle, store_state
from bundle_fixtures import fake_ollama

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(run_probes=False, log=lambda m: None)


@pytest.fixture(autouse=True)
def _no_ollama_env(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("EDGELORA_STATE_DIR", str(tmp_path / "state"))


def one_error_line(output: str) -> bool:
    """Exactly one "error: ..." line and no traceback (progress lines go to stderr too)."""
    return len([ln for ln in output.splitlines() if ln.startswith("error: ")]) == 1 and "Traceback" not in output


def manifest_of(store: Path, name: str, tag: str) -> dict:
    return json.loads((store / "manifests/registry.ollama.ai/library" / name / tag).read_bytes())


def test_install_writes_ollama_layout(tmp_path):
    b = make_bundle(tmp_path)
    store = tmp_path / "models"
    result = install_bundle(b["dir"], store=store, **QUIET)
    assert result["model"] == "demo:1.0.0" and result["new_blobs"] == 5
    doc = manifest_of(store, "demo", "1.0.0")
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    kinds = [layer["mediaType"].rsplit(".", 1)[1] for layer in doc["layers"]]
    assert kinds == ["model", "template", "system", "params"]
    blob = lambda d: (store / "blobs" / ("sha256-" + d["digest"].split(":")[1])).read_bytes()  # noqa: E731
    gguf_entry = next(e for e in b["manifest"]["files"] if e["path"].endswith(".gguf"))
    assert doc["layers"][0]["digest"] == "sha256:" + gguf_entry["sha256"]
    assert blob(doc["layers"][1]).startswith(b"{{- range .Messages }}<|im_start|>")
    assert blob(doc["layers"][2]) == b"You answer in JSON."
    assert json.loads(blob(doc["layers"][3])) == {"num_ctx": 2048, "stop": ["<|im_start|>", "<|im_end|>"],
                                                  "temperature": 0.2}
    config = json.loads(blob(doc["config"]))
    assert config["model_format"] == "gguf" and config["model_family"] == "llama" and config["file_type"] == "F32"
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in doc["layers"]]
    assert_store_consistent(store)
    # the GGUF blob is a copy (one copy), not a link to the bundle
    assert os.stat(store / "blobs" / ("sha256-" + gguf_entry["sha256"])).st_ino != \
        os.stat(Path(b["dir"]) / "demo.Q8_0.gguf").st_ino


def test_install_from_tar_renames_the_extracted_gguf(tmp_path):
    b = make_bundle(tmp_path)
    store = tmp_path / "models"
    result = install_bundle(b["tar"], store=store, name="mine:v1", **QUIET)
    assert result["model"] == "mine:v1"
    assert (store / "manifests/registry.ollama.ai/library/mine/v1").is_file()
    assert_store_consistent(store)


def test_upgrade_list_uninstall_keeps_shared_blobs(tmp_path):
    store = tmp_path / "models"
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest")
    v2 = make_bundle(tmp_path, version="1.1.0", seed=2, model="demo:latest")
    install_bundle(v1["dir"], store=store, **QUIET)
    install_bundle(v1["dir"], store=store, name="other:pinned", **QUIET)  # shares every blob
    r2 = install_bundle(v2["dir"], store=store, **QUIET)
    assert r2["removed_blobs"] == 0  # other:pinned still names every v1 blob
    assert_store_consistent(store)
    rows = {r["model"]: r for r in list_installed(store)}
    assert rows["demo:latest"]["version"] == "1.1.0" and rows["other:pinned"]["version"] == "1.0.0"
    cli_list = CliRunner().invoke(cli, ["list", "--store", str(store)])
    assert cli_list.exit_code == 0 and "demo:latest" in cli_list.output and "1.1.0" in cli_list.output
    blobs_before = set(store_state(store)["blobs"])
    assert uninstall("demo", store, log=lambda m: None) == ["demo:latest"]
    assert not (store / "manifests/registry.ollama.ai/library/demo").exists()
    state = assert_store_consistent(store)  # v1's blobs are kept for other:pinned, v2's GGUF is gone
    assert len(state["blobs"]) < len(blobs_before)
    result = CliRunner().invoke(cli, ["uninstall", "other:pinned", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert store_state(store)["blobs"] == {}
    missing = CliRunner().invoke(cli, ["uninstall", "nope", "--store", str(store)])
    assert missing.exit_code == 1 and "not installed by edgelora" in missing.output


def test_reinstall_same_bundle_is_idempotent(tmp_path):
    b = make_bundle(tmp_path)
    store = tmp_path / "models"
    install_bundle(b["dir"], store=store, **QUIET)
    again = install_bundle(b["tar"], store=store, **QUIET)
    assert again["new_blobs"] == 0 and again["reused_blobs"] == 5
    assert_store_consistent(store)


# ---- rollback protection ---------------------------------------------------------------------


def test_rollback_and_version_reuse_refused_unless_allowed(tmp_path):
    store = tmp_path / "models"
    new = make_bundle(tmp_path, version="2.0.0", seed=1, model="demo:latest")
    old = make_bundle(tmp_path, version="1.9.0", seed=2, model="demo:latest")
    reuse = make_bundle(tmp_path, version="2.0.0", seed=3, model="demo:latest")
    install_bundle(new["dir"], store=store, **QUIET)
    before = store_state(store)
    with pytest.raises(InstallError, match="rollback refused.*2.0.0.*1.9.0"):
        install_bundle(old["dir"], store=store, **QUIET)
    with pytest.raises(InstallError, match="version reuse refused"):
        install_bundle(reuse["tar"], store=store, name="elsewhere:x", **QUIET)  # any tag of the bundle counts
    assert store_state(store) == before
    result = CliRunner().invoke(cli, ["install", old["dir"], "--store", str(store), "--no-probes"])
    assert result.exit_code == 1 and one_error_line(result.output) and "--allow-downgrade" in result.output
    install_bundle(old["dir"], store=store, allow_downgrade=True, **QUIET)
    assert list_installed(store)[0]["version"] == "1.9.0"
    assert_store_consistent(store)


def test_version_ordering():
    from edgelora.bundle.manifest import compare_versions

    assert compare_versions("1.10.0", "1.9.0") == 1
    assert compare_versions("1.0.0-rc1", "1.0.0") == -1
    assert compare_versions("1.0", "1.0.0") == 0
    assert compare_versions("1.0.0+build5", "1.0.0") == 0


# ---- bad bundles install nothing --------------------------------------------------------------


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.unlink()  # bundle files may be hard links to the sources
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,reason", [
    (lambda d: _flip(d / "demo.Q8_0.gguf"), "hash mismatch"),
    (lambda d: (d / "extra.bin").write_bytes(b"x"), "unexpected file"),
    (lambda d: (d / "Modelfile").unlink(), "missing file"),
    (lambda d: os.truncate(d / "demo.Q8_0.gguf", 100), "incomplete"),
    (lambda d: ((d / "reports/eval.json").unlink(), (d / "reports/eval.json").symlink_to("/etc/passwd")), "symlink"),
    (lambda d: (d / "manifest.json").write_bytes(b" " * (2 << 20)), "invalid manifest"),
    (lambda d: os.mkfifo(d / "reports" / "pipe"), "special file"),
])
def test_bad_bundle_installs_nothing_and_keeps_previous(tmp_path, damage, reason):
    store = tmp_path / "models"
    good = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest")
    install_bundle(good["dir"], store=store, **QUIET)
    before = store_state(store)
    bad = make_bundle(tmp_path, version="1.1.0", seed=2, model="demo:latest")
    damage(Path(bad["dir"]))
    result = CliRunner().invoke(cli, ["install", bad["dir"], "--store", str(store), "--no-probes"])
    assert result.exit_code == 1, result.output
    assert one_error_line(result.output) and reason in result.output
    assert "nothing installed" in result.output
    assert store_state(store) == before
    assert_store_consistent(store)


def test_symlink_at_install_root_refused(tmp_path):
    b = make_bundle(tmp_path)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "models").symlink_to(real)
    with pytest.raises(InstallError, match="symlink"):
        install_bundle(b["dir"], store=tmp_path / "models", **QUIET)
    store = tmp_path / "store2"
    (store / "manifests/registry.ollama.ai/library").mkdir(parents=True)
    (store / "manifests/registry.ollama.ai/library/demo").symlink_to(real)
    with pytest.raises(InstallError, match="symlink"):
        install_bundle(b["dir"], store=store, **QUIET)
    assert list(real.iterdir()) == []


# ---- install faults --------------------------------------------------------------------------------


def test_disk_full_mid_copy_simulated_enospc(tmp_path, monkeypatch):
    """ENOSPC raised by the copy after half the bytes are written (simulated: monkeypatched write)."""
    import edgelora.util.hashing as hashing

    store = tmp_path / "models"
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest")
    v2 = make_bundle(tmp_path, version="1.1.0", seed=2, model="demo:latest", floats=4096)
    install_bundle(v1["dir"], store=store, **QUIET)
    before = store_state(store)
    real = hashing.copy_hashed

    def full_disk(src, dst, size):
        os.write(dst, b"\0" * (size // 2))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hashing, "copy_hashed", full_disk)
    with pytest.raises(InstallError) as e:
        install_bundle(v2["dir"], store=store, **QUIET)
    assert str(e.value).startswith("disk full: need ") and ", have " in str(e.value) and "\n" not in str(e.value)
    assert store_state(store) == before
    assert_store_consistent(store)
    monkeypatch.setattr(hashing, "copy_hashed", real)
    install_bundle(v2["dir"], store=store, **QUIET)
    assert_store_consistent(store)


def _userns_mount_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt || "
                               "mount -t tmpfs -o size=64k tmpfs \"$TMPDIR\""], capture_output=True,
                              env={**os.environ, "TMPDIR": "/tmp"}).returncode == 0
    except FileNotFoundError:
        return False


NAMESPACE_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from edgelora.host.install import install_bundle
from edgelora.errors import InstallError
from bundle_fixtures import store_state, assert_store_consistent
store = {store!r}
out = {{}}
install_bundle({v1!r}, store=store, run_probes=False, log=lambda m: None)
before = store_state(__import__("pathlib").Path(store))
{prepare}
try:
    install_bundle({v2!r}, store=store, run_probes=False, log=lambda m: None)
    out["error"] = None
except InstallError as e:
    out["error"] = str(e)
{restore}
out["unchanged"] = store_state(__import__("pathlib").Path(store)) == before
assert_store_consistent(__import__("pathlib").Path(store))
print(json.dumps(out))
"""


def _run_in_namespace(tmp_path, mount_cmd, prepare="", restore="", source="dir"):
    store = tmp_path / "mnt"
    store.mkdir()
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest", floats=16384)   # ~64 KiB GGUF
    v2 = make_bundle(tmp_path, version="1.1.0", seed=2, model="demo:latest", floats=16384)
    script = NAMESPACE_SCRIPT.format(tests=str(Path(__file__).parents[1]), store=str(store), v1=v1["dir"],
                                     v2=v2[source], prepare=prepare, restore=restore)
    (tmp_path / "script.py").write_text(script)
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", f"{mount_cmd} && exec {sys.executable} script.py"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "STORE": str(store)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not shutil.which("unshare") or not _userns_mount_ok(), reason="no user+mount namespaces")
@pytest.mark.parametrize("source", ["dir", "tar"])
def test_disk_full_on_a_real_small_tmpfs(tmp_path, source):
    """A real 160 KiB tmpfs (user + mount namespace): v1 fits, v2 does not; refused up front."""
    out = _run_in_namespace(tmp_path, 'mount -t tmpfs -o size=160k tmpfs "$STORE"', source=source)
    assert out["error"].startswith("disk full: need ") and "have" in out["error"], out
    assert out["unchanged"]


@pytest.mark.skipif(not shutil.which("unshare") or not _userns_mount_ok(), reason="no user+mount namespaces")
def test_read_only_destination(tmp_path):
    """v1 installed, then the store is remounted read-only (a real ro bind mount)."""
    prepare = ('import subprocess; subprocess.run(["mount", "-o", "remount,ro,bind", store], check=True)')
    out = _run_in_namespace(tmp_path, 'mount --bind "$STORE" "$STORE"', prepare=prepare)
    assert out["error"] and "read-only" in out["error"] and "\n" not in out["error"], out
    assert out["unchanged"]


KILL_SCRIPT = """
import sys
from edgelora.host.install import install_bundle
install_bundle(sys.argv[1], store=sys.argv[2], run_probes=False, log=lambda m: None)
"""


@pytest.mark.parametrize("point", ["blobs-staged", "blobs-moved", "manifest-committed"])
@pytest.mark.parametrize("source", ["dir", "tar"])
def test_kill_9_mid_install_then_clean_rerun(tmp_path, point, source):
    store = tmp_path / "models"
    v1 = make_bundle(tmp_path, version="1.0.0", seed=1, model="demo:latest")
    v2 = make_bundle(tmp_path, version="1.1.0", seed=2, model="demo:latest")
    install_bundle(v1["dir"], store=store, **QUIET)
    v1_manifest = manifest_of(store, "demo", "latest")
    env = {**os.environ, "EDGELORA_TEST_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, v2[source], str(store)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    # right after the kill: the model is the old one or the new one, complete either way
    now = manifest_of(store, "demo", "latest")
    assert now == v1_manifest if point != "manifest-committed" else now != v1_manifest
    for item in [now["config"]] + now["layers"]:
        assert (store / "blobs" / ("sha256-" + item["digest"][7:])).is_file()
    assert list((store / "edgelora/staging").iterdir()), "the killed run left its staging behind"
    result = install_bundle(v2[source], store=store, log=lambda m: None, run_probes=False)
    assert result["version"] == "1.1.0"
    assert_store_consistent(store)  # stale staging and orphan blobs cleaned by the re-run
    assert list_installed(store)[0]["version"] == "1.1.0"


def test_second_install_waits_or_names_the_lock_holder(tmp_path):
    b = make_bundle(tmp_path)
    store = Store(tmp_path / "models")
    with store.lock(timeout=0):
        with pytest.raises(InstallError, match=f"holds the store lock \\(pid {os.getpid()} on "):
            install_bundle(b["dir"], store=store.root, lock_timeout=0.3, **QUIET)
    assert store_state(store.root)["manifests"] == {}
    # a waiting install proceeds once the lock is released
    messages: list[str] = []
    holder = store.lock(timeout=0)
    holder.__enter__()
    t = threading.Timer(0.5, lambda: holder.__exit__(None, None, None))
    t.start()
    install_bundle(b["dir"], store=store.root, lock_timeout=10, run_probes=False, log=messages.append)
    t.join()
    assert any("waiting for the store lock held by pid" in m for m in messages)
    assert_store_consistent(store.root)


def test_two_installs_at_once_in_separate_processes(tmp_path):
    store = tmp_path / "models"
    a = make_bundle(tmp_path, name="alpha", seed=1, floats=65536)
    b = make_bundle(tmp_path, name="beta", seed=2, floats=65536)
    script = "import sys; from edgelora.host.install import install_bundle; " \
             "install_bundle(sys.argv[1], store=sys.argv[2], run_probes=False, log=print)"
    procs = [subprocess.Popen([sys.executable, "-c", script, x["tar"], str(store)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for x in (a, b)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {r["model"] for r in list_installed(store)} == {"alpha:1.0.0", "beta:1.0.0"}
    assert_store_consistent(store)


# ---- ollama create path --------------------------------------------------------------------------

FAKE_OLLAMA = """#!/bin/sh
# stands in for the ollama CLI: records its arguments, checks the Modelfile's FROM file exists
echo "$@" >> "$OLLAMA_LOG"
if [ "$1" = create ]; then
  from=$(sed -n 's/^FROM \\.\\///p' "$4")
  [ -f "$from" ] || { echo "Error: FROM file missing" >&2; exit 1; }
  [ -n "$OLLAMA_FAIL" ] && { echo "Error: unsupported architecture" >&2; exit 1; }
fi
exit 0
"""


def test_install_through_ollama_create_when_present(tmp_path, monkeypatch):
    fake_ollama(tmp_path, monkeypatch, FAKE_OLLAMA)
    b = make_bundle(tmp_path)
    result = install_bundle(b["tar"], **QUIET)
    assert result["via"] == "ollama create"
    assert (tmp_path / "calls").read_text().split()[:3] == ["create", "demo:1.0.0", "-f"]
    assert list_installed()[0]["model"] == "demo:1.0.0"
    monkeypatch.setenv("OLLAMA_FAIL", "1")
    with pytest.raises(InstallError, match="ollama create demo:9.0.0 failed .*unsupported architecture"):
        install_bundle(make_bundle(tmp_path, version="9.0.0", seed=5)["dir"], **QUIET)
    assert [r["version"] for r in list_installed()] == ["1.0.0"]
    assert "cp demo:1.0.0 demo:latest" in (tmp_path / "calls").read_text()  # `ollama run demo` works offline
    assert uninstall("demo", log=lambda m: None) == ["demo:latest", "demo:1.0.0"]
    assert "rm demo:1.0.0" in (tmp_path / "calls").read_text()


def test_verify_and_install_load_no_plugins(tmp_path):
    """The CLI on the target host: neither verify nor install looks up edgelora entry points."""
    b = make_bundle(tmp_path)
    script = textwrap.dedent("""
        import importlib.metadata as md, sys
        real = md.entry_points
        def spy(*a, **k):
            if k.get("group") == "edgelora" or (a and a[0] == "edgelora"):
                raise SystemExit("third-party plugin lookup during " + sys.argv[1])
            return real(*a, **k)
        md.entry_points = spy
        from edgelora.cli import main
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None), e.code
        assert "edgelora.plugins" not in sys.modules, "plugin machinery imported"
        print("clean")
    """)
    for args in (["verify", b["tar"], "--no-probes"],
                 ["install", b["dir"], "--no-probes", "--store", str(tmp_path / "m")]):
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                              cwd=tmp_path)
        assert proc.returncode == 0 and "clean" in proc.stdout, proc.stdout + proc.stderr
