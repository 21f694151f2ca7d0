"""Batches for training: padded rows, or padding-free packed rows.

Packing puts several encoded examples end to end in one row of at most
``row_tokens`` tokens. Position ids restart at 0 for every example and no
attention mask is passed, so transformers builds a block-diagonal causal mask from
the position ids (or, under FlashAttention, variable-length kernels): no token
attends to another example. The first token of every example is never a target,
so no example is trained to predict the start of the next one.
"""

from __future__ import annotations

import math
import random
from typing import Iterator

from edgelora.data.chat import IGNORE_INDEX


def pack_rows(encoded: list[dict], order: list[int], row_tokens: int) -> list[list[int]]:
    """Group example indices, in ``order``, into rows of at most ``row_tokens`` tokens.

    Greedy and sequential (next-fit): deterministic for a given order, and an
    example longer than ``row_tokens`` gets a row of its own (it was already cut to
    max_length by encoding, and row_tokens >= max_length).
    """
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = len(encoded[i]["input_ids"])
        if current and used + n > row_tokens:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        rows.append(current)
    return rows


def epoch_batches(encoded: list[dict], *, batch_size: int, rng: random.Random, packed: bool,
                  row_tokens: int) -> list[list[list[int]]]:
    """One epoch of micro-batches: a list of rows, each a list of example indices.

    Every micro-batch holds ``batch_size`` examples (the last may hold fewer), so
    packing changes how they are laid out, never which examples form a step: a
    packed run takes the same optimizer steps as a padded one, minus the padding.
    Packed, the examples of a micro-batch share rows of up to ``row_tokens`` tokens.
    """
    order = list(range(len(encoded)))
    rng.shuffle(order)
    groups = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if not packed:
        return [[[i] for i in g] for g in groups]
    return [pack_rows(encoded, g, row_tokens) for g in groups]


def micro_batch_stream(encoded: list[dict], *, batch_size: int, seed: int, packed: bool,
                       row_tokens: int, skip: int = 0) -> Iterator[list[list[dict]]]:
    """Endless stream of micro-batches, each epoch a fresh seeded shuffle.

    ``skip`` drops that many micro-batches first: a resumed run sees exactly the
    batches the interrupted one would have seen next.
    """
    rng = random.Random(seed)
    seen = 0
    while True:
        for batch in epoch_batches(encoded, batch_size=batch_size, rng=rng, packed=packed, row_tokens=row_tokens):
            seen += 1
            if seen <= skip:
                continue
            yield [[encoded[i] for i in row] for row in batch]


def collate(rows: list[list[dict]], pad_id: int, device: str, *, packed: bool) -> dict:
    """Tensors for one micro-batch of rows (lists of encoded examples).

    Padded rows (one example each) get an attention mask; packed rows get
    position ids that restart per example and no attention mask. Either way
    ``tokens`` counts real tokens and ``targets`` counts labelled next-token targets.
    """
    import torch

    if not packed and any(len(r) != 1 for r in rows):
        raise ValueError("unpacked collate takes exactly one example per row")
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e["input_ids"])
            ids[r, at : at + n] = torch.tensor(e["input_ids"])
            lab = torch.tensor(e["labels"])
            lab[0] = IGNORE_INDEX  # never predicted from the previous example's last token
            labels[r, at : at + n] = lab
            mask[r, at : at + n] = 1
            positions[r, at : at + n] = torch.arange(n)
            at += n
        # Padding continues as one more "sequence" of its own; it is never a target.
        positions[r, at:] = torch.arange(width - at)
    out = {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "tokens": int(mask.sum()),
        "targets": int((labels[:, 1:] != IGNORE_INDEX).sum()),
    }
    if packed:
        out["position_ids"] = positions.to(device)
    else:
        out["attention_mask"] = mask.to(device)
    return out


def split_rows(rows: list, parts: int) -> list[list]:
    size = math.ceil(len(rows) / parts)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def eval_rows(eval_enc: list[dict], batch_size: int, max_length: int, packing: bool) -> list[list[list[dict]]]:
    """Eval micro-batches of ``batch_size`` examples in dataset order, laid out like training."""
    out = []
    for s in range(0, len(eval_enc), batch_size):
        group = list(range(s, min(s + batch_size, len(eval_enc))))
        rows = pack_rows(eval_enc, group, max_length) if packing else [[i] for i in group]
        out.append([[eval_enc[i] for i in row] for row in rows])
    return out


def pad_examples(batch: list[dict], pad_id: int, device: str) -> dict:
    """Padded tensors for a list of encoded examples, one per row (no packing)."""
    return collate([[e] for e in batch], pad_id, device, packed=False)
