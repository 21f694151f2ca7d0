"""A strict reader of Modelfiles: every rule of shared/reference/ollama.md, for the Modelfile and build tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
