"""Render an Ollama Modelfile that Ollama parses back exactly as intended.

Ollama's Modelfile values have no escapes: a ``\"\"\"`` value ends at the first line whose
trimmed text ends with ``\"\"\"``; non-printable runes are silently dropped; CR is kept. So
instead of escaping, the renderer refuses any value the parser would change, naming the
field. The TEMPLATE is chosen by rendering fixed conversations through the tokenizer's own
Jinja template and through each shipped Go template and requiring identical text.
"""

from __future__ import annotations

import math
import re

from edgelora.util import resources
from edgelora.errors import ModelfileError
from edgelora.host.modelfile_parse import FLOAT_PARAMETERS, INT_PARAMETERS

# Integer-valued Modelfile parameters: Ollama rejects "4096.0" for these.
_GGUF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.gguf")
MAX_NUM_CTX = 1 << 20

def _check_block(field: str, text: str) -> None:
    if not isinstance(text, str):
        raise ModelfileError(f"{field}: expected text, got {type(text).__name__}")
    if "\r" in text:
        raise ModelfileError(f"{field}: contains a carriage return (Modelfiles are LF only)")
    for ch in text:
        if ch not in "\t\n" and not ch.isprintable():
            raise ModelfileError(f"{field}: contains non-printable character U+{ord(ch):04X} that Ollama drops")
    for n, line in enumerate(text.split("\n"), 1):
        if line.rstrip().endswith('"""'):
            raise ModelfileError(f'{field}: line {n} ends with """ which would end the value early')


def _check_stop(stop) -> None:
    if not isinstance(stop, str) or not stop:
        raise ModelfileError(f"PARAMETER stop: expected a non-empty string, got {stop!r}")
    if '"' in stop:
        raise ModelfileError(f"PARAMETER stop: {stop!r} contains a double quote, which Modelfiles cannot escape")
    if stop != stop.strip(" \t\n"):
        raise ModelfileError(f"PARAMETER stop: {stop!r} has leading or trailing whitespace")
    if any(not ch.isprintable() for ch in stop):
        raise ModelfileError(f"PARAMETER stop: {stop!r} contains a non-printable character")


def _format_parameter(name: str, value) -> str:
    if name in ("stop", "num_ctx"):
        raise ModelfileError(f"PARAMETER {name}: set through the dedicated argument, not parameters")
    if name not in INT_PARAMETERS | FLOAT_PARAMETERS:
        raise ModelfileError(f"PARAMETER {name}: not a portable Ollama parameter")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelfileError(f"PARAMETER {name}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelfileError(f"PARAMETER {name}: {value!r} is not finite")
    if name in INT_PARAMETERS:
        if isinstance(value, float) and not value.is_integer():
            raise ModelfileError(f"PARAMETER {name}: expected an integer, got {value!r}")
        return str(int(value))
    return repr(float(value))


def render_modelfile(*, gguf_name: str, template_text: str, stops: list[str], num_ctx: int,
                     system: str | None = None, parameters: dict | None = None) -> str:
    """Modelfile text for a GGUF beside it; raises ModelfileError naming the bad field."""
    import jinja2

    if not isinstance(gguf_name, str) or not _GGUF_NAME.fullmatch(gguf_name):
        raise ModelfileError(f"FROM: {gguf_name!r} must be a plain file name ending in .gguf (no folders, no spaces)")
    _check_block("TEMPLATE", template_text)
    if not template_text.strip():
        raise ModelfileError("TEMPLATE: empty")
    if system is not None:
        _check_block("SYSTEM", system)
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or not 0 < num_ctx <= MAX_NUM_CTX:
        raise ModelfileError(f"PARAMETER num_ctx: expected an integer in 1..{MAX_NUM_CTX}, got {num_ctx!r}")
    stops = list(stops)
    if not stops:
        raise ModelfileError("PARAMETER stop: at least one stop string is required (else generation never ends)")
    for stop in stops:
        _check_stop(stop)
    if len(set(stops)) != len(stops):
        raise ModelfileError("PARAMETER stop: duplicate stop strings")
    params = [(k, _format_parameter(k, v)) for k, v in sorted((parameters or {}).items())]

    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.from_string(resources.modelfile_template().read_text(encoding="utf-8"))
    text = template.render(gguf_name=gguf_name, template_text=template_text, system=system, num_ctx=num_ctx,
                           stops=stops, parameters=params)
    return text.rstrip("\n") + "\n"
