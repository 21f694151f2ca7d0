"""Render Ollama TEMPLATE bodies (Go text/template) the way Ollama does in messages mode.

With ``go`` on PATH the real text/template renders (``render.go``), so the equivalence
proof against the Jinja template uses Go's own semantics. Without Go, a small Python
interpreter covers the constructs edgelora's shipped templates use: text, trim markers,
comments, ``range`` (with ``$i, $m :=``), ``if``/``else if``/``else``, ``$x := …``, printing
fields and variables, and the functions ``eq ne and or not len index slice``. Anything else raises
:class:`GoTemplateError` rather than guessing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from edgelora.errors import ModelfileError

RENDER_GO = Path(__file__).with_name("render.go")


class GoTemplateError(ModelfileError):
    """A TEMPLATE could not be parsed or executed."""


def go_available() -> bool:
    return shutil.which("go") is not None


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's view of a conversation: consecutive same-role messages merged with a blank
    line; ``System`` is every system message joined the same way."""
    merged: list[dict] = []
    systems = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            systems.append(content)
        if merged and merged[-1]["Role"] == role:
            merged[-1]["Content"] += "\n\n" + content
        else:
            merged.append({"Role": role, "Content": content})
    return "\n\n".join(systems), merged


def _renderer_binary(timeout: float) -> Path:
    """render.go built once per source version (``go run`` would rebuild it on every call)."""
    import hashlib

    key = hashlib.sha256(RENDER_GO.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgelora"
    binary = cache / f"gotmpl-render-{key}"
    if binary.is_file():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(cache / "go-build"))
    env["GO111MODULE"] = "off"  # a single file, no module download ever
    env["GOPROXY"] = "off"
    tmp = cache / f".gotmpl-render-{key}.{os.getpid()}"
    try:
        proc = subprocess.run(["go", "build", "-o", str(tmp), str(RENDER_GO)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GoTemplateError(f"TEMPLATE: go build failed: {e}") from e
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise GoTemplateError(f"TEMPLATE: go build failed: {proc.stderr.strip()[-300:]}")
    os.replace(tmp, binary)
    return binary


def render_go(template_text: str, conversations: list[list[dict]], *, timeout: float = 120) -> list[str]:
    """Render each conversation with Go's text/template (needs ``go`` on PATH)."""
    cases = []
    for conv in conversations:
        system, msgs = collate(conv)
        cases.append({"System": system, "Messages": msgs})
    binary = _renderer_binary(timeout)
    try:
        proc = subprocess.run([str(binary)], input=json.dumps({"Template": template_text, "Cases": cases}),
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GoTemplateError(f"TEMPLATE: go run failed: {e}") from e
    if proc.returncode != 0:
        raise GoTemplateError(f"TEMPLATE: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'go failed'}")
    resp = json.loads(proc.stdout)
    out = []
    for text, err in zip(resp["outputs"], resp["errors"]):
        if err is not None:
            raise GoTemplateError(f"TEMPLATE: execution failed: {err}")
        out.append(text)
    return out


def render_python(template_text: str, conversations: list[list[dict]]) -> list[str]:
    """Render with the Python subset interpreter (no Go needed)."""
    tree = _parse(_lex(template_text))
    results = []
    for conv in conversations:
        system, msgs = collate(conv)
        data = {"System": system, "Messages": msgs, "Tools": [], "Response": "", "Think": False}
        out: list[str] = []
        _exec(tree, data, {"$": data}, out)
        results.append("".join(out))
    return results


def render(template_text: str, conversations: list[list[dict]]) -> list[str]:
    return render_go(template_text, conversations) if go_available() else render_python(template_text, conversations)


# ---- lexer ---------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(- )?(.*?)( -)?\}\}", re.S)


def _lex(src: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            tokens.append(("text", text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if "{{" in text:
        raise GoTemplateError("TEMPLATE: unterminated action")
    if text:
        tokens.append(("text", text))
    return tokens


# ---- parser: nodes are tuples ----------------------------------------------------------
# ("text", s) ("out", expr) ("if", [(cond, body)], else_body) ("range", vars, expr, body, else_body)

_DECLARE = re.compile(r"^(\$\w+)\s*:=\s*(.+)$", re.S)
_RANGE_VARS = re.compile(r"^range\s+(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.+)$", re.S)


def _parse(tokens):
    body, stop, _ = _parse_block(tokens, 0)
    if stop is not None:
        raise GoTemplateError(f"TEMPLATE: unexpected {{{{{stop}}}}}")
    return body


def _parse_block(tokens, i):
    """Parse until else/end; returns (nodes, stopping action or None, next index)."""
    nodes = []
    while i < len(tokens):
        kind, val = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", val))
            continue
        word = val.split(None, 1)[0] if val else ""
        if word in ("end", "else"):
            return nodes, val, i
        if word == "if":
            branches, else_body = [], None
            cond = _parse_expr(val[2:])
            while True:
                inner, stop, i = _parse_block(tokens, i)
                if else_body is None and cond is not None:
                    branches.append((cond, inner))
                else:
                    else_body = inner
                if stop is None:
                    raise GoTemplateError("TEMPLATE: missing {{end}} for {{if}}")
                if stop == "end":
                    break
                if stop.startswith("else if "):
                    cond = _parse_expr(stop[len("else if "):])
                elif stop == "else":
                    cond, else_body = None, []
                else:
                    raise GoTemplateError(f"TEMPLATE: unsupported {{{{{stop}}}}}")
            nodes.append(("if", branches, else_body))
        elif word == "range":
            m = _RANGE_VARS.match(val)
            if m:
                names = [n for n in (m.group(1), m.group(2)) if n]
                expr = _parse_expr(m.group(3))
            else:
                names, expr = [], _parse_expr(val[5:])
            inner, stop, i = _parse_block(tokens, i)
            else_body = None
            if stop == "else":
                else_body, stop, i = _parse_block(tokens, i)
            if stop != "end":
                raise GoTemplateError("TEMPLATE: missing {{end}} for {{range}}")
            nodes.append(("range", names, expr, inner, else_body))
        elif _DECLARE.match(val):
            m = _DECLARE.match(val)
            nodes.append(("declare", m.group(1), _parse_expr(m.group(2))))
        elif word in ("with", "define", "template", "block", "break", "continue") or re.match(r"^\$\w*\s*=", val) or "|" in val:
            raise GoTemplateError(f"TEMPLATE: construct not supported without Go: {{{{{val}}}}}")
        else:
            nodes.append(("out", _parse_expr(val)))
    return nodes, None, i


_TERM = re.compile(r'\s*(\(|\)(?:\.\w+)*|"(?:[^"\\]|\\.)*"|`[^`]*`|-?\d+|\$\w*(?:\.\w+)*|(?:\.\w+)+|\.|\w+)')


def _parse_expr(src: str):
    terms, pos = [], 0
    src = src.strip()
    while pos < len(src):
        m = _TERM.match(src, pos)
        if not m:
            raise GoTemplateError(f"TEMPLATE: cannot parse {src!r} without Go")
        terms.append(m.group(1))
        pos = m.end()
        while pos < len(src) and src[pos].isspace():
            pos += 1
    expr, rest = _parse_command(terms)
    if rest:
        raise GoTemplateError(f"TEMPLATE: unexpected {rest[0]!r} in {src!r}")
    return expr


def _parse_command(terms):
    args = []
    while terms and not terms[0].startswith(")"):
        arg, terms = _parse_operand(terms)
        args.append(arg)
    if not args:
        raise GoTemplateError("TEMPLATE: empty command")
    if args[0][0] == "func":
        return ("call", args[0][1], args[1:]), terms
    if len(args) > 1:
        raise GoTemplateError("TEMPLATE: can't give argument to non-function")
    return args[0], terms


def _parse_operand(terms):
    t, rest = terms[0], terms[1:]
    if t == "(":
        expr, rest = _parse_command(rest)
        if not rest or not rest[0].startswith(")"):
            raise GoTemplateError("TEMPLATE: unclosed parenthesis")
        close, rest = rest[0], rest[1:]
        if close != ")":  # (index .Messages 0).Role: the field follows the parenthesis directly
            return ("chain", expr, close[2:].split(".")), rest
        return expr, rest
    if t.startswith('"'):
        return ("lit", json.loads(t)), rest
    if t.startswith("`"):
        return ("lit", t[1:-1]), rest
    if re.fullmatch(r"-?\d+", t):
        return ("lit", int(t)), rest
    if t == ".":
        return ("dot", []), rest
    if t.startswith("."):
        return ("dot", t[1:].split(".")), rest
    if t.startswith("$"):
        name, *fields = t.split(".")
        return ("var", name, fields), rest
    if t in ("true", "false"):
        return ("lit", t == "true"), rest
    if t in _FUNCS:
        return ("func", t), rest
    raise GoTemplateError(f"TEMPLATE: function {t!r} not supported without Go")


# ---- execution -----------------------------------------------------------------------


def _truth(v) -> bool:
    return not (v is None or v is False or v == 0 and not isinstance(v, bool) or v in ("", [], {}))


def _field(v, name, top_level):
    if isinstance(v, dict):
        if name in v:
            return v[name]
        if top_level:
            return None  # missingkey=zero on Ollama's map[string]any
    raise GoTemplateError(f"TEMPLATE: can't evaluate field {name}")


def _eq(a, *bs):
    return any(a == b for b in bs)


_FUNCS = {
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "len": lambda a: len(a),
    "index": lambda a, *ks: _index(a, ks),
    "slice": lambda a, *ix: _slice(a, ix),
}


def _slice(a, ix):
    if not isinstance(a, (list, str)) or not 0 <= len(ix) <= 2 or not all(isinstance(i, int) for i in ix):
        raise GoTemplateError("TEMPLATE: error calling slice")
    lo, hi = (list(ix) + [0, len(a)][len(ix):])[:2]
    if not 0 <= lo <= hi <= len(a):
        raise GoTemplateError(f"TEMPLATE: error calling slice: index out of range: {hi}")
    return a[lo:hi]


def _index(a, keys):
    for k in keys:
        try:
            a = a[k]
        except (IndexError, KeyError, TypeError) as e:
            raise GoTemplateError(f"TEMPLATE: error calling index: {e}") from e
    return a


def _eval(expr, dot, scope):
    kind = expr[0]
    if kind == "lit":
        return expr[1]
    if kind == "dot":
        v = dot
        for i, f in enumerate(expr[1]):
            v = _field(v, f, top_level=dot is scope["$"] and i == 0)
        return v
    if kind == "var":
        if expr[1] not in scope:
            raise GoTemplateError(f"TEMPLATE: undefined variable {expr[1]}")
        v = scope[expr[1]]
        for i, f in enumerate(expr[2]):
            v = _field(v, f, top_level=expr[1] == "$" and i == 0)
        return v
    if kind == "chain":
        v = _eval(expr[1], dot, scope)
        for f in expr[2]:
            v = _field(v, f, top_level=False)
        return v
    if kind == "call":
        name, args = expr[1], expr[2]
        if name in ("and", "or"):  # short-circuit like Go >= 1.18
            v = None
            for a in args:
                v = _eval(a, dot, scope)
                if _truth(v) != (name == "and"):
                    return v
            return v
        return _FUNCS[name](*[_eval(a, dot, scope) for a in args])
    if kind == "func":
        if expr[1] in ("and", "or"):
            raise GoTemplateError(f"TEMPLATE: {expr[1]} needs arguments")
        return _FUNCS[expr[1]]()
    raise GoTemplateError(f"TEMPLATE: bad expression {expr!r}")


def _print(v) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        raise GoTemplateError("TEMPLATE: printing composite values not supported without Go")
    return str(v)


_FUNCS["and"] = _FUNCS["or"] = None  # handled in _eval; listed so the parser knows the names


def _exec(nodes, dot, scope, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "declare":  # scoped like Go's: range bodies run on a per-iteration copy
            scope[node[1]] = _eval(node[2], dot, scope)
        elif kind == "out":
            out.append(_print(_eval(node[1], dot, scope)))
        elif kind == "if":
            for cond, body in node[1]:
                if _truth(_eval(cond, dot, scope)):
                    _exec(body, dot, scope, out)
                    break
            else:
                if node[2] is not None:
                    _exec(node[2], dot, scope, out)
        elif kind == "range":
            _, names, expr, body, else_body = node
            seq = _eval(expr, dot, scope) or []
            if not isinstance(seq, list):
                raise GoTemplateError("TEMPLATE: range over a non-list not supported without Go")
            if not seq and else_body is not None:
                _exec(else_body, dot, scope, out)
            for i, item in enumerate(seq):
                inner = dict(scope)
                if len(names) == 1:
                    inner[names[0]] = item
                elif len(names) == 2:
                    inner[names[0]], inner[names[1]] = i, item
                _exec(body, item, inner, out)
