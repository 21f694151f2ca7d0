"""A stage's cache key sees the content of files its config names, not only their names."""

from __future__ import annotations

from types import SimpleNamespace

from edgelora.pipeline.runner import Fingerprints, config_values


def _ctx(root, export):
    sections = {"export": export}
    config = SimpleNamespace(resolve=lambda rel: root / rel, section=lambda name: sections[name])
    return SimpleNamespace(config=config)


def test_editing_a_named_file_in_place_changes_the_key(tmp_path):
    (tmp_path / "calib.jsonl").write_text('{"messages": []}\n')
    fp = Fingerprints(tmp_path / "fp.json")
    export = {"calibration": "calib.jsonl", "quantize": ["Q8_0"], "gate": "drop"}
    keys = ("export.calibration", "export.quantize", "export.gate")
    before = config_values(_ctx(tmp_path, export), keys, fp)
    assert before["export.quantize"] == ["Q8_0"] and before["export.gate"] == "drop"
    assert before["export.calibration"]["value"] == "calib.jsonl"
    assert config_values(_ctx(tmp_path, export), keys, fp) == before
    (tmp_path / "calib.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    after = config_values(_ctx(tmp_path, export), keys, fp)
    assert after["export.calibration"] != before["export.calibration"]
    assert after["export.quantize"] == before["export.quantize"]


def test_whole_sections_and_values_that_name_no_file_are_kept_as_they_are(tmp_path):
    fp = Fingerprints(tmp_path / "fp.json")
    export = {"calibration": "", "imatrix": "auto", "outtype": "f16"}
    assert config_values(_ctx(tmp_path, export), ("export",), fp) == {"export": export}
