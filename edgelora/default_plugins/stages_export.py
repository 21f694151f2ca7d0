"""Stages from the merged model to the verified bundle."""

from __future__ import annotations

import json
from pathlib import Path

from .. import artifacts as A
from ..errors import EdgeloraError, FidelityError
from ..fsutil import atomic_write_json
from .stages_prepare import probe_prompts


def _gguf_stem(ctx) -> str:
    return ctx.config.project.name


def convert(ctx) -> dict:
    from ..gguf.convert import convert as convert_gguf
    from ..gguf.validate import validate
    from ..merge_base import base_filter_for

    outtype = ctx.config.export.outtype
    base = ctx.need(A.BASE)["path"]
    adapter = ctx.need(A.ADAPTER)
    # the merge stage chose the base (original or NF4 round trip); convert and check on the same
    merge_base = (ctx.need(A.MERGE_REPORT).get("merge_base") or {}).get("chosen", "bf16")
    base_filter = base_filter_for(merge_base)
    out = ctx.stage_dir("convert") / f"{_gguf_stem(ctx)}.{outtype.upper()}.gguf"
    report = convert_gguf(base, out, adapter_dir=adapter, outtype=outtype,
                          architectures=ctx.registry.architectures, base_filter=base_filter)
    check = validate(out, base, adapter_dir=adapter, min_top1=ctx.config.export.min_top1_agreement,
                     base_filter=base_filter)
    report["merge_base"] = merge_base
    report = {"convert": report, "validation": check}
    atomic_write_json(ctx.stage_dir("convert") / "convert_report.json", report)
    ctx.log(f"  {out.name}: top-1 agreement vs HF {_get(check, 'top1_agreement')}, "
            f"max |Δlogit| {_get(check, 'max_abs_delta')}")
    return {A.GGUF: str(out.resolve()), A.CONVERT_REPORT: report}


def _get(d: dict, key: str):
    if key in d:
        return d[key]
    for v in d.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def convert_base(ctx) -> dict:
    from ..gguf.convert import convert as convert_gguf

    outtype = ctx.config.export.outtype
    out = ctx.stage_dir("convert-base") / f"base.{outtype.upper()}.gguf"
    convert_gguf(ctx.need(A.BASE)["path"], out, outtype=outtype, architectures=ctx.registry.architectures)
    return {A.BASE_GGUF: str(out.resolve())}


def quantize(ctx) -> dict:
    from .stages_quantize import quantize as quantize_stage

    return quantize_stage(ctx)  # importance matrix, every type, quality report and gate


def eval_sets(ctx) -> dict:
    from ..evaluation.stage import eval_sets_stage

    return eval_sets_stage(ctx)


def evaluate(ctx) -> dict:
    from ..evaluation.stage import evaluate_stage

    return evaluate_stage(ctx)


def gate(ctx) -> dict:
    from ..evaluation.stage import gate_stage

    return gate_stage(ctx)


def modelfile(ctx) -> dict:
    from ..chat_jinja import added_tokens
    from ..modelfile import check_eog, choose_chat_template, end_of_turn_tokens, render_modelfile

    base = Path(ctx.need(A.BASE)["path"])
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    chat_template = tok_cfg.get("chat_template")
    if not chat_template:
        raise EdgeloraError(f"{base / 'tokenizer_config.json'}: no chat_template")
    o = ctx.config.ollama
    first = next(iter(ctx.need(A.QUANTIZED)))  # first type that passed the gate
    gguf_path = ctx.need(A.QUANTIZED)[first]
    user_template = ctx.config.resolve(o.template).read_text(encoding="utf-8") if o.template else None
    # text, then token ids (HF and the shipped GGUF's own vocabulary), then llama.cpp's EOG set
    name, go_text, stops = choose_chat_template(chat_template, base, user_template=user_template, gguf_path=gguf_path)
    eog = check_eog(gguf_path, end_of_turn_tokens(go_text, added_tokens(base)))
    num_ctx = o.num_ctx or max(2048, ctx.config.data.max_seq_length)
    params = {}
    if o.temperature >= 0:
        params["temperature"] = o.temperature
    text = render_modelfile(gguf_name=f"{_gguf_stem(ctx)}.{first}.gguf", template_text=go_text,
                            stops=stops, num_ctx=num_ctx, system=o.system or None, parameters=params)
    ctx.log(f"  chat template: {name} (proven equal to the tokenizer's Jinja template, text and token ids); "
            f"stops {stops}; end of turn {list(eog)} is end-of-generation in llama.cpp")
    return {A.MODELFILE: {"text": text, "template": name, "stops": stops, "end_of_turn": eog}}


def bundle(ctx) -> dict:
    from ..provenance import build_manifest_extra, bundle_readme
    from ..bundle import write_bundle
    from ..probes import record_probes

    cfg = ctx.config
    quantized = ctx.need(A.QUANTIZED)
    staging = ctx.stage_dir("bundle")
    files: dict[str, Path] = {}
    for qtype, path in quantized.items():
        files[f"{_gguf_stem(ctx)}.{qtype}.gguf"] = Path(path)
    adapter = Path(ctx.need(A.ADAPTER))
    for extra in ("loss.png", "metrics.jsonl"):
        if (adapter / extra).exists():
            files[f"reports/{extra}"] = adapter / extra
    ds = ctx.need(A.DATASET)
    files["reports/data_report.json"] = Path(ds["report_path"])
    from ..evaluation.stage import bundle_files

    files.update(bundle_files(ctx.artifacts.get(A.GATE_REPORT) or ctx.need(A.EVAL_REPORT)))
    from .stages_quantize import quality_files

    files.update(quality_files(ctx, staging))  # quantization quality report and gate verdicts
    target_report = _export_targets(ctx, staging / "targets", files)
    first = next(iter(quantized))  # first type that passed the gate
    probes = record_probes(quantized[first], probe_prompts(ctx, cfg.bundle.probes),
                           max_tokens=cfg.bundle.probe_tokens)
    extra = build_manifest_extra(ctx, probes=probes, probe_model=f"{_gguf_stem(ctx)}.{first}.gguf")
    extra["targets"] = target_report
    result = write_bundle(dist_dir=cfg.resolve(cfg.bundle.dist), name=cfg.project.name,
                          version=cfg.project.version, files=files, manifest_extra=extra,
                          readme_text=bundle_readme(ctx, extra),
                          signing_key=cfg.resolve(cfg.bundle.signing_key) if cfg.bundle.signing_key else None)
    ctx.log(f"  {result['dir']} and {result['tar']}")
    return {A.BUNDLE: {"dir": str(Path(result["dir"]).resolve()), "tar": str(Path(result["tar"]).resolve()),
                       "targets": target_report}}


def _export_targets(ctx, staging_root: Path, files: dict[str, Path]) -> dict:
    """Run the selected targets isolated (see edgelora.target_runner); add the files of those
    that succeeded to ``files``. A failed target is recorded, not raised, unless it touched a
    file the core bundle ships."""
    from ..errors import BundleError
    from ..target_runner import run_targets, select_targets

    cfg = ctx.config
    names = select_targets(ctx.registry, cfg.export.targets)
    watch = [ctx.project_dir, cfg.resolve(cfg.bundle.dist)]
    outcomes = run_targets(ctx, names, staging_root, timeout_s=cfg.export.target_timeout_s,
                           watch=watch, core_files=files)
    core = {str(Path(p).resolve()) for p in files.values()}
    for o in outcomes:
        touched = [s.split(" ", 1)[1] for s in o.strays if not s.startswith("created ")]
        hit = [p for p in touched if str(Path(p).resolve()) in core]
        if hit:
            raise BundleError(f"{hit[0]}: changed by target {o.name!r} (plugin {o.plugin!r}) while it ran; "
                              "the bundle was not written")
        if o.ok:
            files.update(o.files)
    return {o.name: o.report() for o in outcomes}


def verify(ctx) -> dict:
    from ..verify import verify_bundle

    report = verify_bundle(ctx.need(A.BUNDLE)["dir"])
    if not report["ok"]:
        bad = [c for c in report["checks"] if not c["ok"]]
        raise FidelityError(f"verify failed: {bad[0]['name']}: {bad[0]['detail']}")
    ctx.log(f"  verify: {len(report['checks'])} checks passed")
    return {A.VERIFY_REPORT: report}
