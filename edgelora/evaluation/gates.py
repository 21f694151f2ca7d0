"""Gates: thresholds on eval scores that stop a build.

``[eval] gates = [{set = "regression", metric = "checks", max_drop_vs_base = 0.1},
{set = "heldout", metric = "json_fields", min = 0.8}]``. Each gate is checked on every
fine-tuned GGUF in the report (every shipped quantization). ``min`` is the lowest score
allowed; ``max_drop_vs_base`` the most the score may fall below the base model's on the
same set, in absolute points of the [0, 1] scale (0.05 = five percentage points).
"""

from __future__ import annotations

from edgelora.errors import GateError
from edgelora.evaluation.metrics import METRICS

GATE_KEYS = {"set", "metric", "min", "max_drop_vs_base"}
__all__ = ["GateError", "check_gates", "enforce", "gate_problems", "gate_summary"]


def gate_problems(ev, set_names: set[str]) -> list[str]:
    out = []
    for i, g in enumerate(ev.gates):
        where = f"edgelora.toml: [eval] gates[{i}]"
        if not isinstance(g, dict):
            out.append(f"{where} must be a table {{set, metric, min, max_drop_vs_base}}")
            continue
        unknown = sorted(set(g) - GATE_KEYS)
        if unknown:
            out.append(f"{where} unknown key(s) {unknown} (known: {', '.join(sorted(GATE_KEYS))})")
        if g.get("set") not in set_names:
            out.append(f"{where} set {g.get('set')!r} is not an eval set (known: {', '.join(sorted(set_names))})")
        if g.get("metric") not in METRICS:
            out.append(f"{where} metric {g.get('metric')!r} must be one of {', '.join(METRICS)}")
        if "min" not in g and "max_drop_vs_base" not in g:
            out.append(f"{where} needs min or max_drop_vs_base")
        for key in ("min", "max_drop_vs_base"):
            v = g.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                out.append(f"{where} {key} must be a number in [0, 1], got {v!r}")
    return out


def check_gates(report: dict, gates: list[dict]) -> list[dict]:
    """One result per (gate, fine-tuned model): value, base value, limits, ok, and why."""
    results = []
    base_name = report.get("base_model")
    for g in gates:
        scores = (report.get("sets") or {}).get(g["set"], {}).get("models", {})
        base = scores.get(base_name, {}).get("metrics", {}).get(g["metric"]) if base_name else None
        tuned = [m for m in scores if m != base_name]
        if not tuned:
            results.append({**_gate(g), "model": None, "ok": False,
                            "detail": f"{g['set']}: no fine-tuned model was scored"})
        for model in tuned:
            value = scores[model].get("metrics", {}).get(g["metric"])
            problems = []
            if value is None:
                problems.append(f"{g['metric']} was not measured on {g['set']}")
            else:
                if "min" in g and value < g["min"]:
                    problems.append(f"{value:.1%} < min {g['min']:.1%}")
                if "max_drop_vs_base" in g:
                    if base is None:
                        problems.append("no base score to compare with")
                    elif base - value > g["max_drop_vs_base"] + 1e-12:
                        problems.append(f"dropped {base - value:.1%} vs base {base:.1%} "
                                        f"(> max_drop_vs_base {g['max_drop_vs_base']:.1%})")
            results.append({**_gate(g), "model": model, "value": value, "base": base, "ok": not problems,
                            "detail": "; ".join(problems) or "passed"})
    return results


def _gate(g: dict) -> dict:
    return {k: g[k] for k in ("set", "metric", "min", "max_drop_vs_base") if k in g}


def gate_summary(results: list[dict]) -> str:
    bad = [r for r in results if not r["ok"]]
    parts = [f"{r['set']}/{r['metric']} on {r['model']}: {r['detail']}" for r in bad]
    return f"{len(bad)} of {len(results)} eval gate(s) failed: " + "; ".join(parts)


def enforce(results: list[dict], *, enabled: bool) -> None:
    if enabled and any(not r["ok"] for r in results):
        raise GateError(gate_summary(results) + " (build stopped; --no-gate overrides)")
