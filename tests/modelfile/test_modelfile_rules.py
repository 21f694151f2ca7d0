"""A strict Modelfile parser implementing every rule of shared/reference/ollama.md, and the
Modelfile edgelora renders for a real GGUF passing it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgelora.modelfile import gotmpl
from edgelora.modelfile.chat_templates import available_chat_templates
from edgelora.modelfile.equivalence import choose_chat_template
from edgelora.modelfile.render import render_modelfile
from modelfile_fixtures import CLASSIC, INT_PARAMETERS, PARAMETERS, ModelfileViolation, parse_strict


@pytest.fixture(scope="module")
def bundle_dir(smollm2_dir, smollm2_gguf, tmp_path_factory):
    """A Modelfile rendered the way the modelfile stage does it, beside a real GGUF."""
    import os

    d = tmp_path_factory.mktemp("bundle")
    os.symlink(smollm2_gguf, d / "smollm2.Q4_1.gguf")
    jinja = json.loads((smollm2_dir / "tokenizer_config.json").read_text())["chat_template"]
    name, go_text, stops = choose_chat_template(jinja, smollm2_dir, gguf_path=smollm2_gguf)
    system = 'Reply with JSON.\n\tIndented "quoted" line\nünï 🚀 ""'
    text = render_modelfile(gguf_name="smollm2.Q4_1.gguf", template_text=go_text, stops=stops, num_ctx=2048,
                            system=system, parameters={"temperature": 0.0, "top_k": 1})
    (d / "Modelfile").write_text(text, encoding="utf-8")
    return d, go_text, stops, system


def test_rendered_modelfile_passes_every_rule_and_round_trips(bundle_dir):
    d, go_text, stops, system = bundle_dir
    cmds = parse_strict(d / "Modelfile")
    assert ("from", "./smollm2.Q4_1.gguf") in cmds
    assert ("template", go_text) in cmds  # byte for byte: no character dropped or added
    assert ("system", system) in cmds
    assert [v for k, v in cmds if k == "stop"] == stops
    assert dict(cmds)["num_ctx"] == "2048" and dict(cmds)["top_k"] == "1"
    # and the TEMPLATE read back still renders like the model's Jinja template
    assert gotmpl.render_go(dict(cmds)["template"], [[{"role": "user", "content": "hi"}]])[0].startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("name", sorted(available_chat_templates()))
def test_every_shipped_template_survives_a_modelfile(name, tmp_path):
    go_text = available_chat_templates()[name]
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    text = render_modelfile(gguf_name="m.gguf", template_text=go_text, stops=["<|x|>"], num_ctx=4096)
    (tmp_path / "Modelfile").write_text(text)
    assert dict(parse_strict(tmp_path / "Modelfile"))["template"] == go_text


@pytest.mark.parametrize("text,reason", [
    ('FROM ./m.gguf\nRENDERER x\n', "classic"),
    ('FROM ./m.gguf\nREQUIRES 0.14\n', "classic"),
    ('FROM ./missing.gguf\n', "does not exist"),
    ('FROM /abs/m.gguf\n', "relative"),
    ('FROM ../m.gguf\n', "relative"),
    ('FROM ./m.gguf\nSYSTEM """a\u200bb"""\n', "non-printable"),
    ('FROM ./m.gguf\r\nSYSTEM x\r\n', "CR"),
    ('FROM ./m.gguf\nPARAMETER num_ctx 4096.0\n', "integer"),
    ('FROM ./m.gguf\nPARAMETER Temperature 0\n', "portable"),
    ('FROM ./m.gguf\nMESSAGE tool hi\n', "role"),
    ('FROM ./m.gguf\nFROM ./m.gguf\n', "exactly one FROM"),
])
def test_parser_refuses_what_ollama_would_misread(text, reason, tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "Modelfile").write_bytes(text.encode())
    with pytest.raises(ModelfileViolation, match=reason):
        parse_strict(tmp_path / "Modelfile")


def test_parser_ends_a_value_at_the_first_closing_quote_line(tmp_path):
    # Why the renderer refuses lines ending in """: the value would end there.
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "Modelfile").write_text('FROM ./m.gguf\nTEMPLATE """a\nb"""\nc"""\n')
    with pytest.raises(ModelfileViolation, match="line 4"):  # c""" is left over as an instruction
        parse_strict(tmp_path / "Modelfile")
