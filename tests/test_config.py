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
    with pytest.raises(ConfigError, match=r"\[train\] rank: unknown field"):
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


def test_every_load_problem_at_once_with_line_and_did_you_mean(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text(
        "[project]\nname = 'ok'\n\n[train]\n# a comment\nlearnig_rate = 1e-4\nr = \"sixteen\"\n"
        "batch_size = 2\n[data]\nlearning_rate = 1.0\n[trian]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        C.load(tmp_path)
    assert err.value.problems == [
        "edgelora.toml:6: [train] learnig_rate: unknown field; did you mean 'learning_rate'?",
        "edgelora.toml:7: [train] r: expected an integer, got 'sixteen'",
        "edgelora.toml:10: [data] learning_rate: unknown field; 'learning_rate' belongs in [train]",
        "edgelora.toml:11: [trian] unknown section; did you mean 'train'?",
    ]
    found: list[str] = []
    cfg = C.load(tmp_path, problems=found)  # plan's way: gather, keep defaults, go on
    assert len(found) == 4 and cfg.train.r == 16 and cfg.train.batch_size == 2


def test_field_problems_carry_their_line(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[base]\nsource = 'hf'\nrepo = 'a/b'\n\n[train]\nr = 8\nalpha = -1\n")
    problems = _stage_problems(tmp_path)
    assert problems == [
        "edgelora.toml:1: [base] revision is required for source='hf': the 40-hex commit id "
        "(the repo's 'Files and versions' history), not a branch or tag",
        "edgelora.toml:6: [train] r and alpha must be positive",
    ], "one line for a missing revision"
    assert C.locate("edgelora.toml: [train] epochs must be positive", C.load(tmp_path).lines) == \
        "edgelora.toml:5: [train] epochs must be positive", "a key not in the file points at its section"


def test_toml_lines_skip_multiline_values():
    text = "[data]\nmix = [\n  {path = 'a', ratio = 0.1},\n]\nseed = 3\n[eval]\ngates = [\n]\n"
    lines = C.toml_lines(text)
    assert lines[("data", "mix")] == 2 and lines[("data", "seed")] == 5 and lines[("eval", "gates")] == 7
    assert ("data", "path") not in lines


def test_empty_gguf_path_is_named_not_the_project_folder(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[base]\nsource = 'gguf'\n")
    assert _stage_problems(tmp_path) == [
        "edgelora.toml:1: [base] path is empty; source='gguf' needs a .gguf file, relative to the project"]


def test_train_takes_a_list_and_max_seq_length_defaults_to_fit(tmp_path):
    (tmp_path / C.CONFIG_NAME).write_text("[data]\ntrain = ['a.jsonl', 'more/*.json']\n")
    cfg = C.load(tmp_path)
    assert cfg.data.train == ["a.jsonl", "more/*.json"] and cfg.data.max_seq_length == 0
    assert C.problems(cfg) == []
    (tmp_path / C.CONFIG_NAME).write_text("[data]\ntrain = [1]\n")
    with pytest.raises(ConfigError, match=r"\[data\] train: expected a string or a non-empty list of strings"):
        C.load(tmp_path)


def _stage_problems(project) -> list[str]:
    """What every stage command stops on: edgelora.toml's problems, [base] checked by its source."""
    from edgelora import api

    with pytest.raises(ConfigError) as err:
        api.run_stages(project, ["fetch-base"], log=lambda m: None)
    return err.value.problems
