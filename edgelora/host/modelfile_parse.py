"""Read a bundle's Modelfile the way Ollama's parser does, to build the same layers
``ollama create`` would (FROM, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE).

Grammar (Ollama parser/parser.go, see shared/reference/ollama.md): instructions are
case-insensitive; ``#`` starts a comment only at the start of a line; a value is the rest of
the line, or ``\"\"\"…\"\"\"`` / ``"…"`` spanning lines up to the first line whose trimmed
text ends with the closing quote; there are no escapes. Non-printable characters other than
tab and newline are dropped by Ollama, so here they are refused instead: the installed model
must be exactly what the Modelfile says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgelora.errors import InstallError

# PARAMETER names Ollama accepts, by value type (shared with the build-side renderer).
INT_PARAMETERS = {"num_ctx", "num_batch", "num_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k",
                  "repeat_last_n"}
FLOAT_PARAMETERS = {"top_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty",
                    "min_p"}

MAX_MODELFILE = 1 << 20
BOOL_PARAMETERS = {"penalize_newline", "use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only"}
_ROLES = {"system", "user", "assistant"}


@dataclass
class ParsedModelfile:
    from_path: str = ""
    template: str | None = None
    system: str | None = None
    licenses: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)


def _split_instruction(line: str) -> tuple[str, str]:
    stripped = line.lstrip()
    for i, ch in enumerate(stripped):
        if ch in " \t":
            return stripped[:i], stripped[i:].lstrip(" \t")
    return stripped, ""


def _take_value(first: str, lines: list[str], i: int, where: str) -> tuple[str, int]:
    """(value, index of the next line) starting with ``first`` (text after the instruction)."""
    for quote in ('"""', '"'):
        if first.startswith(quote):
            body = first[len(quote):]
            if body.rstrip().endswith(quote) and (quote == '"' or len(body.rstrip()) >= len(quote)):
                return body.rstrip()[: -len(quote)], i + 1
            parts = [body]
            j = i + 1
            while j < len(lines):
                if lines[j].rstrip().endswith(quote):
                    parts.append(lines[j].rstrip()[: -len(quote)])
                    return "\n".join(parts), j + 1
                parts.append(lines[j])
                j += 1
            raise InstallError(f"{where}: unterminated {quote} value")
    return first.strip(), i + 1


def _parameter(name: str, raw: str, where: str):
    if name == "stop":
        return raw
    try:
        if name in INT_PARAMETERS:
            return int(raw)
        if name in FLOAT_PARAMETERS:
            v = float(raw)
            if not math.isfinite(v):
                raise ValueError(raw)
            return v
        if name in BOOL_PARAMETERS:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
    except ValueError:
        raise InstallError(f"{where}: PARAMETER {name}: {raw!r} is not a valid value") from None
    raise InstallError(f"{where}: PARAMETER {name}: not a parameter edgelora knows how to install")


def parse_modelfile(text: str, where: str = "Modelfile") -> ParsedModelfile:
    if "\r" in text:
        raise InstallError(f"{where}: contains a carriage return (LF only)")
    for ch in text:
        if ch not in "\t\n" and not ch.isprintable():
            raise InstallError(f"{where}: contains non-printable character U+{ord(ch):04X} that Ollama would drop")
    out = ParsedModelfile()
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        word, rest = _split_instruction(line)
        cmd = word.upper()
        loc = f"{where}:{i + 1}"
        value, i = _take_value(rest, lines, i, loc)
        if cmd == "FROM":
            if out.from_path:
                raise InstallError(f"{loc}: more than one FROM")
            out.from_path = value
        elif cmd == "TEMPLATE":
            out.template = value
        elif cmd == "SYSTEM":
            out.system = value
        elif cmd == "LICENSE":
            out.licenses.append(value)
        elif cmd == "PARAMETER":
            name, raw = _split_instruction(value)
            raw_value, _ = _take_value(raw, [raw], 0, loc)
            parsed = _parameter(name, raw_value, loc)
            if name == "stop":
                out.parameters.setdefault("stop", []).append(parsed)
            else:
                out.parameters[name] = parsed
        elif cmd == "MESSAGE":
            role, content = _split_instruction(value)
            if role not in _ROLES:
                raise InstallError(f"{loc}: MESSAGE role {role!r} must be system, user or assistant")
            content, _ = _take_value(content, [content], 0, loc)
            out.messages.append({"role": role, "content": content})
        elif cmd == "ADAPTER":
            raise InstallError(f"{loc}: ADAPTER is not supported by the store installer (ship a merged GGUF)")
        else:
            raise InstallError(f"{loc}: unknown or unsupported instruction {word!r}")
    if not out.from_path:
        raise InstallError(f"{where}: no FROM line")
    return out


def is_bundle_modelfile(arc: str) -> bool:
    """Top-level ``Modelfile`` (the default model) or ``Modelfile.<QUANT>`` (one per quantization)."""
    return arc == "Modelfile" or (arc.startswith("Modelfile.") and "/" not in arc)


def read_bundle_modelfile(root, arc: str, entry: dict):
    """Parse one Modelfile of a verified private copy, exactly as install uses it."""
    from edgelora.util.files import read_regular

    if entry["size"] > MAX_MODELFILE:
        raise InstallError(f"{arc}: larger than {MAX_MODELFILE} bytes")
    try:
        raw = read_regular(f"{root}/{arc}", MAX_MODELFILE)
        text = raw.decode("utf-8", "strict")
    except (ValueError, AttributeError) as e:
        raise InstallError(f"{arc}: cannot read: {e}") from None
    return parse_modelfile(text, where=arc)


def from_target(modelfile_arc: str, parsed: ParsedModelfile, files) -> str:
    """The bundle GGUF that a Modelfile's FROM names (relative to the Modelfile's folder, as
    Ollama resolves it); InstallError for anything outside the bundle or not a listed GGUF
    (a FROM that is not a file would make Ollama pull a model from the network)."""
    import posixpath

    raw = parsed.from_path
    folder = modelfile_arc.rsplit("/", 1)[0] if "/" in modelfile_arc else ""
    target = posixpath.normpath(posixpath.join(folder, raw)) if raw else ""
    if not raw or raw.startswith("/") or "\\" in raw or target.startswith("..") or target not in files \
            or not target.endswith(".gguf"):
        raise InstallError(f"{modelfile_arc}: FROM {raw} is not a GGUF in the bundle")
    return target
