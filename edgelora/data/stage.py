"""The prepare-data stage (load, dedup, split, mix, encode, data report) and the probe prompts
later stages take from its output."""

from __future__ import annotations

import json

from edgelora import artifacts as A
from edgelora.errors import DataError
from edgelora.util.files import atomic_write_json, atomic_write_text, read_jsonl


def prepare_data(ctx) -> dict:
    from transformers import AutoTokenizer

    from edgelora.data.chat import data_report, dataset_digest, deduplicate, encode_example, split_examples
    from edgelora.data.formats import load_examples
    from edgelora.data.guards import mix_general_data
    from edgelora.data.quality import remove_near_duplicates, source_shares

    d = ctx.config.data
    train_path = ctx.config.resolve(d.train)
    if not train_path.exists():
        raise DataError(f"{train_path}: [data] train file not found")
    examples = load_examples(train_path)
    loaded_shares = source_shares(examples)
    examples, exact = deduplicate(examples)
    near = 0
    if d.near_duplicate_threshold > 0:
        examples, near = remove_near_duplicates(examples, d.near_duplicate_threshold)
    removed = exact + near
    paths = [train_path]
    if d.heldout:
        heldout_path = ctx.config.resolve(d.heldout)
        heldout = load_examples(heldout_path)
        paths.append(heldout_path)
        train = examples
    else:
        train, heldout = split_examples(examples, eval_fraction=d.eval_fraction, seed=d.seed)
    probes = []
    if d.probes:
        probes_path = ctx.config.resolve(d.probes)
        probes = load_examples(probes_path)
        paths.append(probes_path)
    train, mixed = mix_general_data(train, d.mix, resolve=ctx.config.resolve, seed=d.seed, load=load_examples)
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
        atomic_write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        files[name] = str(p.resolve())
    atomic_write_json(out / "data_report.json", report)
    ctx.log(f"  {len(train)} train, {len(heldout)} held-out, {len(probes)} probe conversations; "
            f"{exact} exact + {near} near duplicates removed; {report.get('truncated', 0)} truncated at "
            f"{d.max_seq_length} tokens")
    return {A.DATASET: {**files, "report_path": str((out / "data_report.json").resolve()),
                        "sha256": dataset_digest(paths), "report": report}}


def probe_prompts(ctx, n: int = 4) -> list[list[dict]]:
    """Conversations without their final assistant answer, from held-out then train."""
    ds = ctx.need(A.DATASET)

    def chats(path):  # text examples have no prompt
        return [ex for ex in read_jsonl(path) if "messages" in ex][:n]

    rows = chats(ds["heldout"]) or chats(ds["train"])
    return [ex["messages"][:-1] for ex in rows]
