"""The bundle stage: files, probes, manifest, README and export targets into
dist/<name>-<version>/ and its .tar."""

from __future__ import annotations

import json
from pathlib import Path

from edgelora import artifacts as A
from edgelora.data.stage import probe_prompts
from edgelora.errors import BundleError
from edgelora.evaluation.stage import bundle_files
from edgelora.gguf.stage import gguf_stem
from edgelora.quantize.stage import quality_files
from edgelora.util.files import atomic_write_json


def bundle(ctx) -> dict:
    from edgelora.bundle.provenance import build_manifest_extra, bundle_readme, gates_failed, without_host_paths
    from edgelora.bundle.layout import write_bundle
    from edgelora.bundle.probes import record_probes

    cfg = ctx.config
    quantized = ctx.need(A.QUANTIZED)
    staging = ctx.stage_dir("bundle")
    files: dict[str, Path] = {}
    for qtype, path in quantized.items():
        files[f"{gguf_stem(ctx)}.{qtype}.gguf"] = Path(path)
    adapter = Path(ctx.need(A.ADAPTER))
    for extra in ("loss.png", "metrics.jsonl"):
        if (adapter / extra).exists():
            files[f"reports/{extra}"] = adapter / extra
    ds = ctx.need(A.DATASET)
    files["reports/data_report.json"] = Path(ds["report_path"])
    files.update(bundle_files(ctx.artifacts.get(A.GATE_REPORT) or ctx.need(A.EVAL_REPORT)))
    files.update(quality_files(ctx, staging))  # quantization quality report and gate verdicts
    target_report = export_targets(ctx, staging / "targets", files)
    if cfg.bundle.toolkit:
        files.update(toolkit_files_for(ctx, staging / "toolkit"))
    scrub_json_reports(ctx, files, staging / "scrubbed")
    # the default Modelfile's quantization (artifact order is not reliable across the stage cache)
    first = ctx.need(A.MODELFILE).get("default") or next(iter(quantized))
    # every shipped GGUF carries its own probes: any of them can be installed (--quant)
    prompts = probe_prompts(ctx, cfg.bundle.probes)
    by_model = {f"{gguf_stem(ctx)}.{q}.gguf": record_probes(p, prompts, max_tokens=cfg.bundle.probe_tokens)
                for q, p in quantized.items()}
    first_arc = f"{gguf_stem(ctx)}.{first}.gguf"
    extra = build_manifest_extra(ctx, probes=by_model.pop(first_arc), probe_model=first_arc)
    extra["probes"]["by_model"] = by_model
    extra["targets"] = target_report
    extra["decoding"] = ctx.need(A.MODELFILE).get("decoding")
    failed = gates_failed(ctx.artifacts.get(A.GATE_REPORT))
    if failed:
        extra["gates_failed"] = failed
    probes_section = extra.pop("probes")
    extra = without_host_paths(extra, ctx.project_dir)
    extra["probes"] = probes_section  # recorded prompts and tokens are data, not paths
    result = write_bundle(dist_dir=cfg.resolve(cfg.bundle.dist), name=cfg.project.name,
                          version=cfg.project.version, files=files, manifest_extra=extra,
                          readme_text=bundle_readme(ctx, extra),
                          signing_key=cfg.resolve(cfg.bundle.signing_key) if cfg.bundle.signing_key else None,
                          model_signing_key=(cfg.resolve(cfg.bundle.model_signing_key)
                                             if cfg.bundle.model_signing_key else None),
                          replace=bool(ctx.options.get("force_dist")))
    ctx.log(f"  {result['dir']} and {result['tar']}")
    return {A.BUNDLE: {"dir": str(Path(result["dir"]).resolve()), "tar": str(Path(result["tar"]).resolve()),
                       "targets": target_report}}


def scrub_json_reports(ctx, files: dict[str, Path], out_dir: Path) -> None:
    """Shipped JSON reports with the build host's absolute paths made relative (in copies)."""
    from edgelora.bundle.provenance import without_host_paths

    for arc, src in list(files.items()):
        if arc.startswith("reports/") and arc.endswith(".json"):
            try:
                data = json.loads(Path(src).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            dest = out_dir / arc
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(dest, without_host_paths(data, ctx.project_dir))
            files[arc] = dest


def toolkit_files_for(ctx, folder: Path) -> dict[str, Path]:
    """toolkit/: edgelora's host side as wheels with install.sh (see edgelora.bundle.toolkit)."""
    from edgelora.bundle.toolkit import toolkit_files, write_toolkit

    b = ctx.config.bundle
    report = write_toolkit(folder, find_links=[ctx.config.resolve(f) for f in b.toolkit_find_links],
                           download=b.toolkit_download, log=ctx.log)
    ctx.log(f"  toolkit: {len(report['wheels'])} wheels, {report['size_bytes'] / 1e6:.1f} MB")
    return toolkit_files(folder)


def export_targets(ctx, staging_root: Path, files: dict[str, Path]) -> dict:
    """Run the selected targets isolated (see edgelora.bundle.targets); add the files of those
    that succeeded to ``files``. A failed target is recorded, not raised, unless it touched a
    file the core bundle ships."""
    from edgelora.bundle.targets import run_targets, select_targets

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
