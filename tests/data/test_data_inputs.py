"""Data people already have: ShareGPT records, lists of files and globs; errors one per line
with the right position."""

import json

import pytest
from click.testing import CliRunner

from edgelora.data.formats import expand_paths, load_examples, normalize_record
from edgelora.errors import DataError


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sharegpt_records_become_chat():
    record = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                                {"from": "gpt", "value": "Hello."}]}
    assert normalize_record(record) == ({"messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi?"},
                                                      {"role": "assistant", "content": "Hello."}]}, None)
    _, problem = normalize_record({"conversations": [{"from": "bot", "value": "x"}]})
    assert problem == "conversations[0] has from='bot' (expected human, gpt or system)"
    _, problem = normalize_record({"conversations": [{"from": "human", "value": "x"}]})
    assert problem == "conversation ends with 'user', expected 'assistant'"


def test_train_list_of_files_and_globs(tmp_path):
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    _jsonl(tmp_path / "chat.jsonl", [chat])
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "alpaca.json").write_text(json.dumps([{"instruction": "c", "output": "d"}]))
    _jsonl(tmp_path / "more" / "share.jsonl", [{"conversations": [{"from": "human", "value": "e"},
                                                                  {"from": "gpt", "value": "f"}]}])
    paths = expand_paths(["chat.jsonl", "more/*.json*", "chat.jsonl"], lambda p: tmp_path / p)
    assert [p.name for p in paths] == ["chat.jsonl", "alpaca.json", "share.jsonl"]
    examples = load_examples(paths)
    assert [e["messages"][-1]["content"] for e in examples] == ["b", "d", "f"]
    assert [e["source"] for e in examples] == ["chat.jsonl", "alpaca.json", "share.jsonl"]
    with pytest.raises(DataError, match=r"nothing\*\.jsonl: \[data\] glob matches no file"):
        expand_paths("nothing*.jsonl", lambda p: tmp_path / p)


def test_errors_one_per_problem_with_the_right_column(tmp_path):
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    bad_json = good[:46] + " oops" + good[46:]
    f = _jsonl(tmp_path / "t.jsonl", [good, bad_json, '{"text": 3}'])
    (tmp_path / "t.json").write_text("[\n" + good + ",\n  " + bad_json + "\n]\n")
    with pytest.raises(DataError) as err:
        load_examples(f)
    col = json.JSONDecoder().raw_decode  # where json itself stops: column 48, 1-based
    with pytest.raises(json.JSONDecodeError) as where:
        col(bad_json)
    assert err.value.problems == [f"{f}:2: invalid JSON (Expecting ',' delimiter at column {where.value.colno})",
                                  f"{f}:3: 'text' is int, expected a string"]
    assert where.value.colno == 48 and bad_json[47] == "o"
    with pytest.raises(DataError) as err:
        load_examples(tmp_path / "t.json")
    assert err.value.problems == [f"{tmp_path / 't.json'}:3: invalid JSON (Expecting ',' delimiter at column 50)"]


def test_cli_prints_one_problem_per_line(tmp_path):
    from edgelora.cli import cli

    proj = tmp_path / "p"
    (proj / "data").mkdir(parents=True)
    _jsonl(proj / "data" / "train.jsonl", ['{"text": 1}', "{bad", '{"messages": []}'])
    (proj / "edgelora.toml").write_text('[base]\nsource = "local"\npath = "nowhere"\n')
    result = CliRunner().invoke(cli, ["plan", str(proj)])
    lines = result.output.splitlines()
    data_lines = [ln for ln in lines if "train.jsonl:" in ln]
    assert [ln.split("train.jsonl:")[1] for ln in data_lines] == [
        "1: 'text' is int, expected a string", "2: invalid JSON (Expecting property name enclosed in double "
        "quotes at column 2)", "3: 'messages' must be a non-empty list"]
    assert all(ln.startswith("problem: ") and len(ln) < 200 for ln in data_lines), "one problem a line, each once"
