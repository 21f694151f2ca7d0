"""eval.md (side by side, base vs fine-tune) and the compact summary kept in the manifest."""

from __future__ import annotations

from edgelora.evaluation.runner import headline

_MAX_SHOWN = 160


def compact(report: dict) -> dict:
    """The report without per-item outputs and scores (those stay in eval.json)."""
    sets = {}
    for name, s in report.get("sets", {}).items():
        models = {label: {k: v for k, v in scored.items() if k not in ("outputs", "item_scores")}
                  for label, scored in s.get("models", {}).items()}
        sets[name] = {k: v for k, v in s.items() if k not in ("models", "examples", "prompts")} | {"models": models}
    out = {k: v for k, v in report.items() if k != "sets"} | {"sets": sets}
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


def _delta(v, base) -> str:
    if v is None or base is None:
        return ""
    d = (v - base) * 100
    return f" ({'+' if d >= 0 else '−'}{abs(d):.1f})"


def _cell(text) -> str:
    if text is None:
        return "—"
    text = str(text).replace("\n", "⏎").replace("|", "\\|")
    text = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…"
    return f"`{text}`" if text and "`" not in text else (text or "*(empty)*")


def headline_lines(report: dict) -> list[str]:
    """Markdown table rows "| set | metric | base | fine-tune (Δ) |" for the bundle README."""
    lines = []
    for row in headline(report):
        for label, v in row["models"].items():
            lines.append(f"| {row['set']} ({row['n']}) | {row['metric']} | {_pct(row['base'])} | "
                         f"{label}: {_pct(v)}{_delta(v, row['base'])} |")
    return lines


def render_markdown(report: dict, gates: list[dict] | None = None) -> str:
    base = report.get("base_model")
    labels = list(report.get("models", {}))
    tuned = [m for m in labels if m != base]
    out = ["# Evaluation", "",
           "Greedy answers of each GGUF through llama-cpp-python (portable CPU kernels), scored "
           "automatically. Scores are the share of prompts that pass; ROUGE-L is the mean F-measure. "
           "Δ is in percentage points against the base.", ""]
    head = ["set", "metric"] + ([f"base ({base})"] if base else []) + [f"{m} (Δ)" for m in tuned]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in headline(report):
        cells = [f"{row['set']} ({row['n']})", row["metric"]]
        if base:
            cells.append(_pct(row["base"]))
        cells += [_pct(row["models"].get(m)) + _delta(row["models"].get(m), row["base"]) for m in tuned]
        out.append("| " + " | ".join(cells) + " |")
    if gates:
        out += ["", "## Gates", "", "| set | metric | model | value | base | limits | result |", "|---|---|---|---|---|---|---|"]
        for g in gates:
            limits = ", ".join(f"{k} {g[k]:.0%}" for k in ("min", "max_drop_vs_base") if k in g)
            out.append(f"| {g['set']} | {g['metric']} | {g.get('model')} | {_pct(g.get('value'))} | "
                       f"{_pct(g.get('base'))} | {limits} | {'pass' if g['ok'] else 'FAIL: ' + g['detail']} |")
    for name, s in report.get("sets", {}).items():
        out += ["", f"## {name}", "", f"{s['n']} prompts from {s.get('source') or 'the project'}; "
                f"metrics: {', '.join(s['metrics'])}; up to {s['max_tokens']} new tokens."]
        cat_rows = {label: scored.get("categories") for label, scored in s["models"].items() if scored.get("categories")}
        if cat_rows:
            cats = sorted({c for v in cat_rows.values() for c in v})
            out += ["", "| category | " + " | ".join(cat_rows) + " |", "|---|" + "---|" * len(cat_rows)]
            for c in cats:
                out.append(f"| {c} | " + " | ".join(_pct(v.get(c)) for v in cat_rows.values()) + " |")
        fails = {label: scored["failures"] for label, scored in s["models"].items() if scored.get("failures")}
        if fails:
            out += [""] + [f"- {label}: " + ", ".join(f"{k} × {v}" for k, v in f.items()) for label, f in fails.items()]
        cut = {label: scored["cut_early"] for label, scored in s["models"].items() if scored.get("cut_early")}
        if cut:
            out += [""] + [f"- {label}: {n} answer(s) stopped once they could no longer pass (shown cut, score unchanged)"
                           for label, n in cut.items()]
        if s.get("examples"):
            out += ["", "| prompt | reference | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
            for ex in s["examples"]:
                out.append(f"| {_cell(ex['prompt'])} | {_cell(ex.get('reference'))} | "
                           + " | ".join(_cell(ex["outputs"].get(m)) for m in labels) + " |")
    timing = report.get("models", {})
    if timing:
        out += ["", "## Timing", ""] + [
            f"- {label}: {t['prompts']} prompts, {t['prompt_tokens']} prompt tokens evaluated, "
            f"{t['generated_tokens']} generated, {t['seconds']:.1f} s" for label, t in timing.items()]
    return "\n".join(out) + "\n"
