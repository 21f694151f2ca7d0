"""The library API the CLI (and tests) call. Every function raises EdgeloraError subclasses."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import artifacts as A
from . import config as config_mod
from .context import Context
from .errors import ConfigError, EdgeloraError, PlanError
from .fsutil import atomic_write_text
from .resources import templates_dir

BUILD_TARGET = "verify"


def _context(project_dir, *, log=print, console=None, third_party=True, extra_plugins=()):
    from . import plugins

    cfg = config_mod.load(project_dir)
    loaded = plugins.load(third_party=third_party, extra=list(extra_plugins))
    for err in loaded.load_errors:
        log(f"warning: {err}")
    ctx = Context(config=cfg, project_dir=Path(project_dir).resolve(), registry=loaded.registry,
                  log=log, console=console)
    return ctx, loaded


# -- init / plan ---------------------------------------------------------------

def init_project(project_dir: str | Path, *, name: str | None = None, force: bool = False) -> Path:
    """Scaffold edgelora.toml and a data folder with a format example."""
    root = Path(project_dir)
    cfg_path = root / config_mod.CONFIG_NAME
    if cfg_path.exists() and not force:
        raise ConfigError(f"{cfg_path}: already exists (use --force to overwrite)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    cfg = config_mod.Config()
    if name:
        import dataclasses

        cfg = dataclasses.replace(cfg, project=dataclasses.replace(cfg.project, name=name))
    atomic_write_text(cfg_path, config_mod.render_template(cfg))
    example = root / "data" / "train.jsonl"
    if not example.exists():
        src = templates_dir() / "project" / "train.example.jsonl"
        atomic_write_text(example, src.read_text(encoding="utf-8"))
    return cfg_path


def plan(project_dir: str | Path, *, log=print, extra_plugins=()) -> dict:
    """Check config, dataset, base model, architecture, tokenizer and targets; every problem at once."""
    from .plan import collect_problems

    cfg = config_mod.load(project_dir)
    from . import plugins

    loaded = plugins.load(extra=list(extra_plugins))
    ctx = Context(config=cfg, project_dir=Path(project_dir).resolve(), registry=loaded.registry, log=log)
    summary, problems = collect_problems(ctx)
    problems = loaded.load_errors + problems
    if problems:
        raise PlanError(problems)
    return summary


# -- build ---------------------------------------------------------------------

def run_stages(project_dir, targets: Iterable[str] | None = None, *, force: Iterable[str] = (),
               log=print, console=None, extra_plugins=()) -> Context:
    """Run the named stages and what they require (all stages when ``targets`` is None)."""
    from .runner import order_stages, run, select

    ctx, loaded = _context(project_dir, log=log, console=console, extra_plugins=extra_plugins)
    stages = order_stages(loaded.registry.stages.values())
    targets = [s.name for s in stages] if targets is None else list(targets)
    unknown = [t for t in targets if t not in loaded.registry.stages]
    if unknown:
        raise EdgeloraError(f"unknown stage(s) {unknown} (known: {', '.join(s.name for s in stages)})")
    return run(ctx, select(stages, targets), loaded.pm, force=force)


def build(project_dir, *, force: Iterable[str] = (), log=print, console=None, extra_plugins=()) -> dict:
    """Run every registered stage; returns the bundle paths, scores and reports."""
    ctx = run_stages(project_dir, None, force=force, log=log, console=console, extra_plugins=extra_plugins)
    return {"bundle": ctx.artifacts.get(A.BUNDLE), "eval": ctx.artifacts.get(A.EVAL_REPORT),
            "verify_ok": (ctx.artifacts.get(A.VERIFY_REPORT) or {}).get("ok")}


def fetch(project_dir, *, log=print) -> dict:
    from .default_plugins.stages_prepare import fetch_base

    ctx, _ = _context(project_dir, log=log)
    return fetch_base(ctx, download=True)[A.BASE]


# -- toolbox commands ------------------------------------------------------------

def merge(base_dir, adapter_dir, out_dir) -> dict:
    from .merge import MergedView
    from .merge_check import materialize

    with MergedView(base_dir, adapter_dir) as view:
        return materialize(view, out_dir)


def convert(model_dir, out_path, *, adapter_dir=None, outtype="f16", validate=True) -> dict:
    from . import plugins
    from .gguf.convert import convert as convert_gguf

    registry = plugins.load().registry
    report = convert_gguf(model_dir, out_path, adapter_dir=adapter_dir, outtype=outtype,
                          architectures=registry.architectures)
    if validate:
        from .gguf.validate import validate as validate_gguf

        report = {"convert": report, "validation": validate_gguf(out_path, model_dir, adapter_dir=adapter_dir)}
    return report


def quantize(in_path, out_path, qtype: str) -> dict:
    from .quantize import quantize as quantize_gguf

    return quantize_gguf(in_path, out_path, qtype)


def verify(bundle_path, *, run_probes: bool = True, allow_plugins: bool = False) -> dict:
    from .verify import verify_bundle

    report = verify_bundle(bundle_path, run_probes=run_probes)
    if allow_plugins:
        from . import plugins

        loaded = plugins.load()
        manifest = report.get("manifest") or {}
        for findings in loaded.pm.hook.edgelora_verify_findings(bundle_dir=str(bundle_path), manifest=manifest):
            for f in findings or []:
                report["checks"].append(f)
                if not f.get("ok"):
                    report["ok"] = False
    return report


def list_plugins() -> dict:
    from . import plugins

    loaded = plugins.load()
    return {"registered": loaded.registry.listing(), "third_party": loaded.third_party,
            "errors": loaded.load_errors}
