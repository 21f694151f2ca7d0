"""Score eval sets on GGUF models: one generation pass per model over every set, then metrics."""

from __future__ import annotations

from collections import Counter

from edgelora.evaluation.generate import DEFAULT_PARALLEL, Request, generate
from edgelora.evaluation.metrics import METRICS, early_stop_check, leaked_special, parse_json_object
from edgelora.evaluation.sets import EvalSet

SCHEMA = 1
N_EXAMPLES = 3


def score_outputs(eval_set: EvalSet, outputs: list[str]) -> dict:
    """Mean of each metric over the items it applies to, with failure counts and per-category rates."""
    if len(outputs) != len(eval_set.items):
        raise ValueError(f"{eval_set.name}: {len(outputs)} outputs for {len(eval_set.items)} items")
    ctx = {"fields": list(eval_set.fields)}
    per_item = []
    sums: dict[str, float] = {m: 0.0 for m in eval_set.metrics}
    counts: dict[str, int] = {m: 0 for m in eval_set.metrics}
    cats: dict[str, list[float]] = {}
    failures: Counter = Counter()
    for item, out in zip(eval_set.items, outputs):
        scores = {}
        for m in eval_set.metrics:
            v = METRICS[m](out, item, ctx)
            if v is not None:
                scores[m] = v
                sums[m] += v
                counts[m] += 1
        per_item.append(scores)
        if not out.strip():
            failures["empty"] += 1
        elif leaked_special(out):
            failures["leaked special token"] += 1
        if "json_fields" in eval_set.metrics and item.get("expected_json") is not None:
            obj, why = parse_json_object(out)
            if obj is None and why not in ("empty", "leaked special token"):
                failures[why] += 1
        if "category" in item and eval_set.metrics and eval_set.metrics[0] in scores:
            cats.setdefault(item["category"], []).append(scores[eval_set.metrics[0]])
    result = {
        "n": len(outputs),
        "metrics": {m: (sums[m] / counts[m] if counts[m] else None) for m in eval_set.metrics},
        "applicable": counts,
        "failures": dict(sorted(failures.items())),
        "item_scores": per_item,
        "outputs": list(outputs),
    }
    if "json_fields" in eval_set.metrics and eval_set.fields:
        result["fields"] = _field_rates(eval_set, outputs)
    if cats:
        result["categories"] = {c: sum(v) / len(v) for c, v in sorted(cats.items())}
    return result


def _field_rates(eval_set: EvalSet, outputs: list[str]) -> dict[str, float]:
    hits = Counter()
    n = 0
    for item, out in zip(eval_set.items, outputs):
        exp = item.get("expected_json")
        if not isinstance(exp, dict):
            continue
        n += 1
        obj, _ = parse_json_object(out)
        for f in eval_set.fields:
            if obj is not None and f in obj and obj[f] == exp.get(f):
                hits[f] += 1
    return {f: (hits[f] / n if n else 0.0) for f in eval_set.fields}


def evaluate_models(models: dict[str, str], sets: list[EvalSet], *, base_model: str | None = None,
                    parallel: int = DEFAULT_PARALLEL, n_threads=None, early_stop: bool = True,
                    log=lambda msg: None) -> dict:
    """Every set on every model ({label: gguf path}); the eval.json report.

    With ``early_stop``, a prompt whose partial answer already fails every metric of its set
    (exact, json_fields) stops generating: its score is the same, its shown output is cut."""
    # The first items of each set are shown in eval.md: they always get their whole answer.
    requests = [Request(item["messages"], item.get("max_tokens", s.max_tokens), group=g,
                        stop=early_stop_check(s.metrics, item) if early_stop and i >= N_EXAMPLES else None)
                for g, s in enumerate(sets) for i, item in enumerate(s.items)]
    report: dict = {"schema": SCHEMA, "base_model": base_model if base_model in models else None,
                    "models": {}, "sets": {}}
    for s in sets:
        report["sets"][s.name] = {"source": s.source, "n": len(s.items), "metrics": list(s.metrics),
                                  "fields": list(s.fields), "max_tokens": s.max_tokens, "models": {}}
    for label, path in models.items():
        run = generate(path, requests, parallel=parallel, n_threads=n_threads)
        report["models"][label] = {"gguf": str(path), "seconds": round(run["seconds"], 3),
                                   "prompts": len(requests), "prompt_tokens": run["prompt_tokens"],
                                   "generated_tokens": run["generated_tokens"]}
        at = 0
        for s in sets:
            outs = run["outputs"][at:at + len(s.items)]
            prompts = run["prompts"][at:at + len(s.items)]
            cut = run["cut"][at:at + len(s.items)]
            at += len(s.items)
            scored = score_outputs(s, outs)
            scored["cut_early"] = sum(cut)
            report["sets"][s.name]["models"][label] = scored
            report["sets"][s.name].setdefault("prompts", prompts[:N_EXAMPLES])
            log(f"  {s.name:12s} {label:18s} " + ", ".join(
                f"{m} {v:.1%}" for m, v in scored["metrics"].items() if v is not None) + f" ({len(outs)} prompts)")
        log(f"  {label}: {len(requests)} prompts in {run['seconds']:.1f} s "
            f"({len(requests) / max(run['seconds'], 1e-9):.1f} prompts/s)")
    for s in sets:
        report["sets"][s.name]["examples"] = [
            {"prompt": item["messages"][-1]["content"], "reference": item.get("reference"),
             "outputs": {label: report["sets"][s.name]["models"][label]["outputs"][i] for label in models}}
            for i, item in enumerate(s.items[:N_EXAMPLES])]
    return report


def headline(report: dict) -> list[dict]:
    """One row per set and metric: base value, each fine-tuned model's value and its delta."""
    rows = []
    base = report.get("base_model")
    for name, s in (report.get("sets") or {}).items():
        for metric in s.get("metrics", []):
            row = {"set": name, "metric": metric, "n": s.get("n"), "base": None, "models": {}}
            for label, scored in s.get("models", {}).items():
                v = scored["metrics"].get(metric)
                if label == base:
                    row["base"] = v
                else:
                    row["models"][label] = v
            rows.append(row)
    return rows
