"""`plan` says only what it checked: data tokenized with the base's chat template, GGUF headers
read before a fetch, the scaffold's placeholders, target modules, targets; every problem at once."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelora import api
from edgelora.cli import cli
from edgelora.errors import DataError, PlanError
from edgelora.testing.tiny import local_project, project_toml

DEMO = Path(__file__).resolve().parents[2] / "demo" / "data"


def _project(tmp_path: Path, base: Path, *, data: dict | None = None, **sections) -> Path:
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True, exist_ok=True)
    lines = (DEMO / "train.jsonl").read_text().splitlines()
    (proj / "data" / "train.jsonl").write_text("\n".join(lines[:16]) + "\n")
    (proj / "data" / "heldout.jsonl").write_text("\n".join(lines[16:19]) + "\n")
    config = local_project(base, **(data or {}))
    (proj / "edgelora.toml").write_text(project_toml({**config, **sections}))
    return proj


def test_truncation_stops_plan_and_prepare_data_with_numbers(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir, data={"max_seq_length": 40})
    with pytest.raises(PlanError) as err:
        api.plan(proj, log=lambda m: None)
    (problem,) = [p for p in err.value.problems if p.startswith("data:")]
    assert "19 of 19 examples (100%) are longer than max_seq_length=40" in problem
    assert "lose every assistant token" in problem and "allow_truncation = true" in problem
    assert "longest example: " in problem
    with pytest.raises(DataError, match="max_seq_length=40"):  # build and train stop in prepare-data too
        api.run_stages(proj, ["prepare-data"], log=lambda m: None)


def test_allowed_truncation_counts_agree_between_data_report_and_training(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir, data={"max_seq_length": 40, "allow_truncation": True},
                    train={"r": 2, "alpha": 4, "max_steps": 1, "batch_size": 2, "eval_every": 1, "dropout": 0.0})
    summary = api.plan(proj, log=lambda m: None)
    assert summary["truncated"] == "16 of 16 train, 3 of 3 heldout"
    ctx = api.run_stages(proj, ["train"], log=lambda m: None)
    data, train = ctx.artifacts["dataset"]["report"], ctx.artifacts["train_report"]
    assert data["without_trained_tokens"] == train["skipped_train_examples"] > 0
    assert data["heldout_without_trained_tokens"] == train["skipped_heldout_examples"]
    assert summary["lost_all_answer"] == (f"{data['without_trained_tokens']} train, "
                                          f"{data['heldout_without_trained_tokens']} heldout")


def test_max_seq_length_fits_the_data_when_unset(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir, data={"max_seq_length": None})
    summary = api.plan(proj, log=lambda m: None)
    assert summary["max_seq_length"].startswith("128 tokens (auto: longest example ")
    ctx = api.run_stages(proj, ["prepare-data"], log=lambda m: None)
    report = ctx.artifacts["dataset"]["report"]
    assert report["max_seq_length"] == 128 and report["max_seq_length_auto"] and report["truncated"] == 0
    assert 64 < report["longest_example"] <= 128


def test_fitted_length_is_capped_by_the_model_context():
    from edgelora.data.guards import fitted_max_seq_length

    assert fitted_max_seq_length(69, 8192) == 128
    assert fitted_max_seq_length(128, None) == 128
    assert fitted_max_seq_length(3, 512) == 64
    assert fitted_max_seq_length(900, 512) == 512


def test_every_problem_at_once_with_lines(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir, data={"train": "data/missing.jsonl"},
                    train={"learnig_rate": 1e-3, "r": "sixteen", "target_modules": ["qkv_proj"]})
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    text = (proj / "edgelora.toml").read_text().splitlines()
    line = {k: text.index(next(t for t in text if t.startswith(k))) + 1 for k in ("learnig_rate", "r =", "target_")}
    assert f"problem: edgelora.toml:{line['learnig_rate']}: [train] learnig_rate: unknown field; " \
           "did you mean 'learning_rate'?" in problems
    assert f"problem: edgelora.toml:{line['r =']}: [train] r: expected an integer, got 'sixteen'" in problems
    assert any(p.endswith("missing.jsonl: [data] train file not found") for p in problems)
    assert any(p.startswith(f"problem: edgelora.toml:{line['target_']}: [train] target_modules ['qkv_proj']: "
                            "the base has no such module") and "q_proj" in p for p in problems)
    assert len(problems) == 4, result.output


def test_scaffold_placeholders_are_a_problem(tiny_llama_dir, tmp_path):
    api.init_project(tmp_path / "p")
    cfg = (tmp_path / "p" / "edgelora.toml").read_text()
    cfg = cfg.replace('source = "embedded"', 'source = "local"').replace('path = ""', f'path = "{tiny_llama_dir}"')
    (tmp_path / "p" / "edgelora.toml").write_text(cfg)
    with pytest.raises(PlanError) as err:
        api.plan(tmp_path / "p", log=lambda m: None)
    assert ["[data] train: 2 example(s) are the placeholders `edgelora init` wrote; replace them with your own "
            "conversations"] == [p for p in err.value.problems if "placeholder" in p]


def test_targets_statement_is_exact(tiny_llama_dir, tmp_path):
    proj = _project(tmp_path, tiny_llama_dir, export={"targets": []})
    summary = api.plan(proj, log=lambda m: None)
    assert summary["targets"] == "ollama (the default targets; [export] targets = [] adds none)"


def test_gguf_base_is_read_before_fetch(smollm2_gguf, tmp_path):
    proj = _project(tmp_path, Path("unused"), data={"max_seq_length": None},
                    train={"target_modules": ["q_proj", "qkv_proj"]})
    cfg = (proj / "edgelora.toml").read_text().replace('source = "local"', 'source = "gguf"')
    shutil.copy(smollm2_gguf, proj / "base.gguf")
    (proj / "edgelora.toml").write_text(cfg.replace('path = "unused"', 'path = "base.gguf"'))
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 1  # target modules are checked against the GGUF's tensor names
    assert "[train] target_modules ['qkv_proj']: the base has no such module (its layer weights: down_proj, " \
           "gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)" in result.output
    (proj / "edgelora.toml").write_text((proj / "edgelora.toml").read_text().replace(', "qkv_proj"', ""))
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "architecture       llama (GGUF header)" in out
    assert "chat_template      smollm2 (stops <|im_end|>" in out
    assert "max_seq_length     128 tokens (auto" in out  # tokenized with the GGUF's own tokenizer
    assert out.rstrip().endswith("plan: no problems found")
    assert not (proj / ".edgelora").exists(), "plan imports no weights"
    as_json = CliRunner().invoke(cli, ["plan", str(proj), "--json"])
    summary = json.loads(as_json.stdout)
    assert summary["context"] == 8192 and summary["architecture"] == "llama (GGUF header)"


def test_empty_gguf_path_is_one_problem(tmp_path):
    proj = tmp_path / "p"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "train.jsonl").write_text((DEMO / "train.jsonl").read_text())
    (proj / "edgelora.toml").write_text('[base]\nsource = "gguf"\n')
    with pytest.raises(PlanError) as err:
        api.plan(proj, log=lambda m: None)
    assert err.value.problems == ["edgelora.toml:1: [base] path is empty; source='gguf' needs a .gguf file, "
                                  "relative to the project"]


def test_hf_base_without_revision_is_one_line(tmp_path):
    proj = tmp_path / "p"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "train.jsonl").write_text((DEMO / "train.jsonl").read_text())
    (proj / "edgelora.toml").write_text('[base]\nsource = "hf"\nrepo = "HuggingFaceTB/SmolLM2-135M-Instruct"\n')
    with pytest.raises(PlanError) as err:
        api.plan(proj, log=lambda m: None)
    assert [p for p in err.value.problems if "revision" in p] == [
        "edgelora.toml:1: [base] revision is required for source='hf': the 40-hex commit id (the repo's "
        "'Files and versions' history), not a branch or tag"]


def test_stage_commands_stop_on_config_problems_too(tmp_path):
    from edgelora.errors import ConfigError

    (tmp_path / "edgelora.toml").write_text('[base]\nsource = "gguf"\n[train]\ndropout = 2.0\n')
    with pytest.raises(ConfigError) as err:
        api.run_stages(tmp_path, ["fetch-base"], log=lambda m: None)
    assert err.value.problems == [
        "edgelora.toml:1: [base] path is empty; source='gguf' needs a .gguf file, relative to the project",
        "edgelora.toml:4: [train] dropout must be in [0, 1)"]
