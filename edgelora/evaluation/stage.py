"""The build's eval stages (eval-sets, evaluate, gate) and ``edgelora eval`` on a project."""

from __future__ import annotations

from pathlib import Path

from .. import artifacts as A
from ..errors import ConfigError
from ..fsutil import atomic_write_json, atomic_write_text
from .gates import check_gates, enforce, gate_summary
from .report import compact, render_markdown
from .runner import evaluate_models
from .sets import build_sets, eval_files, load_eval_file, set_names


def eval_sets_stage(ctx) -> dict:
    """Check every eval file named in [eval] (file:line errors) before anything expensive runs.

    Its artifact lists the files by absolute path, so the evaluate stage's cache key covers
    their content, not only their names."""
    files = eval_files(ctx.config)
    for path in files.values():
        load_eval_file(path)
    return {A.EVAL_SETS: files}


def _base_quantized(ctx, out_dir: Path, qtype: str) -> Path:
    from ..quantize import quantize as quantize_gguf

    base_q = out_dir / f"base.{qtype}.gguf"
    tmp = out_dir / f".base.{qtype}.gguf.partial"
    quantize_gguf(ctx.need(A.BASE_GGUF), tmp, qtype)
    tmp.replace(base_q)
    return base_q


def evaluate_stage(ctx) -> dict:
    cfg = ctx.config
    sets = build_sets(cfg, ctx.need(A.DATASET))
    if not sets:
        return {A.EVAL_REPORT: {"schema": 1, "sets": {}, "note": "no eval sets configured"}}
    out_dir = ctx.stage_dir("evaluate")
    first = next(iter(ctx.need(A.QUANTIZED)))  # first type that passed the quantization gate
    base_label = f"base.{first}"
    models = {base_label: str(_base_quantized(ctx, out_dir, first))}
    models |= {f"fine-tune.{q}": p for q, p in ctx.need(A.QUANTIZED).items()}
    report = evaluate_models(models, sets, base_model=base_label, log=ctx.log)
    files = write_reports(report, out_dir)
    return {A.EVAL_REPORT: compact(report) | {"files": files}}


def write_reports(report: dict, out_dir: Path) -> dict[str, str]:
    json_path, md_path = out_dir / "eval.json", out_dir / "eval.md"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report, report.get("gates")))
    return {"eval.json": str(json_path.resolve()), "eval.md": str(md_path.resolve())}


def gate_stage(ctx) -> dict:
    """Check [eval] gates on the scores; stop the build when one fails, with the numbers
    (``build --no-gate`` records and goes on). Gates live outside the evaluate stage so that
    changing a threshold re-checks in a second instead of re-generating every answer.

    The bundle's eval.md and eval.json are written here, with the gate results in them."""
    import json

    eval_report = ctx.need(A.EVAL_REPORT)
    results = check_gates(eval_report, list(ctx.config.eval.gates))
    enforced = bool(ctx.options.get("gate", True))
    files = {}
    full_path = (eval_report.get("files") or {}).get("eval.json")
    if full_path and Path(full_path).is_file():
        full = json.loads(Path(full_path).read_text(encoding="utf-8"))
        full["gates"] = results
        files = write_reports(full, ctx.stage_dir("gate"))
    for r in results:
        if not r["ok"]:
            ctx.log(f"  gate FAILED: {r['set']}/{r['metric']} on {r['model']}: {r['detail']}")
    if results and all(r["ok"] for r in results):
        ctx.log(f"  {len(results)} eval gate(s) passed")
    enforce(results, enabled=enforced)
    failed = [r for r in results if not r["ok"]]
    if failed:
        ctx.log(f"  --no-gate: building anyway; {gate_summary(results)}")
    return {A.GATE_REPORT: {"enforced": enforced, "ok": not failed, "results": results, "files": files}}


def bundle_files(report: dict) -> dict[str, Path]:
    """The eval files the bundle ships under reports/ (from the gate report, else the eval report)."""
    return {f"reports/{name}": Path(p) for name, p in (report.get("files") or {}).items() if Path(p).is_file()}


def manifest_summary(report: dict | None) -> dict | None:
    return None if report is None else {k: v for k, v in report.items() if k != "files"}


# --------------------------------------------------------------------------- edgelora eval


def model_stages(cfg, specs: list[str]) -> set[str]:
    """The stages that make the models ``--model`` names; checks the specs before anything runs."""
    stages = set()
    for spec in specs:
        if spec == "base":
            stages.add("convert-base")
        elif spec == "adapter":
            stages.add("convert")
        elif spec.startswith("gguf:"):
            shipped = cfg.export.quantize
            if spec[5:] != "*" and spec[5:] not in shipped:
                raise ConfigError(f"--model {spec}: not shipped ([export] quantize: {', '.join(shipped)})")
            stages.add("quantize")
        elif not spec.endswith(".gguf"):
            raise ConfigError(f"--model {spec!r}: expected base, adapter, gguf:QUANT or a path to a .gguf file")
        elif not Path(spec).is_file():
            raise ConfigError(f"--model {spec}: file not found")
    return stages


def resolve_models(ctx_for, project_dir, specs: list[str], log) -> tuple[dict[str, str], str | None]:
    """{label: gguf path} for ``--model`` specs: base, adapter, gguf:QUANT or a .gguf path."""
    from ..api import run_stages

    stages = model_stages(ctx_for.config, specs)
    ctx = run_stages(project_dir, sorted(stages), log=log) if stages else ctx_for
    cfg = ctx.config
    models: dict[str, str] = {}
    base_label = None
    for spec in specs:
        if spec == "base":
            first = cfg.export.quantize[0]
            base_label = f"base.{first}"
            models[base_label] = str(_base_quantized(ctx, ctx.stage_dir("eval-cli"), first))
        elif spec == "adapter":
            models[f"fine-tune.{cfg.export.outtype.upper()}"] = ctx.need(A.GGUF)
        elif spec.startswith("gguf:"):
            quantized = ctx.need(A.QUANTIZED)
            q = spec[5:]
            if q == "*":
                models |= {f"fine-tune.{k}": v for k, v in quantized.items()}
            else:
                models[f"fine-tune.{q}"] = quantized[q]
        else:
            models[Path(spec).name] = str(Path(spec).resolve())
    return models, base_label


def evaluate_project(project_dir, *, models: list[str] = (), sets: list[str] | None = None, log=print,
                     out_dir=None) -> dict:
    """Score the project's eval sets on the chosen models; writes eval.json and eval.md."""
    from ..api import _context, run_stages

    ctx, _ = _context(project_dir, log=log)
    cfg = ctx.config
    specs = list(models) or ["base", "gguf:*"]
    model_stages(cfg, specs)  # a wrong --model or --set fails before any stage runs
    unknown = sorted(set(sets or ()) - set(set_names(cfg)))
    if unknown:
        raise ConfigError(f"edgelora.toml: [eval] no eval set named {unknown[0]!r} "
                          f"(configured: {', '.join(set_names(cfg)) or 'none'})")
    want_data = not sets or any(s in ("heldout", "probes") for s in sets)
    dataset = None
    if want_data and (cfg.eval.heldout or cfg.data.probes):
        dataset = run_stages(project_dir, ["prepare-data"], log=log).artifacts.get(A.DATASET)
    chosen = build_sets(cfg, dataset, only=list(sets) if sets else None)
    if not chosen:
        raise ConfigError("edgelora.toml: [eval] no eval sets to run (held-out off, no probes, no regression set)")
    model_paths, base_label = resolve_models(ctx, project_dir, specs, log)
    report = evaluate_models(model_paths, chosen, base_model=base_label, log=log)
    report["gates"] = check_gates(report, [g for g in cfg.eval.gates if g.get("set") in report["sets"]])
    out = Path(out_dir) if out_dir else ctx.stage_dir("eval-cli")
    report["files"] = write_reports(report, out)
    return report

