"""``edgelora plan``: every problem at once, before anything expensive runs."""

from __future__ import annotations

import json
from pathlib import Path

from edgelora import config as config_mod
from edgelora.errors import EdgeloraError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check(problems: list[str], fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except EdgeloraError as e:
        problems.append(str(e))
    except (OSError, ValueError) as e:
        problems.append(f"{type(e).__name__}: {e}")
    return None


def collect_problems(ctx) -> tuple[dict, list[str]]:
    cfg = ctx.config
    problems = config_mod.problems(cfg)
    summary: dict = {"project": f"{cfg.project.name}-{cfg.project.version}"}
    source = ctx.registry.sources.get(cfg.base.source)
    if source is None:
        problems.append(f"edgelora.toml: [base] source {cfg.base.source!r} is not registered "
                        f"(known: {', '.join(sorted(ctx.registry.sources))})")
    else:
        field_problems = source.check(cfg.base, ctx.project_dir) if source.check else []
        problems += field_problems
        if not field_problems:
            base_dir = _check(problems, _base_dir_for_plan, ctx, source, summary)
            if base_dir is not None:
                summary["base"] = str(base_dir)
                _check(problems, _check_model_dir, ctx, base_dir, summary, problems)
    _check(problems, _check_data, ctx, summary)
    from edgelora.data.guards import plan_warnings
    from edgelora.evaluation.sets import check_eval_files

    _check(problems, check_eval_files, ctx.config)
    warnings = _check(problems, plan_warnings, ctx)
    if warnings:
        summary["warnings"] = warnings
    _check(problems, _check_quant_types, cfg)
    from edgelora.bundle.targets import select_targets

    _check(problems, select_targets, ctx.registry, cfg.export.targets)
    summary["stages"] = list(ctx.registry.stages)
    summary["targets"] = list(ctx.registry.targets)
    return summary, problems


def _base_dir_for_plan(ctx, source, summary: dict) -> Path | None:
    """The base folder ``plan`` can inspect without fetching: one fetched before, else what the
    source can point at in place (a folder, or a GGUF whose header is read)."""
    from edgelora.errors import BaseModelError

    fetched = ctx.work_dir / "base" / source.name
    if (fetched / "config.json").is_file():
        return fetched
    located = source.locate(ctx.config.base, ctx.project_dir) if source.locate else None
    if located is None:
        summary["base"] = "not checked until fetch"
        return None
    located = Path(located)
    if located.suffix == ".gguf":
        _check_gguf_header(ctx, located)
        return None
    if not (located / "config.json").is_file():
        raise BaseModelError(f"{located}: [base] path has no config.json")
    bad = [p.name for p in located.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise BaseModelError(f"{located / bad[0]}: pickle weights are refused; convert to safetensors")
    return located


def _check_gguf_header(ctx, path: Path) -> None:
    from edgelora.errors import BaseModelError, UnsupportedArchitecture

    if not path.is_file():
        raise BaseModelError(f"{path}: [base] GGUF file not found")
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field else "?"
    known = {getattr(a, "gguf_arch", a.name) for a in ctx.registry.architectures.values()}
    if arch not in known:
        raise UnsupportedArchitecture(f"{path}: GGUF architecture {arch!r} is not supported (known: {sorted(known)})")


def _check_model_dir(ctx, base_dir: Path, summary: dict, problems: list[str]) -> None:
    from edgelora.gguf.architectures import check_convertible, find_architecture
    from edgelora.gguf.tokenizer import pre_tokenizer_name

    config = json.loads((base_dir / "config.json").read_text())
    # architecture and tokenizer are independent: report both before any training runs
    arch = _check(problems, find_architecture, config, ctx.registry.architectures)
    if arch is not None:
        summary["architecture"] = arch.name
        _check(problems, check_convertible, config, arch)
    pre = _check(problems, pre_tokenizer_name, base_dir)
    if pre is not None:
        summary["tokenizer_pre"] = pre
    tok_cfg_path = base_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    if tok_cfg.get("chat_template"):
        from edgelora.modelfile.equivalence import choose_chat_template

        o = ctx.config.ollama
        user_template = ctx.config.resolve(o.template).read_text(encoding="utf-8") if o.template else None
        name, _, _ = choose_chat_template(tok_cfg["chat_template"], base_dir, user_template=user_template)
        summary["chat_template"] = name


def _check_data(ctx, summary: dict) -> None:
    from edgelora.data.formats import load_examples
    from edgelora.errors import DataError

    d = ctx.config.data
    for field_name in ("train", "heldout", "probes"):
        rel = getattr(d, field_name)
        if not rel:
            continue
        path = ctx.config.resolve(rel)
        if not path.exists():
            raise DataError(f"{path}: [data] {field_name} not found")
        summary[f"{field_name}_examples"] = len(load_examples(path))


def _check_quant_types(cfg) -> None:
    from edgelora.errors import ConfigError
    from edgelora.quantize.llama_quantize import supported_types

    if cfg.export.imatrix not in ("auto", "on", "off") and not cfg.resolve(cfg.export.imatrix).is_file():
        raise ConfigError(f"edgelora.toml: [export] imatrix {cfg.export.imatrix!r}: file not found "
                          "(or use 'auto', 'on', 'off')")
    known = supported_types(with_imatrix=cfg.export.imatrix != "off")
    bad = [q for q in cfg.export.quantize if q.upper() not in known]
    if bad:
        raise ConfigError(f"edgelora.toml: [export] quantize has unknown type(s) {bad} (known: {', '.join(known)})")
