"""Render a model's Jinja chat template safely, the way transformers does, without transformers.

A chat template shipped in a tokenizer or GGUF is untrusted code (CVE-2024-34359), so it is
rendered only in jinja2's ImmutableSandboxedEnvironment with an output cap and, on the main
thread, a wall-clock cap. The environment mirrors transformers' ``apply_chat_template``
(trim_blocks, lstrip_blocks, loopcontrols, ``raise_exception``, ``strftime_now``, a
``tojson`` that keeps non-ASCII), so the text is identical to what training saw.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

from edgelora.errors import ModelfileError

MAX_OUTPUT_CHARS = 1_000_000
MAX_SECONDS = 5.0


class ChatTemplateError(ModelfileError):
    """The chat template failed, escaped the sandbox, or ran past its caps."""


class _Timeout(Exception):
    pass


def _environment():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols],
                                        autoescape=False)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@contextlib.contextmanager
def _alarm(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def compile_chat_template(template_text: str):
    """The template compiled in the sandbox environment (Jinja folds constant expressions
    here: run untrusted templates in ``host.sandbox``'s limited child)."""
    import jinja2

    try:
        return _environment().from_string(template_text)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat_template: syntax error line {e.lineno}: {e.message}") from e


def render_chat(template_text: str, messages: list[dict], *, add_generation_prompt: bool = True,
                special_tokens: dict | None = None, max_chars: int = MAX_OUTPUT_CHARS,
                max_seconds: float = MAX_SECONDS) -> str:
    """Render ``messages`` through ``template_text`` in the sandbox; one-line errors."""
    import jinja2
    from jinja2.sandbox import SecurityError

    template = compile_chat_template(template_text)
    context = dict(special_tokens or {})
    context.update(messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None)
    parts, size, start = [], 0, time.monotonic()
    try:
        with _alarm(max_seconds):
            for chunk in template.generate(**context):
                parts.append(chunk)
                size += len(chunk)
                if size > max_chars:
                    raise ChatTemplateError(f"chat_template: output exceeds {max_chars} characters")
                if time.monotonic() - start > max_seconds:
                    raise _Timeout()
    except _Timeout:
        raise ChatTemplateError(f"chat_template: rendering exceeded {max_seconds:g} s") from None
    except SecurityError as e:
        raise ChatTemplateError(f"chat_template: sandbox refused: {e}") from e
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
            OverflowError, RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"chat_template: rendering failed: {type(e).__name__}: {e}") from e
    return "".join(parts)


def load_tokenizer_template(tokenizer_dir) -> tuple[str, dict]:
    """(chat_template, special tokens) from a Hugging Face tokenizer folder, without transformers."""
    tokenizer_dir = Path(tokenizer_dir)
    cfg_path = tokenizer_dir / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelfileError(f"{cfg_path}: cannot read tokenizer config: {e}") from e
    template = cfg.get("chat_template")
    jinja_file = tokenizer_dir / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: the default one drives chat
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise ModelfileError(f"{cfg_path}: chat_template: missing")
    return template, special_tokens_from_config(cfg)


def special_tokens_from_config(cfg: dict) -> dict:
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[key] = v
    return out


def added_tokens(tokenizer_dir) -> set[str]:
    """Contents of the tokenizer's added (special) tokens."""
    tokenizer_dir = Path(tokenizer_dir)
    found: set[str] = set()
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        for tok in (cfg.get("added_tokens_decoder") or {}).values():
            if isinstance(tok, dict) and isinstance(tok.get("content"), str):
                found.add(tok["content"])
        for t in cfg.get("additional_special_tokens") or []:
            if isinstance(t, str):
                found.add(t)
    with contextlib.suppress(OSError, ValueError):
        tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
        for tok in tok_json.get("added_tokens") or []:
            if isinstance(tok, dict) and isinstance(tok.get("content"), str):
                found.add(tok["content"])
    return found
