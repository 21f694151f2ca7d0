"""A strict Modelfile parser implementing every rule of shared/reference/ollama.md, and the
Modelfile edgelora renders for a real GGUF passing it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgelora import gotmpl
from edgelora.modelfile import available_chat_templates, choose_chat_template, render_modelfile

CLASSIC = {"from", "adapter", "template", "system", "parameter", "message", "license"}
PARAMETERS = {"num_ctx", "num_batch", "num_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k", "top_p",
              "typical_p", "repeat_last_n", "temperature", "repeat_penalty", "presence_penalty",
              "frequency_penalty", "stop", "min_p"}
INT_PARAMETERS = {"num_ctx", "num_batch", "num_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k",
                  "repeat_last_n"}


class ModelfileViolation(AssertionError):
    pass


def parse_strict(path: Path) -> list[tuple[str, str]]:
    """[(instruction, value)] of ``path``, raising on anything Ollama would read differently
    from how it reads, or that older Ollama versions reject."""
    raw = path.read_bytes()
    if b"\r" in raw:
        raise ModelfileViolation("CR found: write LF only (Ollama keeps the CR of CRLF in values)")
    text = raw.decode("utf-8")
    for ch in text:  # Ollama's parser drops these silently: refuse them instead
        if ch not in "\t\n" and not ch.isprintable():
            raise ModelfileViolation(f"non-printable U+{ord(ch):04X} would be silently dropped")
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):  # comments only at the start of a line
            continue
        m = re.match(r"^(\S+)\s+(.*)$", line, re.S)
        if not m:
            raise ModelfileViolation(f"line {i}: instruction without a value: {line!r}")
        word, rest = m.group(1).lower(), m.group(2)
        if word not in CLASSIC:
            raise ModelfileViolation(f"line {i}: {m.group(1)} is not one of the seven classic instructions")
        name = None
        if word == "parameter":
            pm = re.match(r"^(\S+)\s+(.*)$", rest)
            if not pm:
                raise ModelfileViolation(f"line {i}: PARAMETER without a value")
            name, rest = pm.group(1), pm.group(2)
            if name not in PARAMETERS:
                raise ModelfileViolation(f"line {i}: PARAMETER {name} is not portable (names are lower-case)")
        for quote in ('"""', '"'):
            if rest.startswith(quote):
                body = [rest[len(quote):]]
                # the value ends at the first line whose trimmed text ends with the quote
                while not (body[-1].rstrip().endswith(quote) and (len(body) > 1 or len(body[0].rstrip()) >= len(quote))):
                    if i >= len(lines):
                        raise ModelfileViolation(f"unterminated {quote} value of {word}")
                    body.append(lines[i])
                    i += 1
                value = "\n".join(body).rstrip()[: -len(quote)]
                if quote == '"' and '"' in value:
                    raise ModelfileViolation(f"{word}: a double quote inside a \"...\" value cannot be escaped")
                break
        else:
            value = rest.strip()
        if word == "parameter":
            if name in INT_PARAMETERS and not re.fullmatch(r"-?\d+", value):
                raise ModelfileViolation(f"PARAMETER {name} {value!r} is not an integer literal")
            out.append((name, value))
        else:
            if word == "message" and value.split(" ", 1)[0] not in ("system", "user", "assistant"):
                raise ModelfileViolation(f"MESSAGE role {value.split(' ', 1)[0]!r}")
            out.append((word, value))
    froms = [v for k, v in out if k == "from"]
    if len(froms) != 1:
        raise ModelfileViolation(f"expected exactly one FROM, got {len(froms)}")
    target = Path(froms[0])
    if target.is_absolute() or ".." in target.parts:
        raise ModelfileViolation(f"FROM {froms[0]} must be relative to the Modelfile's folder, inside it")
    if not (path.parent / target).is_file():  # else Ollama takes it for a model name and pulls it
        raise ModelfileViolation(f"FROM {froms[0]} does not exist next to the Modelfile")
    return out


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
