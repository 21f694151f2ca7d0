"""The prepare-data stage (load, dedup, split, mix, encode, data report) and the probe prompts
later stages take from its output."""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgelora import artifacts as A
from edgelora.errors import DataError
from edgelora.util.files import atomic_write_json, atomic_write_text, read_jsonl


def assemble_examples(cfg) -> dict:
    """The train, held-out and probe examples exactly as training will see them (loaded from
    every [data] train path, deduplicated, split, mixed); ``plan`` and prepare-data share it."""
    from edgelora.data.chat import deduplicate, split_examples
    from edgelora.data.formats import expand_paths, load_examples
    from edgelora.data.guards import mix_general_data
    from edgelora.data.quality import remove_near_duplicates, source_shares

    d = cfg.data
    train_paths = expand_paths(d.train, cfg.resolve)
    for p in train_paths:
        if not p.exists():
            raise DataError(f"{p}: [data] train file not found")
    examples = load_examples(train_paths)
    loaded_shares = source_shares(examples)
    examples, exact = deduplicate(examples)
    near = 0
    if d.near_duplicate_threshold > 0:
        examples, near = remove_near_duplicates(examples, d.near_duplicate_threshold)
    paths = list(train_paths)
    if d.heldout:
        heldout_path = cfg.resolve(d.heldout)
        heldout = load_examples(heldout_path)
        paths.append(heldout_path)
        train = examples
    else:
        train, heldout = split_examples(examples, eval_fraction=d.eval_fraction, seed=d.seed)
    probes = []
    if d.probes:
        probes_path = cfg.resolve(d.probes)
        probes = load_examples(probes_path)
        paths.append(probes_path)
    task_train = train
    train, mixed = mix_general_data(train, d.mix, resolve=cfg.resolve, seed=d.seed, load=load_examples)
    paths += [cfg.resolve(m["path"]) for m in d.mix]
    return {"train": train, "task_train": task_train, "heldout": heldout, "probes": probes, "paths": paths,
            "exact": exact, "near": near, "mixed": mixed, "loaded_shares": loaded_shares}


def base_context(base_dir) -> int | None:
    from edgelora.data.guards import model_context

    cfg_path = Path(base_dir) / "config.json"
    return model_context(json.loads(cfg_path.read_text())) if cfg_path.is_file() else None


def prepare_data(ctx) -> dict:
    from transformers import AutoTokenizer

    from edgelora.data.chat import data_report, dataset_digest
    from edgelora.data.guards import describe_fit, fit_data, truncation_problem
    from edgelora.data.quality import source_shares

    d = ctx.config.data
    sets = assemble_examples(ctx.config)
    train, heldout, probes, exact, near = (sets[k] for k in ("train", "heldout", "probes", "exact", "near"))
    rehearsal, rehearsal_report = _rehearsal(ctx, sets["task_train"])
    if rehearsal:
        train = train + rehearsal
        random.Random(f"rehearsal-mix:{d.seed}").shuffle(train)
    base_dir = ctx.need(A.BASE)["path"]
    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    fit = fit_data(tok, {"train": train, "heldout": heldout}, d.max_seq_length, base_context(base_dir))
    problem = truncation_problem(fit, d.allow_truncation)
    if problem:
        raise DataError(problem)
    report = data_report(train, fit["encoded"]["train"])
    held = fit["sets"]["heldout"]
    report.update({"duplicates_removed": exact + near, "exact_duplicates_removed": exact,
                   "near_duplicates_removed": near, "near_duplicate_threshold": d.near_duplicate_threshold,
                   "sources_loaded": sets["loaded_shares"], "sources": source_shares(train),
                   "heldout": len(heldout), "heldout_truncated": held["truncated"],
                   "heldout_without_trained_tokens": held["without_trained_tokens"],
                   "probes": len(probes), "max_seq_length": fit["max_seq_length"],
                   "max_seq_length_auto": fit["auto"], "longest_example": fit["longest"]})
    if rehearsal_report:
        report["rehearsal"] = rehearsal_report
        ctx.log(f"  rehearsal: mixed in {rehearsal_report['added']} of the base's own answers to general prompts "
                f"(ratio {rehearsal_report['ratio']:g}, sha256 {rehearsal_report.get('sha256', '-')[:12]})")
    if sets["mixed"]:
        report["mix"] = sets["mixed"]
        ctx.log("  mixed in " + ", ".join(f"{m['added']} examples from {m['path']}" for m in sets["mixed"]))
    out = ctx.stage_dir("prepare-data")
    files = {}
    for name, rows in (("train", train), ("heldout", heldout), ("probes", probes)):
        p = out / f"{name}.jsonl"
        atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        files[name] = str(p.resolve())
    atomic_write_json(out / "data_report.json", report)
    ctx.log(f"  {len(train)} train, {len(heldout)} held-out, {len(probes)} probe conversations; "
            f"{exact} exact + {near} near duplicates removed")
    ctx.log(f"  max_seq_length {describe_fit(fit)}; truncated: {report['truncated']} train, "
            f"{held['truncated']} held-out")
    return {A.DATASET: {**files, "report_path": str((out / "data_report.json").resolve()),
                        "sha256": dataset_digest(sets["paths"]), "report": report}}


def _rehearsal(ctx, train: list[dict]) -> tuple[list[dict], dict | None]:
    """The base's own answers to edgelora's general prompts, to mix in ([data] rehearsal)."""
    from edgelora.data.rehearsal import rehearsal_examples

    d = ctx.config.data
    return rehearsal_examples(train, d.rehearsal, base_gguf=ctx.need(A.BASE_GGUF), seed=d.seed,
                              cache_dir=ctx.work_dir / "rehearsal", log=ctx.log)


def probe_prompts(ctx, n: int = 4) -> list[list[dict]]:
    """Conversations without their final assistant answer, from held-out then train."""
    ds = ctx.need(A.DATASET)

    def chats(path):  # text examples have no prompt
        return [ex for ex in read_jsonl(path) if "messages" in ex][:n]

    rows = chats(ds["heldout"]) or chats(ds["train"])
    return [ex["messages"][:-1] for ex in rows]
