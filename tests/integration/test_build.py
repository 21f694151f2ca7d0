"""`edgelora build` end to end on a tiny local Llama: bundle, verify, stage cache, bad inputs."""

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora import api
from edgelora.cli import cli
from edgelora.errors import BundleError, LockMismatch
from edgelora.testing.offline import no_network_prefix
from edgelora.testing.tiny import local_project, project_toml

DEMO = Path(__file__).resolve().parents[2] / "demo" / "data"

def _config(base: Path, quantize=("Q8_0",)) -> str:
    return project_toml({
        **local_project(base),
        "train": {"r": 4, "alpha": 8, "max_steps": 2, "batch_size": 4, "eval_every": 1},
        "export": {"quantize": list(quantize), "min_top1_agreement": 0.9},
        "bundle": {"probes": 1, "probe_tokens": 4},
    })


def _project(tmp_path: Path, base: Path, quantize=("Q8_0",)) -> Path:
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True, exist_ok=True)
    lines = (DEMO / "train.jsonl").read_text().splitlines()
    (proj / "data" / "train.jsonl").write_text("\n".join(lines[:16]) + "\n")
    (proj / "data" / "heldout.jsonl").write_text("\n".join(lines[16:19]) + "\n")
    (proj / "edgelora.toml").write_text(_config(base, quantize))
    return proj


@pytest.fixture(scope="module")
def built(tiny_llama_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("base") / "tiny"
    shutil.copytree(tiny_llama_dir, base)
    proj = _project(tmp_path_factory.mktemp("build"), base)
    logs: list[str] = []
    result = api.build(proj, log=logs.append)
    return proj, base, result, logs


def test_build_writes_verified_bundle(built):
    proj, _, result, logs = built
    bundle = Path(result["bundle"]["dir"])
    assert bundle == proj / "dist" / "tiny-0.1.0"
    assert result["verify_ok"] is True
    manifest = json.loads((bundle / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert {"tiny.Q8_0.gguf", "Modelfile", "README.md"} <= paths
    assert manifest["provenance"]["adapter"]["r"] == 4
    assert manifest["provenance"]["base"]["files"]["model.safetensors"]
    assert manifest["probes"]["items"], "probes must be recorded for verify"
    assert "FROM ./tiny.Q8_0.gguf" in (bundle / "Modelfile").read_text()
    from modelfile_fixtures import parse_strict  # every rule of reference/ollama.md

    assert ("stop", "<|im_end|>") in parse_strict(bundle / "Modelfile")
    with tarfile.open(result["bundle"]["tar"]) as tar:
        assert all(m.isfile() for m in tar.getmembers())
    assert (proj / "edgelora.lock").is_file()


def test_bundle_is_honest_about_what_ollama_runs(built):
    """Greedy scores -> temperature 0; num_ctx within the trained context; no build-host paths."""
    proj, base, result, _ = built
    bundle = Path(result["bundle"]["dir"])
    from test_modelfile_rules import parse_strict

    params = dict(parse_strict(bundle / "Modelfile"))
    trained = json.loads((base / "config.json").read_text())["max_position_embeddings"]
    assert params["temperature"] in ("0", "0.0") and int(params["num_ctx"]) <= trained
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["decoding"]["evaluated"] == "greedy"
    assert "gates_failed" not in manifest and "WARNING" not in (bundle / "README.md").read_text()
    for path in [bundle / "manifest.json", *sorted((bundle / "reports").glob("*.json"))]:
        text = path.read_text()
        for host_path in (str(proj), str(base), str(Path.home())):
            assert host_path not in text, f"{path.name} names the build host's {host_path}"


def test_cli_verify_tar_and_tamper(built, tmp_path):
    proj, _, result, _ = built
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", result["bundle"]["tar"]])
    assert ok.exit_code == 0, ok.output
    copy = tmp_path / "b"
    shutil.copytree(result["bundle"]["dir"], copy)
    gguf = copy / "tiny.Q8_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[-10] ^= 1
    gguf.write_bytes(bytes(data))
    bad = runner.invoke(cli, ["verify", str(copy), "--no-probes"])
    assert bad.exit_code == 1
    assert "tiny.Q8_0.gguf" in bad.output


def test_cli_build_json_then_chat_with_the_bundle_and_clean(built):
    proj, _, result, _ = built
    runner = CliRunner()
    again = runner.invoke(cli, ["build", str(proj), "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["bundle"]["dir"] == result["bundle"]["dir"] and report["verify_ok"] is True
    assert "train: skipped, inputs and config unchanged" in again.stderr
    chat = runner.invoke(cli, ["chat", result["bundle"]["tar"], "Hello", "--max-tokens", "4"])
    assert chat.exit_code == 0, chat.output
    dry = runner.invoke(cli, ["clean", str(proj), "--dry-run"])
    assert dry.exit_code == 0 and "would free" in dry.output


def test_build_logs_round_numbers_and_refuse_unknown_stages(built):
    import re

    proj, _, _, logs = built
    long_floats = [line for line in logs if re.search(r"\d\.\d{6,}", line)]
    assert not long_floats, long_floats
    assert any(re.search(r"best eval loss \d+(\.\d{1,3})?,", line) for line in logs), logs
    bogus = CliRunner().invoke(cli, ["build", str(proj), "--force", "bogus"])
    assert bogus.exit_code == 2 and "--force bogus: no such stage (stages: fetch-base, " in bogus.output


def test_eval_prints_one_step_counter(built):
    import re

    proj, _, _, _ = built
    logs: list[str] = []
    api.evaluate(proj, models=["base", "gguf:Q8_0"], sets=["heldout"], log=logs.append)
    totals = {m.group(1) for line in logs if (m := re.match(r"\[\d+/(\d+)\]", line))}
    assert len(totals) == 1, logs


def test_second_build_with_new_quant_type_skips_training_and_conversion(built):
    proj, base, _, _ = built
    # gate = "report": a random tiny model's Q4_0 fails the default quality gate (its own test
    # is tests/test_quant_quality.py); here it must ship to prove the stage cache.
    text = (proj / "edgelora.toml").read_text().replace('quantize = ["Q8_0"]',
                                                         'quantize = ["Q8_0", "Q4_0"]\ngate = "report"')
    (proj / "edgelora.toml").write_text(text)
    logs: list[str] = []
    # same version, other content: dist/ is not silently overwritten
    with pytest.raises(BundleError, match="already holds tiny 0.1.0 with different files"):
        api.build(proj, log=logs.append)
    result = api.build(proj, log=logs.append, force=["bundle"])
    joined = "\n".join(logs)
    for stage in ("train", "merge", "convert"):
        assert f"{stage}: skipped, inputs and config unchanged" in joined, joined
    assert "quantize: running" in joined
    manifest = json.loads((Path(result["bundle"]["dir"]) / "manifest.json").read_text())
    assert "tiny.Q4_0.gguf" in {f["path"] for f in manifest["files"]}
    assert {"reports/quant_quality.md", "reports/quant_quality.json"} <= {f["path"] for f in manifest["files"]}
    # every shipped GGUF has its Modelfile and its probes, and verify replayed both
    assert all(t["ok"] for t in manifest["targets"].values()), manifest["targets"]
    probed = {manifest["probes"]["model"], *manifest["probes"]["by_model"]}
    assert probed == {"tiny.Q8_0.gguf", "tiny.Q4_0.gguf"}
    assert all(manifest["probes"]["by_model"].values()) and manifest["probes"]["items"]
    other = next(iter(manifest["probes"]["by_model"])).split(".")[1]
    assert f"FROM ./tiny.{other}.gguf" in (Path(result["bundle"]["dir"]) / f"Modelfile.{other}").read_text()
    assert result["verify_ok"] is True


def test_lock_mismatch_is_a_hard_error_with_both_hashes(built):
    proj, base, _, _ = built
    lock = json.loads((proj / "edgelora.lock").read_text())
    real = lock["base"]["files"]["config.json"]
    lock["base"]["files"]["config.json"] = "0" * 64
    (proj / "edgelora.lock").write_text(json.dumps(lock))
    try:
        with pytest.raises(LockMismatch) as e:
            api.run_stages(proj, ["fetch-base"], log=lambda m: None)
        assert "0" * 64 in str(e.value) and real in str(e.value)
    finally:
        lock["base"]["files"]["config.json"] = real
        (proj / "edgelora.lock").write_text(json.dumps(lock))


def test_plan_reports_malformed_line_with_file_and_line(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir)
    with open(proj / "data" / "train.jsonl", "a") as f:
        f.write("{not json\n")
    (proj / "edgelora.toml").write_text((proj / "edgelora.toml").read_text().replace("version = \"0.1.0\"", "version = \"x\""))
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 1
    assert "train.jsonl:17" in result.output
    assert "semantic version" in result.output, "plan reports every problem at once"
    assert "Traceback" not in result.output


def test_pickle_weights_refused_in_plan(tiny_llama_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    proj = _project(tmp_path, base)
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 1 and "pytorch_model.bin" in result.output


def test_init_then_plan(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path / "p")]).exit_code == 0
    assert (tmp_path / "p" / "edgelora.toml").is_file()
    again = runner.invoke(cli, ["init", str(tmp_path / "p")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_build_and_verify_work_with_networking_off(built):
    """A rebuild (every stage re-checked, cached ones skipped) and verify run in a network namespace."""
    import subprocess
    import sys

    prefix = no_network_prefix()
    if prefix is None:
        pytest.skip("unshare -n is not available here")
    proj, _, result, _ = built
    exe = [sys.executable, "-m", "edgelora.cli"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))}
    probe = subprocess.run(prefix + [sys.executable, "-c",
                                     "import socket; socket.create_connection(('1.1.1.1', 443), timeout=2)"],
                           capture_output=True, text=True)
    assert probe.returncode != 0, "the namespace must really have no network"
    verify = subprocess.run(prefix + exe + ["verify", result["bundle"]["tar"]], capture_output=True, text=True, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    build = subprocess.run(prefix + exe + ["build", str(proj)], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    assert "verify: ok" in build.stdout
