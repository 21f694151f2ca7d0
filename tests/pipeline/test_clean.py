"""`edgelora clean`: stage outputs no current stage record names are removed; the rest stays."""

import json

from click.testing import CliRunner

from edgelora.cli import cli
from edgelora.util.files import atomic_write_json


def _file(path, size=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def _project(tmp_path, *, trained=True):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "edgelora.toml").write_text("[project]\nname = 'p'\n")
    w = proj / ".edgelora"
    keep = [_file(w / "base" / "local" / "config.json"),
            _file(w / "work" / "quantize" / "p.Q8_0.gguf", 100),
            _file(w / "work" / "train" / "adapter" / "adapter_model.safetensors"),
            _file(w / "work" / "eval-cli" / "eval.md")]
    keep += [_file(w / "work" / "quantize" / "quality.md"), _file(w / "work" / "merge" / "merge_report.json")]
    stale = [_file(w / "work" / "quantize" / "p.Q4_0.gguf", 1000),  # an old [export] quantize type
             _file(w / "work" / "convert" / "old-name.F16.gguf", 2000),
             _file(w / "work" / "train" / "checkpoints" / "step-2" / "adapter.safetensors", 30),
             _file(w / "work" / "convert" / ".p.F16.gguf.abc123.partial", 5)]  # an interrupted write
    atomic_write_json(w / "cache" / "quantize.json", {"key": "k", "artifacts": {
        "quantized": {"Q8_0": str(w / "work" / "quantize" / "p.Q8_0.gguf")}, "report": {"n": 1}}, "outputs": {}})
    if trained:
        atomic_write_json(w / "cache" / "train.json", {"key": "k", "artifacts": {
            "adapter": str(w / "work" / "train" / "adapter"), "base": str(w / "base" / "local")}, "outputs": {}})
    return proj, keep, stale


def test_clean_removes_what_no_record_names(tmp_path):
    proj, keep, stale = _project(tmp_path)
    dry = CliRunner().invoke(cli, ["clean", str(proj), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert all(p.exists() for p in keep + stale)
    assert "would free 3.0 KiB (4 item(s))" in dry.output
    result = CliRunner().invoke(cli, ["clean", str(proj)])
    assert result.exit_code == 0 and "freed 3.0 KiB" in result.output
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert json.loads((proj / ".edgelora" / "cache" / "quantize.json").read_text())["key"] == "k"
    again = CliRunner().invoke(cli, ["clean", str(proj)])
    assert "freed 0 B (0 item(s))" in again.output


def test_clean_keeps_checkpoints_of_an_unfinished_training(tmp_path):
    proj, keep, stale = _project(tmp_path, trained=False)
    CliRunner().invoke(cli, ["clean", str(proj)])
    assert stale[2].exists(), "train --resume still needs them"
    assert not stale[0].exists() and not stale[3].exists()


def test_clean_wants_a_project(tmp_path):
    result = CliRunner().invoke(cli, ["clean", str(tmp_path)])
    assert result.exit_code == 1 and "edgelora.toml: not found" in result.output
