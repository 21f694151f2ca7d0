"""The command line behaves like its neighbours (llm, ollama, huggingface-cli): --debug anywhere,
stable exit codes in --help, an example in every --help, short human summaries with --json for
the full report, unknown stage names refused."""

import json

import pytest
from click.testing import CliRunner

from edgelora.cli import EXAMPLES, cli


def test_top_level_help_has_exit_codes_and_whole_descriptions():
    out = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    for line in ("0  success", "1  problems found", "2  usage error", "3  an [eval] gate failed"):
        assert line in out
    assert "..." not in out.split("Commands:")[1], "click's default cuts descriptions at the column width"
    words = " ".join(out.split())
    assert "Check config, data (tokenized with the base's chat template), base, architecture and targets: " \
           "every problem." in words
    assert "Example:" in out


def test_every_command_help_has_an_example():
    runner = CliRunner()
    for name, command in cli.commands.items():
        assert name in EXAMPLES, f"add an example of `edgelora {name}` to edgelora.cli.EXAMPLES"
        out = runner.invoke(cli, [name, "--help"]).output
        assert "Example" in out and EXAMPLES[name].splitlines()[0] in out, name


def test_debug_after_the_command(tmp_path):
    runner = CliRunner()
    plain = runner.invoke(cli, ["plan", str(tmp_path)])
    after = runner.invoke(cli, ["plan", str(tmp_path), "--debug"])
    before = runner.invoke(cli, ["--debug", "plan", str(tmp_path)])
    assert plain.exit_code == after.exit_code == before.exit_code == 1
    assert "edgelora.toml: not found" in plain.output and "Traceback" not in plain.output
    assert "Traceback" in after.output and "Traceback" in before.output


def test_force_names_a_stage(tmp_path):
    (tmp_path / "edgelora.toml").write_text('[base]\nsource = "local"\npath = "nowhere"\n')
    from edgelora import api
    from edgelora.errors import UsageError

    with pytest.raises(UsageError, match=r"--force bogus: no such stage \(stages: fetch-base, convert-base, prepare-data, "):
        api.run_stages(tmp_path, ["fetch-base"], force=["bogus"], log=lambda m: None)
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--force", "--debug"])
    assert "no such stage" not in result.output  # train's own --force is a flag


def test_convert_quantize_merge_summaries_and_json(tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    runner = CliRunner()
    gguf = tmp_path / "m.F16.gguf"
    res = runner.invoke(cli, ["convert", str(tiny_llama_dir), "-o", str(gguf), "--no-validate"])
    assert res.exit_code == 0, res.output
    (line,) = res.output.splitlines()
    assert line.startswith(f"{gguf}: llama F16, ") and " tensors, " in line and " MiB in " in line
    q8 = tmp_path / "m.Q8_0.gguf"
    res = runner.invoke(cli, ["quantize", str(gguf), "--type", "q8_0", "-o", str(q8)])
    assert res.exit_code == 0 and res.output.startswith(f"{q8}: Q8_0, ") and " -> " in res.output
    res = runner.invoke(cli, ["quantize", str(gguf), "--type", "Q8_0", "-o", str(q8), "--json"])
    assert json.loads(res.output)["qtype"] == "Q8_0"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "ad")
    res = runner.invoke(cli, ["merge", str(tiny_llama_dir), str(tmp_path / "ad"), "-o", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("merged 2 tensors into ") and res.output.count("\n") == 1
    res = runner.invoke(cli, ["merge", str(tiny_llama_dir), str(tmp_path / "ad"), "-o", str(tmp_path / "m2"), "--json"])
    assert json.loads(res.output)["merged_tensors"] == 2
