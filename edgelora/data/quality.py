"""Near-duplicate removal (MinHash + LSH) and the per-source share of a dataset.

Exact duplicates (same roles and normalised text) are handled by
``data.deduplicate``. Near duplicates are examples whose word 3-gram sets have an
estimated Jaccard similarity at or above a threshold: 64 MinHash values per example,
banded 16 x 4 for locality-sensitive hashing, and every candidate pair is confirmed
on the MinHash estimate before the later example is dropped.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter, defaultdict

NUM_PERM = 64
BANDS = 16
ROWS = NUM_PERM // BANDS
_PRIME = (1 << 61) - 1
_MASK = (1 << 64) - 1


def _params() -> list[tuple[int, int]]:
    rng = random.Random(0x5EED)  # fixed: the same text always gets the same signature
    return [(rng.randrange(1, _PRIME), rng.randrange(0, _PRIME)) for _ in range(NUM_PERM)]


_PERMS = _params()


def example_text(example: dict) -> str:
    """The text an example trains on, roles included (so a question is not an answer)."""
    if "text" in example:
        return example["text"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])


def shingles(text: str, n: int = 3) -> set[int]:
    """64-bit hashes of the word n-grams of case-folded, Unicode-normalised text."""
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())
    grams = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))] if words else [""]
    return {int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest(), "little") for g in grams}


def minhash(hashes: set[int]) -> tuple[int, ...]:
    return tuple(min((a * h + b) % _PRIME for h in hashes) for a, b in _PERMS)


def similarity(sig_a: tuple[int, ...], sig_b: tuple[int, ...]) -> float:
    """MinHash estimate of the Jaccard similarity of two shingle sets."""
    return sum(x == y for x, y in zip(sig_a, sig_b)) / NUM_PERM


def remove_near_duplicates(examples: list[dict], threshold: float = 0.85) -> tuple[list[dict], int]:
    """Drop each example that is a near duplicate of an earlier kept one; return (kept, removed)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    buckets: dict[tuple, list[int]] = defaultdict(list)
    kept_sigs: list[tuple[int, ...]] = []
    kept: list[dict] = []
    for ex in examples:
        sig = minhash(shingles(example_text(ex)))
        keys = [(b, sig[b * ROWS : (b + 1) * ROWS]) for b in range(BANDS)]
        candidates = {j for key in keys for j in buckets.get(key, ())}
        if any(similarity(sig, kept_sigs[j]) >= threshold for j in candidates):
            continue
        idx = len(kept)
        kept.append(ex)
        kept_sigs.append(sig)
        for key in keys:
            buckets[key].append(idx)
    return kept, len(examples) - len(kept)


def source_shares(examples: list[dict]) -> dict:
    """{source: {"examples": n, "share": fraction}} in name order."""
    counts = Counter(ex.get("source", "") for ex in examples)
    total = sum(counts.values()) or 1
    return {name: {"examples": n, "share": round(n / total, 4)} for name, n in sorted(counts.items())}
