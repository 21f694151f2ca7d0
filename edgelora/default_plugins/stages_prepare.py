"""Stages up to the merged model: fetch-base, prepare-data, train, merge."""

from __future__ import annotations

import json
from pathlib import Path

from .. import artifacts as A
from ..errors import ConfigError, DataError
from ..fsutil import atomic_write_json


def fetch_base(ctx, download: bool = False) -> dict:
    from ..lock import check_lock, read_lock, write_lock

    cfg = ctx.config.base
    source = ctx.registry.sources.get(cfg.source)
    if source is None:
        raise ConfigError(f"edgelora.toml: [base] source {cfg.source!r} is not registered "
                          f"(known: {', '.join(sorted(ctx.registry.sources))})")
    dest = ctx.work_dir / "base" / cfg.source
    result = source.fetch(cfg, ctx.project_dir, dest, download=download)
    entry = {k: v for k, v in result.items() if k != "path"}
    entry.setdefault("source", cfg.source)
    entry.setdefault("revision", "")
    if read_lock(ctx.project_dir) is None:
        write_lock(ctx.project_dir, entry)
        ctx.log(f"  pinned {len(entry['files'])} base files in edgelora.lock")
    else:
        check_lock(ctx.project_dir, Path(result["path"]), result["files"], source=entry["source"],
                   revision=entry["revision"], delete_bad=entry["source"] == "hf")
    return {A.BASE: {"path": str(Path(result["path"]).resolve()), "files": result["files"],
                     "source": entry["source"], "revision": entry["revision"]}}


def _conversations(path: Path) -> list[dict]:
    from ..data_formats import load_examples

    return load_examples(path)


def prepare_data(ctx) -> dict:
    from transformers import AutoTokenizer

    from ..data import data_report, dataset_digest, deduplicate, encode_example, split_examples
    from ..data_quality import remove_near_duplicates, source_shares

    d = ctx.config.data
    train_path = ctx.config.resolve(d.train)
    if not train_path.exists():
        raise DataError(f"{train_path}: [data] train file not found")
    examples = _conversations(train_path)
    loaded_shares = source_shares(examples)
    examples, exact = deduplicate(examples)
    near = 0
    if d.near_duplicate_threshold > 0:
        examples, near = remove_near_duplicates(examples, d.near_duplicate_threshold)
    removed = exact + near
    paths = [train_path]
    if d.heldout:
        heldout_path = ctx.config.resolve(d.heldout)
        heldout = _conversations(heldout_path)
        paths.append(heldout_path)
        train = examples
    else:
        train, heldout = split_examples(examples, eval_fraction=d.eval_fraction, seed=d.seed)
    probes = []
    if d.probes:
        probes_path = ctx.config.resolve(d.probes)
        probes = _conversations(probes_path)
        paths.append(probes_path)
    from ..data_guards import mix_general_data

    train, mixed = mix_general_data(train, d.mix, resolve=ctx.config.resolve, seed=d.seed, load=_conversations)
    paths += [ctx.config.resolve(m["path"]) for m in d.mix]
    tok = AutoTokenizer.from_pretrained(ctx.need(A.BASE)["path"], local_files_only=True)
    encoded = [encode_example(tok, ex, max_length=d.max_seq_length) for ex in train]
    report = data_report(train, encoded)
    report.update({"duplicates_removed": removed, "exact_duplicates_removed": exact,
                   "near_duplicates_removed": near, "near_duplicate_threshold": d.near_duplicate_threshold,
                   "sources_loaded": loaded_shares, "sources": source_shares(train),
                   "heldout": len(heldout), "probes": len(probes), "max_seq_length": d.max_seq_length})
    if mixed:
        report["mix"] = mixed
        ctx.log("  mixed in " + ", ".join(f"{m['added']} examples from {m['path']}" for m in mixed))
    out = ctx.stage_dir("prepare-data")
    files = {}
    for name, rows in (("train", train), ("heldout", heldout), ("probes", probes)):
        p = out / f"{name}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        from ..fsutil import atomic_write_text

        atomic_write_text(p, text)
        files[name] = str(p.resolve())
    atomic_write_json(out / "data_report.json", report)
    ctx.log(f"  {len(train)} train, {len(heldout)} held-out, {len(probes)} probe conversations; "
            f"{exact} exact + {near} near duplicates removed; {report.get('truncated', 0)} truncated at "
            f"{d.max_seq_length} tokens")
    return {A.DATASET: {**files, "report_path": str((out / "data_report.json").resolve()),
                        "sha256": dataset_digest(paths), "report": report}}


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train(ctx) -> dict:
    from ..train import train_lora
    from ..progress import TrainProgress

    t = ctx.config.train
    ds = ctx.need(A.DATASET)
    out = ctx.stage_dir("train") / "adapter"
    targets = t.target_modules
    target = "all-linear" if targets == ["all-linear"] else list(targets)
    with TrainProgress(ctx) as progress:
        report = train_lora(
            base_dir=ctx.need(A.BASE)["path"], train_examples=read_jsonl(ds["train"]),
            eval_examples=read_jsonl(ds["heldout"]), out_dir=out, r=t.r, alpha=t.alpha,
            dropout=t.dropout, target_modules=target, learning_rate=t.learning_rate,
            epochs=t.epochs, max_steps=t.max_steps or None, batch_size=t.batch_size,
            grad_accum=t.grad_accum, warmup_ratio=t.warmup_ratio,
            max_length=ctx.config.data.max_seq_length, seed=t.seed, eval_every=t.eval_every,
            device=t.device, quantization=t.quantization, max_seconds=t.max_seconds or None,
            early_stop=t.early_stop, packing=t.packing, save_every=t.save_every or None,
            recompute_layers=t.recompute_layers, dequant_cache=t.dequant_cache,
            memory_budget_gib=t.memory_budget_gib or None,
            checkpoint_dir=ctx.stage_dir("train") / "checkpoints",
            resume=bool(ctx.options.get("resume")), force=bool(ctx.options.get("force")),
            progress=progress)
    ctx.log(f"  {report.get('steps')} steps, best eval loss {report.get('best_eval_loss')}, "
            f"{report.get('tokens_per_s', 0):.0f} tokens/s on {report.get('device')}")
    return {A.ADAPTER: str(out.resolve()), A.TRAIN_REPORT: report}


def probe_prompts(ctx, n: int = 4) -> list[list[dict]]:
    """Conversations without their final assistant answer, from held-out then train."""
    ds = ctx.need(A.DATASET)
    chats = lambda path: [ex for ex in read_jsonl(path) if "messages" in ex][:n]  # noqa: E731 (text has no prompt)
    rows = chats(ds["heldout"]) or chats(ds["train"])
    return [ex["messages"][:-1] for ex in rows]


def merge(ctx) -> dict:
    from ..merge import MergedView
    from ..merge_check import alpha_check, tensor_identity_check

    from ..merge_base import base_filter_for, choose_merge_base

    m = ctx.config.merge
    base = ctx.need(A.BASE)["path"]
    adapter = ctx.need(A.ADAPTER)
    merge_base = choose_merge_base(base, adapter, probe_prompts(ctx), m.base)
    if "candidates" in merge_base:
        c = merge_base["candidates"]
        ctx.log(f"  merge base vs the adapter-attached 4-bit model: bf16 mean |Δlogit| "
                f"{c['bf16']['mean_abs_diff']:.3g}, nf4 {c['nf4']['mean_abs_diff']:.3g} -> {merge_base['chosen']}")
    base_filter = base_filter_for(merge_base["chosen"])
    with MergedView(base, adapter, base_filter=base_filter) as view:
        identity = tensor_identity_check(view)
    report = alpha_check(base, adapter, probe_prompts(ctx), tolerance=m.max_abs_logit_diff,
                         min_top1=m.min_top1_agreement, base_filter=base_filter)
    report = {"tensor_identity": identity, "logits": report, "merge_base": merge_base}
    atomic_write_json(ctx.stage_dir("merge") / "merge_report.json", report)
    lg = report["logits"]
    ctx.log(f"  alpha check: max |Δlogit| {lg.get('max_abs_diff')}, top-1 agreement {lg.get('top1_agreement')}")
    return {A.MERGE_REPORT: report}
