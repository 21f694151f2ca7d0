"""What goes into a bundle's manifest besides the file list: where everything came from."""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgelora import artifacts as A

TOOLCHAIN = ("edgelora", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "gguf",
             "llama-cpp-python", "safetensors", "huggingface-hub", "pluggy")


def toolchain_versions() -> dict[str, str]:
    out = {}
    for dist in TOOLCHAIN:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    out["python"] = platform.python_version()
    out["llama.cpp"] = _llama_cpp_commit()
    return out


def _llama_cpp_commit() -> str | None:
    # llama-cpp-python 0.3.36 vendors llama.cpp 0c1e57098; the library reports its build info.
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info()
        return f"llama-cpp-python {llama_cpp.__version__}; {info.decode(errors='replace').strip()[:200]}"
    except Exception:
        return None


def build_manifest_extra(ctx, *, probes: list[dict], probe_model: str) -> dict:
    from edgelora.data.guards import max_seq_length

    cfg = ctx.config
    base = ctx.need(A.BASE)
    ds = ctx.need(A.DATASET)
    adapter_cfg = json.loads((Path(ctx.need(A.ADAPTER)) / "adapter_config.json").read_text())
    train_report = ctx.need(A.TRAIN_REPORT)
    return {
        "provenance": {
            "base": {"source": base["source"], "revision": base["revision"], "files": base["files"]},
            "dataset": {"sha256": ds["sha256"], "report": ds["report"]},
            "train": {"config": dataclasses.asdict(cfg.train), "seed": cfg.train.seed,
                      "max_seq_length": max_seq_length(ctx), "report": train_report},
            "adapter": {k: adapter_cfg.get(k) for k in
                        ("r", "lora_alpha", "use_rslora", "target_modules", "lora_dropout",
                         "rank_pattern", "alpha_pattern", "modules_to_save")},
            "toolchain": toolchain_versions(),
        },
        "reports": {
            "merge": ctx.need(A.MERGE_REPORT),
            "convert": ctx.need(A.CONVERT_REPORT),
            "quantize": ctx.need(A.QUANT_REPORT),
            "eval": _eval_summary(ctx.need(A.EVAL_REPORT)),
            "gates": _eval_summary(ctx.artifacts.get(A.GATE_REPORT)),
        },
        "ollama": {"model": cfg.ollama.model or f"{cfg.project.name}:{cfg.project.version}",
                   "template": ctx.need(A.MODELFILE)["template"],
                   "stops": ctx.need(A.MODELFILE)["stops"]},
        "probes": {"model": probe_model, "logit_tolerance": cfg.bundle.logit_tolerance, "items": probes},
    }


def gates_failed(gate_report: dict | None) -> list[str] | None:
    """One line per failed [eval] gate of a ``--no-gate`` build, or None when all passed."""
    failed = [r for r in (gate_report or {}).get("results") or [] if not r.get("ok")]
    return [f"{r.get('set')}/{r.get('metric')} on {r.get('model')}: {r.get('detail')}" for r in failed] or None


def without_host_paths(obj, project_dir: Path):
    """``obj`` with every absolute path string made relative to the project (or reduced to
    its file name when outside it): bundles must not reveal the build host's layout."""
    import os

    if isinstance(obj, dict):
        return {k: without_host_paths(v, project_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_host_paths(v, project_dir) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj and len(obj) < 4096:
        root = str(Path(project_dir).resolve())
        if obj == root:
            return "."
        if obj.startswith(root + os.sep):
            return obj[len(root) + 1:]
        return os.path.basename(obj.rstrip("/")) or obj
    return obj


def _eval_summary(report: dict | None) -> dict | None:
    from edgelora.evaluation.stage import manifest_summary

    return manifest_summary(report)


def headline_scores(eval_report: dict) -> list[str]:
    from edgelora.evaluation.report import headline_lines

    return headline_lines(eval_report)


def bundle_readme(ctx, extra: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from edgelora.data.rehearsal import forgetting_guard_text
    from edgelora.util.resources import templates_dir

    env = Environment(loader=FileSystemLoader(str(templates_dir())), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False)
    cfg = ctx.config
    return env.get_template("bundle_README.md.j2").render(
        name=cfg.project.name, version=cfg.project.version,
        model=extra["ollama"]["model"], ggufs=sorted(ctx.need(A.QUANTIZED)),
        scores=headline_scores(ctx.need(A.EVAL_REPORT)), base=extra["provenance"]["base"],
        dataset_sha256=extra["provenance"]["dataset"]["sha256"], gates_failed=extra.get("gates_failed"),
        toolkit=cfg.bundle.toolkit, model_sig=bool(cfg.bundle.model_signing_key),
        forgetting_guard=forgetting_guard_text(cfg, (extra["provenance"]["dataset"]["report"].get("rehearsal")
                                                     or {}).get("added")))
