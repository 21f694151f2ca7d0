"""The library API the CLI (and tests) call. Every function raises EdgeloraError subclasses."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Iterable

from edgelora import artifacts as A
from edgelora import config as config_mod
from edgelora.context import Context
from edgelora.errors import ConfigError, EdgeloraError, PlanError
from edgelora.util.files import atomic_write_text
from edgelora.util.resources import templates_dir

BUILD_TARGET = "verify"


def _context(project_dir, *, log=print, console=None, third_party=True, extra_plugins=(), options=None):
    from edgelora import plugins

    cfg = config_mod.load(project_dir)
    loaded = plugins.load(third_party=third_party, extra=list(extra_plugins))
    source = loaded.registry.sources.get(cfg.base.source)
    problems = config_mod.problems(cfg)
    if source is not None and source.check:  # [base] fields are the registered source's to check
        problems += [config_mod.locate(p, cfg.lines) for p in source.check(cfg.base, Path(project_dir))]
    if problems:  # every command stops on what plan would report about edgelora.toml itself
        raise ConfigError(problems=sorted(problems, key=config_mod.line_of))
    if (options or {}).get("toolkit"):  # build --with-toolkit: as if [bundle] toolkit = true (same cache key)
        import dataclasses

        cfg = dataclasses.replace(cfg, bundle=dataclasses.replace(cfg.bundle, toolkit=True))
    for err in loaded.load_errors:
        log(f"warning: {err}")
    ctx = Context(config=cfg, project_dir=Path(project_dir).resolve(), registry=loaded.registry,
                  log=log, console=console, options=MappingProxyType(dict(options or {})))
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
    from edgelora.pipeline.plan import collect_problems

    load_problems: list[str] = []
    cfg = config_mod.load(project_dir, problems=load_problems)
    from edgelora import plugins

    loaded = plugins.load(extra=list(extra_plugins))
    ctx = Context(config=cfg, project_dir=Path(project_dir).resolve(), registry=loaded.registry, log=log)
    summary, problems = collect_problems(ctx, load_problems)
    if problems:
        raise PlanError(loaded.load_errors + problems)
    # A broken plugin the project does not use must not stop it; one it uses shows up above
    # as an unknown source, architecture or target.
    for err in loaded.load_errors:
        log(f"warning: {err}")
    for warning in summary.get("warnings", []):
        log(f"warning: {warning}")
    return summary


# -- build ---------------------------------------------------------------------

def run_stages(project_dir, targets: Iterable[str] | None = None, *, force: Iterable[str] = (),
               log=print, console=None, extra_plugins=(), options=None) -> Context:
    """Run the named stages and what they require (all stages when ``targets`` is None)."""
    from edgelora.pipeline.runner import order_stages, run, select

    ctx, loaded = _context(project_dir, log=log, console=console, extra_plugins=extra_plugins, options=options)
    stages = order_stages(loaded.registry.stages.values())
    targets = [s.name for s in stages] if targets is None else list(targets)
    unknown = [t for t in targets if t not in loaded.registry.stages]
    if unknown:
        raise EdgeloraError(f"unknown stage(s) {unknown} (known: {', '.join(s.name for s in stages)})")
    return run(ctx, select(stages, targets), loaded.pm, force=force)


def build(project_dir, *, force: Iterable[str] = (), log=print, console=None, extra_plugins=(),
          gate: bool = True, with_toolkit: bool = False) -> dict:
    """Run every registered stage; returns the bundle paths, scores and reports.

    A failed [eval] gate raises GateError before the bundle is written, unless ``gate=False``.
    ``with_toolkit`` adds toolkit/ to the bundle as ``[bundle] toolkit = true`` does."""
    ctx = run_stages(project_dir, None, force=force, log=log, console=console, extra_plugins=extra_plugins,
                     options={"gate": gate, "toolkit": with_toolkit, "force_dist": "bundle" in set(force)})
    return {"bundle": ctx.artifacts.get(A.BUNDLE), "eval": ctx.artifacts.get(A.EVAL_REPORT),
            "gates": ctx.artifacts.get(A.GATE_REPORT), "quant_quality": ctx.artifacts.get(A.QUANT_REPORT),
            "verify_ok": (ctx.artifacts.get(A.VERIFY_REPORT) or {}).get("ok")}


def evaluate(project_dir, *, models: Iterable[str] = (), sets: Iterable[str] | None = None, log=print,
             out_dir=None) -> dict:
    """Score eval sets on models of the project: "base", "adapter", "gguf:QUANT" or a .gguf path
    (default: the base and every shipped quantization); writes eval.json and eval.md."""
    from edgelora.evaluation.gates import check_gates
    from edgelora.evaluation.project import check_set_names, model_stages, resolve_models, wants_dataset
    from edgelora.evaluation.runner import evaluate_models
    from edgelora.evaluation.sets import build_sets
    from edgelora.evaluation.stage import write_reports

    cfg = config_mod.load(project_dir)
    specs = list(models) or ["base", "gguf:*"]
    sets = list(sets) if sets else None
    stages = model_stages(cfg, specs)  # a wrong --model or --set fails before any stage runs
    check_set_names(cfg, sets)
    if wants_dataset(cfg, sets):
        stages.add("prepare-data")
    if stages:
        ctx = run_stages(project_dir, sorted(stages), log=log)
    else:
        ctx, _ = _context(project_dir, log=log)
    chosen = build_sets(cfg, ctx.artifacts.get(A.DATASET), only=sets)
    if not chosen:
        raise ConfigError("edgelora.toml: [eval] no eval sets to run (held-out off, no probes, no regression set)")
    model_paths, base_label = resolve_models(ctx, specs)
    report = evaluate_models(model_paths, chosen, base_model=base_label, log=log)
    report["gates"] = check_gates(report, [g for g in cfg.eval.gates if g.get("set") in report["sets"]])
    out = Path(out_dir) if out_dir else ctx.stage_dir("eval-cli")
    report["files"] = write_reports(report, out)
    return report


def fetch(project_dir, *, log=print) -> dict:
    from edgelora.sources.stage import fetch_base

    ctx, _ = _context(project_dir, log=log)
    return fetch_base(ctx, download=True)[A.BASE]


# -- toolbox commands ------------------------------------------------------------

def merge(base_dir, adapter_dir, out_dir) -> dict:
    from edgelora.merge.view import MergedView
    from edgelora.merge.alpha_check import materialize

    with MergedView(base_dir, adapter_dir) as view:
        return materialize(view, out_dir)


def convert(model_dir, out_path, *, adapter_dir=None, outtype="f16", validate=True) -> dict:
    from edgelora import plugins
    from edgelora.gguf.convert import convert as convert_gguf

    registry = plugins.load().registry
    report = convert_gguf(model_dir, out_path, adapter_dir=adapter_dir, outtype=outtype,
                          architectures=registry.architectures)
    if validate:
        from edgelora.gguf.validate import validate as validate_gguf

        report = {"convert": report, "validation": validate_gguf(out_path, model_dir, adapter_dir=adapter_dir)}
    return report


def convert_adapter(model_dir, adapter_dir, out_path, *, outtype="f16", validate=True, base_gguf=None,
                    min_top1: float = 0.98, prompts=None, n_tokens: int = 64) -> dict:
    """LoRA GGUF sidecar for ``Llama(model_path=base, lora_path=out)``; validated against the
    PEFT-attached model through ``base_gguf`` (converted to a temporary file when not given)."""
    import tempfile

    from edgelora import plugins
    from edgelora.errors import FidelityError
    from edgelora.gguf.adapter import compare_sidecar, convert_adapter as convert_sidecar
    from edgelora.gguf.convert import convert as convert_gguf

    registry = plugins.load().registry
    report = convert_sidecar(model_dir, adapter_dir, out_path, outtype=outtype,
                             architectures=registry.architectures)
    if not validate:
        return report
    with tempfile.TemporaryDirectory(dir=Path(out_path).parent) as tmp:
        if base_gguf is None:
            base_gguf = Path(tmp) / "base.gguf"
            convert_gguf(model_dir, base_gguf, outtype=outtype, architectures=registry.architectures)
        check = compare_sidecar(base_gguf, out_path, model_dir, adapter_dir, prompts=prompts, n_tokens=n_tokens)
    if check["top1_agreement"] < min_top1:
        raise FidelityError(f"{out_path}: base GGUF + sidecar vs PEFT-attached model: top-1 agreement "
                            f"{check['top1_agreement']:.3f} < {min_top1} (max |Δlogit| {check['max_abs_delta']:.3g})")
    return {"convert": report, "validation": check}


def quantize(in_path, out_path, qtype: str, *, imatrix_path=None) -> dict:
    from edgelora.quantize.llama_quantize import quantize as quantize_gguf

    imatrix = None
    if imatrix_path is not None:
        from edgelora.quantize.imatrix import read_imatrix

        imatrix = read_imatrix(imatrix_path)  # GGUF imatrix or legacy .dat, as llama-quantize reads
    return quantize_gguf(in_path, out_path, qtype, imatrix=imatrix)


def verify(bundle_path, *, run_probes: bool = True, allow_plugins: bool = False, trust=None,
           allow_failed_gate: bool = False) -> dict:
    import tempfile

    from edgelora.host.verify import verify_bundle

    with tempfile.TemporaryDirectory(prefix="edgelora-verify-") as tmp:
        # plugins see the verified private copy (a folder, also for a .tar), never a second read
        report = verify_bundle(bundle_path, run_probes=run_probes, trust=trust, allow_failed_gate=allow_failed_gate,
                               extract_to=Path(tmp) / "copy")
        if allow_plugins and report.get("root"):
            from edgelora import plugins

            loaded = plugins.load()
            manifest = report.get("manifest") or {}
            for findings in loaded.pm.hook.edgelora_verify_findings(bundle_dir=report["root"], manifest=manifest):
                for f in findings or []:
                    report["checks"].append(f)
                    if not f.get("ok"):
                        report["ok"] = False
        report.pop("root", None)
    return report


def keygen(private_path, key_type: str = "ed25519") -> dict:
    """Key pair for signing bundles: PRIVATE (0600) and PRIVATE.pub; ed25519 (manifest.sig) or
    ecdsa-p256 (model.sig, the OpenSSF model-signing format)."""
    from edgelora.bundle.signing import generate_keypair

    return generate_keypair(private_path, key_type)


def toolkit(out_dir, *, python=None, platform=None, find_links=(), download=True, log=print) -> dict:
    """Write the host toolkit folder (wheels, requirements.txt with hashes, install.sh) at OUT_DIR."""
    from edgelora.bundle.toolkit import write_toolkit

    return write_toolkit(out_dir, python=python, platform=platform, find_links=find_links, download=download,
                         log=log)


def install(bundle_path, *, name=None, store=None, allow_downgrade=False, trust=None, run_probes=True,
            lock_timeout=60.0, log=print, allow_failed_gate=False, quant=None, latest=True) -> dict:
    """Verify a bundle, then install it into Ollama (``ollama create`` or the model store)."""
    from edgelora.host.install import install_bundle

    return install_bundle(bundle_path, name=name, store=store, allow_downgrade=allow_downgrade, trust=trust,
                          run_probes=run_probes, lock_timeout=lock_timeout, log=log,
                          allow_failed_gate=allow_failed_gate, quant=quant, latest=latest)


def list_installed(*, store=None) -> list[dict]:
    from edgelora.host.install import list_installed as _list

    return _list(store)


def uninstall(model: str, *, store=None, log=print) -> list[str]:
    from edgelora.host.install import uninstall as _uninstall

    return _uninstall(model, store, log=log)


def list_plugins() -> dict:
    from edgelora import plugins

    loaded = plugins.load()
    return {"plugins": [i.as_dict() for i in loaded.info], "registered": loaded.registry.listing(),
            "third_party": loaded.third_party, "errors": loaded.load_errors}


# -- trying and tidying ------------------------------------------------------------

def open_chat(model_or_bundle, *, trust=None):
    """Context manager: the ChatModel (GGUF, stops, SYSTEM) of a .gguf, bundle folder or .tar;
    talk to it with ``edgelora.host.chat.ChatSession``."""
    from edgelora.host.chat import open_model

    return open_model(model_or_bundle, trust=trust)


def clean(project_dir, *, dry_run: bool = False) -> dict:
    """Remove stage outputs under .edgelora/ that no stage's last run recorded (see runner.clean)."""
    from edgelora.pipeline.runner import clean as clean_work

    config_mod.load(project_dir)  # a project folder, not any folder
    return clean_work(Path(project_dir).resolve() / ".edgelora", dry_run=dry_run)
