"""``edgelora eval`` on a project: which stages make the models ``--model`` names, and their paths
once those stages ran (the API runs them once, through the pipeline)."""

from __future__ import annotations

from pathlib import Path

from edgelora import artifacts as A
from edgelora.errors import ConfigError
from edgelora.evaluation.sets import set_names


def model_stages(cfg, specs: list[str]) -> set[str]:
    """The stages that make the models ``--model`` names; checks the specs before anything runs."""
    stages = set()
    for spec in specs:
        if spec == "base":
            stages.add("quantize-base")
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


def check_set_names(cfg, sets: list[str] | None) -> None:
    unknown = sorted(set(sets or ()) - set(set_names(cfg)))
    if unknown:
        raise ConfigError(f"edgelora.toml: [eval] no eval set named {unknown[0]!r} "
                          f"(configured: {', '.join(set_names(cfg)) or 'none'})")


def wants_dataset(cfg, sets: list[str] | None) -> bool:
    """Whether the chosen sets need the prepared data (held-out split, probes)."""
    want = not sets or any(s in ("heldout", "probes") for s in sets)
    return bool(want and (cfg.eval.heldout or cfg.data.probes))


def resolve_models(ctx, specs: list[str]) -> tuple[dict[str, str], str | None]:
    """{label: gguf path} for ``--model`` specs, from a context in which their stages ran."""
    cfg = ctx.config
    models: dict[str, str] = {}
    base_label = None
    for spec in specs:
        if spec == "base":
            first = cfg.export.quantize[0]
            base_label = f"base.{first}"
            models[base_label] = ctx.need(A.BASE_QUANTIZED)[first]
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
