"""The convert stages: the fine-tune (merged view, checked against the HF logits) and the
untouched base (for the before/after score) as GGUF."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.util.files import atomic_write_json


def gguf_stem(ctx) -> str:
    return ctx.config.project.name


def convert(ctx) -> dict:
    from edgelora.gguf.convert import convert as convert_gguf
    from edgelora.gguf.validate import validate
    from edgelora.merge.base_choice import base_filter_for

    outtype = ctx.config.export.outtype
    base = ctx.need(A.BASE)["path"]
    adapter = ctx.need(A.ADAPTER)
    # the merge stage chose the base (original or NF4 round trip); convert and check on the same
    merge_base = (ctx.need(A.MERGE_REPORT).get("merge_base") or {}).get("chosen", "bf16")
    base_filter = base_filter_for(merge_base)
    out = ctx.stage_dir("convert") / f"{gguf_stem(ctx)}.{outtype.upper()}.gguf"
    report = convert_gguf(base, out, adapter_dir=adapter, outtype=outtype,
                          architectures=ctx.registry.architectures, base_filter=base_filter)
    check = validate(out, base, adapter_dir=adapter, min_top1=ctx.config.export.min_top1_agreement,
                     base_filter=base_filter)
    report["merge_base"] = merge_base
    report = {"convert": report, "validation": check}
    atomic_write_json(ctx.stage_dir("convert") / "convert_report.json", report)
    ctx.log(f"  {out.name}: top-1 agreement vs HF {_find(check, 'top1_agreement'):.3f}, "
            f"max |Δlogit| {_find(check, 'max_abs_delta'):.3g}")
    return {A.GGUF: str(out.resolve()), A.CONVERT_REPORT: report}


def _find(report: dict, key: str):
    """``key`` at the top of ``report`` or one level down (per-probe-set sections)."""
    if key in report:
        return report[key]
    for v in report.values():
        if isinstance(v, dict) and key in v:
            return v[key]
    return None


def convert_base(ctx) -> dict:
    from edgelora.gguf.convert import convert as convert_gguf

    outtype = ctx.config.export.outtype
    out = ctx.stage_dir("convert-base") / f"base.{outtype.upper()}.gguf"
    convert_gguf(ctx.need(A.BASE)["path"], out, outtype=outtype, architectures=ctx.registry.architectures)
    return {A.BASE_GGUF: str(out.resolve())}
