"""``edgelora plan``: every problem at once, before anything expensive runs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgelora import config as config_mod
from edgelora.errors import EdgeloraError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _check(problems: list[str], fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except EdgeloraError as e:
        problems.extend(e.problems or [str(e)])
    except (OSError, ValueError) as e:
        problems.append(f"{type(e).__name__}: {e}")
    return None


NOT_UNTIL_FETCH = "not checked until fetch"


def collect_problems(ctx, problems: list[str] | None = None) -> tuple[dict, list[str]]:
    """(summary, problems): ``problems`` starts with what loading edgelora.toml found."""
    cfg = ctx.config
    problems = list(problems or []) + config_mod.problems(cfg)
    summary: dict = {"project": f"{cfg.project.name}-{cfg.project.version}"}
    unchecked: list[str] = []
    source = ctx.registry.sources.get(cfg.base.source)
    if source is None:
        problems.append(f"edgelora.toml: [base] source {cfg.base.source!r} is not registered "
                        f"(known: {', '.join(sorted(ctx.registry.sources))})")
    field_problems = source.check(cfg.base, ctx.project_dir) if source is not None and source.check else []
    problems += field_problems
    with tempfile.TemporaryDirectory(prefix="edgelora-plan-") as tmp:
        before = len(problems)
        found = None
        if source is not None and not field_problems:
            found = _check(problems, _base_for_plan, ctx, source, summary, Path(tmp))
        base_dir, tokenizer_dir, gguf_weights = found or (None, None, None)
        if base_dir is not None:
            summary.setdefault("base", str(base_dir))
            _check(problems, _check_model_dir, ctx, base_dir, summary, problems)
        if len(problems) > before:  # tokenizing with a base already found wrong would only add noise
            tokenizer_dir = None
        examples = _check(problems, _check_data, ctx, summary, problems, tokenizer_dir, unchecked)
    if base_dir is not None:
        _check(problems, lambda: _check_target_modules(ctx, _safetensors_weights(base_dir)))
    elif gguf_weights:
        _check(problems, _check_target_modules, ctx, gguf_weights)
    elif cfg.train.target_modules != ["all-linear"]:
        unchecked.append("[train] target_modules against the base's modules")
    from edgelora.data.guards import plan_warnings
    from edgelora.evaluation.sets import check_eval_files

    _check(problems, check_eval_files, ctx.config)
    warnings = _check(problems, plan_warnings, ctx, *examples) if examples is not None else None
    if warnings:
        summary["warnings"] = warnings
    _check(problems, _check_quant_types, cfg)
    from edgelora.bundle.targets import select_targets

    targets = _check(problems, select_targets, ctx.registry, cfg.export.targets)
    from edgelora.data.rehearsal import forgetting_guard_text

    guard = forgetting_guard_text(cfg)
    if guard:
        summary["forgetting_guard"] = guard
    summary["stages"] = list(ctx.registry.stages)
    if targets is not None:
        summary["targets"] = (", ".join(targets) or "none") + (
            "" if cfg.export.targets else " (the default targets; [export] targets = [] adds none)")
    if unchecked:
        summary[NOT_UNTIL_FETCH] = unchecked
    return summary, [config_mod.locate(p, cfg.lines) for p in problems]


def _base_for_plan(ctx, source, summary: dict, tmp: Path) -> tuple:
    """(base directory, tokenizer directory, GGUF weights by HF name), each None when it cannot
    be looked at without fetching: a base fetched before, else what the registered source can
    point at in place (``Source.locate``): a model folder, or a GGUF read in place (header:
    architecture, context, chat template, tensor names; its tokenizer is written to ``tmp``)."""
    from edgelora.errors import BaseModelError

    fetched = ctx.work_dir / "base" / source.name
    if (fetched / "config.json").is_file():
        return fetched, fetched, None
    located = source.locate(ctx.config.base, ctx.project_dir) if source.locate else None
    if located is None:
        summary["base"] = NOT_UNTIL_FETCH
        return None, None, None
    path = Path(located)
    if path.suffix == ".gguf":
        return (None, *(_check_gguf_header(ctx, path, summary, tmp) or (None, None)))
    if not (path / "config.json").is_file():
        raise BaseModelError(f"{path}: [base] path has no config.json")
    bad = [p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise BaseModelError(f"{path / bad[0]}: pickle weights are refused; convert to safetensors")
    return path, path, None


def _check_gguf_header(ctx, path: Path, summary: dict, tmp: Path) -> tuple | None:
    """Architecture, context and chat template from the GGUF; returns (its tokenizer folder,
    its layer weights under their HF names, or None where the architecture has no name table)."""
    from edgelora.errors import BaseModelError, UnsupportedArchitecture
    from edgelora.gguf.reader import read_metadata

    if not path.is_file():
        raise BaseModelError(f"{path}: [base] path: GGUF file not found")
    summary["base"] = str(path)
    meta = read_metadata(path)  # header, key/values and tensor infos; no tensor data
    kv = meta.kv
    arch = kv.get("general.architecture", "?")
    known = {getattr(a, "gguf_arch", a.name) for a in ctx.registry.architectures.values()}
    if arch not in known:
        raise UnsupportedArchitecture(f"{path}: GGUF architecture {arch!r} is not supported (known: {sorted(known)})")
    weights = _gguf_weights_as_hf(ctx, arch, meta.tensors)
    summary["architecture"] = f"{arch} (GGUF header)"
    if kv.get(f"{arch}.context_length"):
        summary["context"] = kv[f"{arch}.context_length"]
    if not kv.get("tokenizer.chat_template"):
        raise BaseModelError(f"{path}: the GGUF has no tokenizer.chat_template; a chat fine-tune needs one")
    from edgelora.sources.gguf_import import import_tokenizer

    import_tokenizer(path, tmp)
    _check_chat_template(ctx, tmp, summary)
    return tmp, weights


def _gguf_weights_as_hf(ctx, gguf_arch: str, tensors) -> dict | None:
    """{HF weight name: shape} of a GGUF's layer tensors through the architecture's name table
    (``blk.0.attn_q.weight`` -> ``model.layers.0.self_attn.q_proj.weight``)."""
    arch = next((a for a in ctx.registry.architectures.values() if getattr(a, "gguf_arch", a.name) == gguf_arch), None)
    parts = getattr(getattr(arch, "map_name", None), "layer_parts", None)
    if not parts:
        return None
    hf_part = {g: h for h, g in parts.items()}
    out = {}
    for name, shape, _type, _offset in tensors:
        bits = name.split(".")
        if len(bits) == 4 and bits[0] == "blk" and bits[2] in hf_part:
            out[f"model.layers.{bits[1]}.{hf_part[bits[2]]}.{bits[3]}"] = shape
    return out or None


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
    from edgelora.data.guards import model_context

    if model_context(config):
        summary["context"] = model_context(config)
    _check(problems, _check_chat_template, ctx, base_dir, summary)


def _check_chat_template(ctx, tokenizer_dir: Path, summary: dict) -> None:
    tok_cfg_path = tokenizer_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    if tok_cfg.get("chat_template"):
        from edgelora.modelfile.equivalence import choose_chat_template

        o = ctx.config.ollama
        user_template = ctx.config.resolve(o.template).read_text(encoding="utf-8") if o.template else None
        name, _, stops = choose_chat_template(tok_cfg["chat_template"], tokenizer_dir, user_template=user_template)
        summary["chat_template"] = f"{name} (stops {', '.join(stops)})"


def _check_data(ctx, summary: dict, problems: list[str], tokenizer_dir, unchecked: list[str]) -> tuple | None:
    """Load every data file (each bad record its own problem), flag the scaffold's placeholders,
    then tokenize train and held-out with the base's tokenizer and chat template to choose
    max_seq_length and count what truncation costs. Returns (task examples, how many train)."""
    from edgelora.data.stage import assemble_examples
    from edgelora.errors import DataError

    try:
        sets = assemble_examples(ctx.config)
    except DataError as e:
        problems.extend(e.problems or [str(e)])
        return None
    train, heldout = sets["train"], sets["heldout"]
    summary["train_examples"] = len(train)
    summary["heldout_examples"] = len(heldout)
    if sets["probes"]:
        summary["probes_examples"] = len(sets["probes"])
    placeholders = _placeholder_count(train + heldout)
    if placeholders:
        problems.append(f"[data] train: {placeholders} example(s) are the placeholders `edgelora init` wrote; "
                        "replace them with your own conversations")
    task = (sets["task_train"] if ctx.config.data.heldout else sets["task_train"] + heldout), len(sets["task_train"])
    if tokenizer_dir is None:
        unchecked.append("tokenization, truncation and max_seq_length of the data")
        return task
    from transformers import AutoTokenizer

    from edgelora.data.guards import describe_fit, fit_data, truncation_problem
    from edgelora.data.stage import base_context

    d = ctx.config.data
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    context = summary.get("context") or base_context(tokenizer_dir)
    fit = fit_data(tok, {"train": train, "heldout": heldout}, d.max_seq_length, context)
    summary["max_seq_length"] = describe_fit(fit)
    counts = fit["sets"]
    summary["truncated"] = ", ".join(f"{c['truncated']} of {c['examples']} {name}" for name, c in counts.items())
    summary["lost_all_answer"] = ", ".join(f"{c['without_trained_tokens']} {name}" for name, c in counts.items())
    problem = truncation_problem(fit, d.allow_truncation)
    if problem:
        problems.append(problem)
    return task


def _placeholder_count(examples: list[dict]) -> int:
    from edgelora.data.chat import example_key
    from edgelora.data.formats import load_examples
    from edgelora.util.resources import templates_dir

    scaffold = {example_key(e) for e in load_examples(templates_dir() / "project" / "train.example.jsonl")}
    return sum(example_key(e) in scaffold for e in examples)


def _safetensors_weights(base_dir: Path) -> dict:
    from edgelora.util.safetensors import check_safetensors_header

    shapes = {}
    for st in sorted(base_dir.glob("*.safetensors")):
        shapes |= {name: info[1] for name, info in check_safetensors_header(st).items()}
    return shapes


def _check_target_modules(ctx, shapes: dict) -> None:
    """Every name in [train] target_modules must be a module of the base ({weight name: shape})."""
    from edgelora.errors import ConfigError

    wanted = [m for m in ctx.config.train.target_modules if m != "all-linear"]
    if not wanted:
        return
    names = set(shapes)
    modules = {part for n in names for part in n.split(".")[:-1]}
    missing = [m for m in wanted if m not in modules and m not in {n.rsplit(".", 1)[0] for n in names}]
    if missing:
        linear = sorted({n.split(".")[-2] for n, shape in shapes.items() if n.endswith(".weight")
                         and len(shape) == 2 and ".layers." in n})
        raise ConfigError(f"edgelora.toml: [train] target_modules {missing}: the base has no such module "
                          f"(its layer weights: {', '.join(linear)})")


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
