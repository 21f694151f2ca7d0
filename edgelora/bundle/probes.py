"""Probes: a GGUF's greedy answers to a few conversations, recorded at build time and replayed
on the target host to show that the model that runs is the model that was evaluated.

Prompts are rendered with the chat template embedded in the GGUF, in the jinja2 sandbox
(``chat_jinja``), so the target needs neither torch nor transformers. Each probe starts from
an empty context (no prefix reuse) so record and replay evaluate the same batches.
"""

from __future__ import annotations

import math

from edgelora.errors import VerifyError
from edgelora.runtime.llama import is_end_of_generation, render_prompt, tokenize_prompt
from edgelora.util.files import sha256_bytes, sha256_json

PROBE_N_CTX = 512
PROBE_SEED = 0
DEFAULT_LOGIT_TOLERANCE = 0.05
MAX_PROBES = 64  # per GGUF; verify refuses a manifest with more


def load_llama(gguf_path, *, n_threads=None, n_ctx: int = PROBE_N_CTX, extra_buffer_types: bool = False):
    """A llama-cpp-python model for greedy checks (portable CPU kernels: edgelora.runtime.llama)."""
    from edgelora.runtime.llama import open_llama

    try:
        return open_llama(gguf_path, extra_buffer_types=extra_buffer_types, n_threads=n_threads,
                          n_ctx=n_ctx, seed=PROBE_SEED, logits_all=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise VerifyError(f"{gguf_path}: llama-cpp-python cannot load it: {e}") from e


def _last_logits(llm):
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def greedy(llm, prompt_ids: list[int], *, max_tokens: int, reuse_prefix: bool = False):
    """Greedy (argmax) continuation; returns (generated ids, first-step logits as float32)."""
    import numpy as np

    if len(prompt_ids) + max_tokens > llm.n_ctx():
        raise VerifyError(f"prompt of {len(prompt_ids)} tokens + {max_tokens} exceeds n_ctx {llm.n_ctx()}")
    start = 0
    if reuse_prefix and llm.n_tokens:
        cached = llm.input_ids[: llm.n_tokens]
        limit = min(len(cached), len(prompt_ids) - 1)
        while start < limit and cached[start] == prompt_ids[start]:
            start += 1
    llm.n_tokens = start  # eval() drops the KV cache from here on
    llm.eval(prompt_ids[start:])
    first = _last_logits(llm)
    logits, out = first, []
    for _ in range(max_tokens):
        token = int(np.argmax(logits))
        out.append(token)
        if is_end_of_generation(llm, token):
            break
        llm.eval([token])
        logits = _last_logits(llm)
    return out, first


def _top_k(logits, k: int) -> list[list]:
    import numpy as np

    order = np.argsort(-logits, kind="stable")[:k]
    return [[int(i), float(logits[i])] for i in order]


def _digest(record: dict) -> str:
    return sha256_json({k: record[k] for k in ("prompt", "prompt_token_ids", "expected_token_ids")}
                       | {"top_k_ids": [t for t, _ in record["top_k"]]})


def record_probes(gguf_path, prompts: list[list[dict]], *, max_tokens: int = 32, top_k: int = 5,
                  n_threads=None) -> list[dict]:
    """Greedy outputs and first-token top-k logits for each conversation, for the manifest."""
    import numpy as np

    llm = load_llama(gguf_path, n_threads=n_threads)
    records = []
    try:
        for messages in prompts:
            prompt = render_prompt(llm, messages)
            ids = tokenize_prompt(llm, prompt)
            generated, first = greedy(llm, ids, max_tokens=max_tokens)
            rec = {
                "messages": messages,
                "prompt": prompt,
                "prompt_token_ids": ids,
                "expected_token_ids": generated,
                "expected_text": llm.detokenize(generated, special=True).decode("utf-8", "replace"),
                "top_k": _top_k(first, top_k),
                "max_tokens": max_tokens,
                "n_ctx": PROBE_N_CTX,
                "logits_sha256": sha256_bytes(np.ascontiguousarray(first, dtype=np.float32).tobytes()),
            }
            rec["digest"] = _digest(rec)
            records.append(rec)
    finally:
        llm.close()
    return records


def _ints(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def validate_probe(rec) -> str | None:
    """Why a recorded probe cannot be replayed, or None."""
    if not isinstance(rec, dict):
        return "not an object"
    if not isinstance(rec.get("messages"), list) or not isinstance(rec.get("prompt"), str):
        return "messages/prompt missing"
    if not _ints(rec.get("prompt_token_ids")) or not _ints(rec.get("expected_token_ids")):
        return "token ids missing or not integers"
    mt = rec.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or not 0 < mt <= 4096:
        return "max_tokens missing or out of range"
    tk = rec.get("top_k")
    if not isinstance(tk, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                                           and isinstance(p[1], (int, float)) and math.isfinite(p[1]) for p in tk):
        return "top_k malformed"
    return None


def replay_probes(gguf_path, probes: list[dict], *, logit_tolerance: float, n_threads=None, llm=None,
                  stop_at_failure: bool = False) -> list[dict]:
    """Re-run recorded probes; one result per probe saying what moved and by how much
    (with ``stop_at_failure``, none after the first that failed)."""
    import numpy as np

    own = llm is None
    llm = llm or load_llama(gguf_path, n_threads=n_threads)
    results = []
    try:
        for i, rec in enumerate(probes):
            why = validate_probe(rec)
            if why:
                results.append({"index": i, "ok": False, "detail": f"probe {i}: {why}"})
                if stop_at_failure:
                    break
                continue
            problems = []
            prompt = render_prompt(llm, rec["messages"])
            if prompt != rec["prompt"]:
                problems.append("prompt renders differently with the GGUF's chat template")
            ids = tokenize_prompt(llm, rec["prompt"])
            if ids != rec["prompt_token_ids"]:
                problems.append("prompt tokenizes differently")
            generated, first = greedy(llm, ids, max_tokens=rec["max_tokens"])
            expected = rec["expected_token_ids"]
            diverge = next((j for j, (a, b) in enumerate(zip(generated, expected)) if a != b),
                           None if len(generated) == len(expected) else min(len(generated), len(expected)))
            if diverge is not None:
                problems.append(f"greedy tokens diverge at position {diverge}")
            deltas = [abs(float(first[t]) - v) if 0 <= t < len(first) else math.inf for t, v in rec["top_k"]]
            max_delta = max(deltas, default=0.0)
            if max_delta > logit_tolerance:
                problems.append(f"first-token logit moved by {max_delta:.4g} > tolerance {logit_tolerance:g}")
            now_top = [t for t, _ in _top_k(first, len(rec["top_k"]))]
            results.append({
                "index": i,
                "ok": not problems,
                "detail": "; ".join(problems) or "identical greedy tokens, logits within tolerance",
                "first_divergence": diverge,
                "max_abs_logit_delta": max_delta,
                "top_k_order_same": now_top == [t for t, _ in rec["top_k"]],
                "logits_bit_identical": rec.get("logits_sha256") == sha256_bytes(
                    np.ascontiguousarray(first, dtype=np.float32).tobytes()),
                "got_text": llm.detokenize(generated, special=True).decode("utf-8", "replace"),
                "expected_text": rec.get("expected_text"),
            })
            if problems and stop_at_failure:
                break
    finally:
        if own:
            llm.close()
    return results

