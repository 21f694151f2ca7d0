import dataclasses
from pathlib import Path

import pytest

from edgelora import config as C
from edgelora.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_has_help():
    for f in dataclasses.fields(C.Config):
        if f.name == "root":
            continue
        for sf in dataclasses.fields(f.default_factory):
            assert sf.metadata.get("help"), f"[{f.name}] {sf.name} has no help"


@pytest.mark.parametrize("path", [ROOT / "demo"])
def test_shipped_configs_load_without_problems(path):
    cfg = C.load(path)
    assert C.problems(cfg) == []


def test_scaffold_round_trips(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text(C.render_template())
    cfg = C.load(tmp_path)
    assert cfg.train == C.TrainConfig()
    assert C.problems(cfg) == []


def test_unknown_field_named(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[train]\nrank = 8\n")
    with pytest.raises(ConfigError, match=r"\[train\] unknown field 'rank'"):
        C.load(tmp_path)


def test_wrong_type_named(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[train]\nr = 'sixteen'\n")
    with pytest.raises(ConfigError, match=r"\[train\] r: expected an integer"):
        C.load(tmp_path)


def test_bad_toml_names_file(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[train\n")
    with pytest.raises(ConfigError, match="edgelora.toml"):
        C.load(tmp_path)


def test_problems_reported_together(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text(
        "[project]\nname = 'Bad Name'\n[base]\nsource = 'hf'\nrepo = 'a/b'\nrevision = 'main'\n"
        "[export]\nouttype = 'q4'\n")
    from edgelora import api
    from edgelora.errors import PlanError

    with pytest.raises(PlanError) as e:  # [base] fields are the hf source's check, through the registry
        api.plan(tmp_path, log=lambda *_: None)
    problems = e.value.problems
    assert any("name" in p for p in problems)
    assert any("40-hex commit" in p for p in problems)
    assert any("outtype" in p for p in problems)


@pytest.mark.parametrize("gib, passed", [(0, "auto"), (-1, None), (12.5, 12.5), (-2, "problem")])
def test_memory_budget_gib_zero_is_automatic_and_minus_one_off(tmp_path, gib, passed):
    from edgelora.training.setup import memory_budget

    (tmp_path / C.CONFIG_NAME).write_text(f"[train]\nmemory_budget_gib = {gib}\n")
    cfg = C.load(tmp_path)
    problems = [p for p in C.problems(cfg) if "memory_budget_gib" in p]
    if passed == "problem":
        assert problems and "0 (automatic), -1 (off)" in problems[0]
    else:
        assert problems == [] and memory_budget(cfg.train.memory_budget_gib) == passed
    assert C.TrainConfig().memory_budget_gib == 0 and C.TrainConfig().dropout == 0.0
