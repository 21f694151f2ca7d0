"""The shipped Go chat TEMPLATEs and the conversations that prove one equal to a Jinja template."""

from __future__ import annotations

from edgelora.util import resources

# Conversations that separate the common chat families and their quirks (default system
# prompts, dropped empty turns, text that looks like template syntax, non-ASCII).
PROBE_CONVERSATIONS: list[list[dict]] = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "Quatre."}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "No system prompt here."}],
    [{"role": "user", "content": "First"}, {"role": "assistant", "content": "Second"},
     {"role": "user", "content": "Third"}],
    [{"role": "system", "content": "Réponds en émoji 🙂"}, {"role": "user", "content": "Ünïcödé 日本語 — «quotes» 🚀"}],
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "{{ .Content }} {% raw %} <no value>"}],
]


def available_chat_templates() -> dict[str, str]:
    """Shipped Go TEMPLATE bodies by name (``templates/chat/<name>.tmpl``)."""
    folder = resources.templates_dir() / "chat"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.tmpl"))}
