"""Stages from the merged model to the verified bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import artifacts as A
from ..errors import EdgeloraError, FidelityError
from ..fsutil import atomic_write_json
from .stages_prepare import probe_prompts, read_jsonl


def _gguf_stem(ctx) -> str:
    return ctx.config.project.name


def convert(ctx) -> dict:
    from ..gguf.convert import convert as convert_gguf
    from ..gguf.validate import validate

    outtype = ctx.config.export.outtype
    base = ctx.need(A.BASE)["path"]
    adapter = ctx.need(A.ADAPTER)
    out = ctx.stage_dir("convert") / f"{_gguf_stem(ctx)}.{outtype.upper()}.gguf"
    report = convert_gguf(base, out, adapter_dir=adapter, outtype=outtype,
                          architectures=ctx.registry.architectures)
    check = validate(out, base, adapter_dir=adapter, min_top1=ctx.config.export.min_top1_agreement)
    report = {"convert": report, "validation": check}
    atomic_write_json(ctx.stage_dir("convert") / "convert_report.json", report)
    ctx.log(f"  {out.name}: top-1 agreement vs HF {_get(check, 'top1_agreement')}, "
            f"max |Δlogit| {_get(check, 'max_abs_diff')}")
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
    from ..quantize import quantize as quantize_gguf

    src = ctx.need(A.GGUF)
    out_dir = ctx.stage_dir("quantize")
    quantized, reports = {}, {}
    for qtype in ctx.config.export.quantize:
        out = out_dir / f"{_gguf_stem(ctx)}.{qtype}.gguf"
        reports[qtype] = quantize_gguf(src, out, qtype)
        quantized[qtype] = str(out.resolve())
        ctx.log(f"  {out.name}: {os.path.getsize(out) / 2**20:.1f} MiB")
    return {A.QUANTIZED: quantized, A.QUANT_REPORT: reports}


def evaluate(ctx) -> dict:
    from ..quantize import quantize as quantize_gguf
    from ..scoring import score_gguf

    ev = ctx.config.eval
    if not ev.task:
        return {A.EVAL_REPORT: {"task": "", "note": "no [eval] task configured"}}
    ds = ctx.need(A.DATASET)
    quantized = ctx.need(A.QUANTIZED)
    first = ctx.config.export.quantize[0]
    base_q = ctx.stage_dir("evaluate") / f"base.{first}.gguf"
    if not base_q.exists():
        quantize_gguf(ctx.need(A.BASE_GGUF), base_q, first)
    sets = {"heldout": read_jsonl(ds["heldout"])}
    if ds.get("probes"):
        probes = read_jsonl(ds["probes"])
        if probes:
            sets["probes"] = probes
    models = {f"base.{first}": str(base_q)} | {f"fine-tune.{q}": p for q, p in quantized.items()}
    results: dict = {"task": ev.task, "fields": ev.fields, "scores": {}}
    for set_name, rows in sets.items():
        if ev.limit:
            rows = rows[: ev.limit]
        expected = [json.loads(r["messages"][-1]["content"]) for r in rows]
        for model_name, path in models.items():
            score = score_gguf(path, rows, ev.fields, max_tokens=ev.max_tokens)
            results["scores"].setdefault(set_name, {})[model_name] = score
            ctx.log(f"  {set_name:8s} {model_name:18s} exact match {score['exact_match']:.1%} "
                    f"({score.get('n', len(expected))} examples)")
    atomic_write_json(ctx.stage_dir("evaluate") / "eval.json", results)
    return {A.EVAL_REPORT: results}


def modelfile(ctx) -> dict:
    from ..modelfile import choose_chat_template, render_modelfile

    base = Path(ctx.need(A.BASE)["path"])
    tok_cfg = json.loads((base / "tokenizer_config.json").read_text())
    chat_template = tok_cfg.get("chat_template")
    if not chat_template:
        raise EdgeloraError(f"{base / 'tokenizer_config.json'}: no chat_template")
    name, go_text, stops = choose_chat_template(chat_template, base)
    o = ctx.config.ollama
    num_ctx = o.num_ctx or max(2048, ctx.config.data.max_seq_length)
    params = {}
    if o.temperature >= 0:
        params["temperature"] = o.temperature
    first = ctx.config.export.quantize[0]
    text = render_modelfile(gguf_name=f"{_gguf_stem(ctx)}.{first}.gguf", template_text=go_text,
                            stops=stops, num_ctx=num_ctx, system=o.system or None, parameters=params)
    ctx.log(f"  chat template: {name} (proven equal to the tokenizer's Jinja template); stops {stops}")
    return {A.MODELFILE: {"text": text, "template": name, "stops": stops}}


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
    for tname, target in ctx.registry.targets.items():
        tdir = staging / "targets" / tname
        tdir.mkdir(parents=True, exist_ok=True)
        files.update(target.export(ctx, tdir))
    adapter = Path(ctx.need(A.ADAPTER))
    for extra in ("loss.png", "metrics.jsonl"):
        if (adapter / extra).exists():
            files[f"reports/{extra}"] = adapter / extra
    ds = ctx.need(A.DATASET)
    files["reports/data_report.json"] = Path(ds["report_path"])
    eval_report = ctx.need(A.EVAL_REPORT)
    eval_path = staging / "eval.json"
    atomic_write_json(eval_path, eval_report)
    files["reports/eval.json"] = eval_path
    first = cfg.export.quantize[0]
    probes = record_probes(quantized[first], probe_prompts(ctx, cfg.bundle.probes),
                           max_tokens=cfg.bundle.probe_tokens)
    extra = build_manifest_extra(ctx, probes=probes, probe_model=f"{_gguf_stem(ctx)}.{first}.gguf")
    result = write_bundle(dist_dir=cfg.resolve(cfg.bundle.dist), name=cfg.project.name,
                          version=cfg.project.version, files=files, manifest_extra=extra,
                          readme_text=bundle_readme(ctx, extra))
    ctx.log(f"  {result['dir']} and {result['tar']}")
    return {A.BUNDLE: {"dir": str(Path(result["dir"]).resolve()), "tar": str(Path(result["tar"]).resolve())}}


def verify(ctx) -> dict:
    from ..verify import verify_bundle

    report = verify_bundle(ctx.need(A.BUNDLE)["dir"])
    if not report["ok"]:
        bad = [c for c in report["checks"] if not c["ok"]]
        raise FidelityError(f"verify failed: {bad[0]['name']}: {bad[0]['detail']}")
    ctx.log(f"  verify: {len(report['checks'])} checks passed")
    return {A.VERIFY_REPORT: report}
