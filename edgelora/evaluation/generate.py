"""Greedy answers of a GGUF to many prompts, fast and deterministic, through llama-cpp-python.

One model is loaded once per GGUF (edgelora.runtime.llama: portable CPU kernels). Prompts
are rendered with the chat template embedded in the GGUF, tokenized, sorted by token ids so
that neighbours share their longest prefix, and decoded ``parallel`` at a time as separate
sequences of one llama.cpp batch: the shared prefix (the system prompt, usually) is evaluated
once for the whole group, then every step decodes one token of each unfinished sequence
together — on a CPU a matrix-matrix product costs little more than the matrix-vector product
of one sequence, because reading the weights dominates. A sequence stops at an end-of-generation
token (which is cut, as a client cuts it) or at its own ``max_tokens``.

Greedy argmax, fixed grouping and fixed thread count: the same GGUF and prompts give the same
tokens on the same machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

DEFAULT_PARALLEL = 8


@dataclass(frozen=True)
class Request:
    messages: list
    max_tokens: int
    group: int = 0            # prompts are only batched with prompts of the same group (eval set)
    stop: Callable[[str], bool] | None = None  # True: the answer so far decides its score; stop


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    i = 0
    while i < n and all(s[i] == first[i] for s in seqs):
        i += 1
    return i


class _Batch:
    """A llama_batch we fill token by token (pos, sequence ids, whether logits are wanted)."""

    def __init__(self, n_tokens: int, n_seq_max: int):
        import llama_cpp

        self.lib = llama_cpp
        self.capacity = n_tokens
        self.batch = llama_cpp.llama_batch_init(n_tokens, 0, n_seq_max)

    def clear(self):
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids, logits: bool) -> int:
        b, i = self.batch, self.batch.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = len(seq_ids)
        for k, s in enumerate(seq_ids):
            b.seq_id[i][k] = s
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def full(self) -> bool:
        return self.batch.n_tokens >= self.capacity

    def free(self):
        self.lib.llama_batch_free(self.batch)


class Generator:
    """Batched greedy decoding on one loaded GGUF. Use as a context manager."""

    def __init__(self, gguf_path, *, parallel: int = DEFAULT_PARALLEL, n_threads=None):
        from edgelora.runtime.llama import open_llama

        self.parallel = max(1, parallel)
        # The Llama object gives the model, vocabulary and tokenizer; decoding runs on a second
        # context sized for `parallel` sequences sharing one (unified) KV cache, made once the
        # prompt lengths are known.
        self.llm = open_llama(gguf_path, n_threads=n_threads, n_ctx=256, n_batch=256, seed=0,
                              logits_all=False)
        self._ctx = self._batch = None
        self.n_ctx_per_seq = 0
        self._vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.prompt_tokens = 0
        self.generated_tokens = 0

    def _ensure_context(self, per_seq: int):
        import llama_cpp
        from llama_cpp import _internals

        from edgelora.runtime.llama import quiet_stderr

        if self._ctx is not None and per_seq <= self.n_ctx_per_seq:
            return
        self._free_context()
        per_seq = -(-per_seq // 256) * 256
        # The same context settings llama-cpp-python chose (attention kernel, KV types), so a
        # sequence decodes as it would in ``Llama.eval``; only the sizes differ.
        src = self.llm.context_params
        params = type(src).from_buffer_copy(src)
        params.n_ctx = self.parallel * per_seq
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = self.parallel
        params.kv_unified = True
        with quiet_stderr():  # llama.cpp's C log ("n_ctx_seq > n_ctx_train") is not for the user
            self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        self._batch = _Batch(params.n_batch, self.parallel)
        self.n_ctx_per_seq = per_seq

    def _free_context(self):
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def close(self):
        self._free_context()
        self.llm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- prompts

    def encode(self, messages: list[dict]) -> tuple[str, list[int]]:
        from edgelora.runtime.llama import render_prompt, tokenize_prompt

        prompt = render_prompt(self.llm, messages)
        return prompt, tokenize_prompt(self.llm, prompt)

    def text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", "replace")

    # -- decoding

    def _decode(self):
        import llama_cpp

        rc = llama_cpp.llama_decode(self._ctx.ctx, self._batch.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, index: int) -> int:
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _group(self, prompts: list[list[int]], budgets: list[int], stops: list) -> tuple[list[list[int]], list[bool]]:
        import llama_cpp

        llama_cpp.llama_memory_clear(self._ctx.memory, True)
        n = len(prompts)
        # Each sequence keeps at least its last prompt token to itself: its logits start the answer.
        shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
        batch = self._batch
        pending: list[tuple[int, int, list[int], bool]] = [(prompts[0][i], i, list(range(n)), False)
                                                           for i in range(shared)]
        for s, p in enumerate(prompts):
            pending += [(p[i], i, [s], i == len(p) - 1) for i in range(shared, len(p))]
        first_logit_at: dict[int, int] = {}
        first: dict[int, int] = {}
        batch.clear()
        for token, pos, seqs, want in pending:
            idx = batch.add(token, pos, seqs, want)
            if want:
                first_logit_at[seqs[0]] = idx
            if batch.full():
                self._decode()
                first.update({s: self._argmax(i) for s, i in first_logit_at.items()})
                first_logit_at.clear()
                batch.clear()
        if batch.batch.n_tokens:
            self._decode()
            first.update({s: self._argmax(i) for s, i in first_logit_at.items()})
        self.prompt_tokens += sum(len(p) for p in prompts) - shared * (n - 1)
        outputs: list[list[int]] = [[] for _ in range(n)]
        cut = [False] * n
        active = list(range(n))
        next_token = dict(first)
        while active:
            still = []
            for s in active:
                t = next_token[s]
                if self._is_end(t):
                    continue
                outputs[s].append(t)
                if stops[s] is not None and stops[s](self.text(outputs[s])):
                    cut[s] = len(outputs[s]) < budgets[s]
                    continue
                if len(outputs[s]) < budgets[s]:
                    still.append(s)
            active = still
            if not active:
                break
            batch.clear()
            index = {s: batch.add(next_token[s], len(prompts[s]) + len(outputs[s]) - 1, [s], True)
                     for s in active}
            self._decode()
            next_token = {s: self._argmax(i) for s, i in index.items()}
        self.generated_tokens += sum(len(o) for o in outputs)
        return outputs, cut

    def generate_ids(self, prompts: list[list[int]], budgets: list[int], *, groups=None, stops=None):
        """Greedy continuations in the order given, and whether each was cut by its stop check.

        Within each group, prompts are sorted by token ids and batched ``parallel`` at a time, so
        a group's answers do not depend on what else is generated in the same call."""
        n = len(prompts)
        groups = groups or [0] * n
        stops = stops or [None] * n
        self._ensure_context(max((len(p) + m for p, m in zip(prompts, budgets)), default=1))
        results: list[list[int]] = [[] for _ in prompts]
        cut = [False] * n
        for g in sorted(set(groups)):
            order = sorted((i for i in range(n) if groups[i] == g), key=lambda i: (prompts[i], budgets[i]))
            for start in range(0, len(order), self.parallel):
                chunk = order[start:start + self.parallel]
                outs, cuts = self._group([prompts[i] for i in chunk], [budgets[i] for i in chunk],
                                         [stops[i] for i in chunk])
                for i, out, c in zip(chunk, outs, cuts):
                    results[i], cut[i] = out, c
        return results, cut


def generate(gguf_path, requests: list[Request], *, parallel: int = DEFAULT_PARALLEL, n_threads=None) -> dict:
    """Greedy answers to ``requests`` on one GGUF: {"prompts", "outputs", "seconds", token counts}."""
    start = time.perf_counter()
    with Generator(gguf_path, parallel=parallel, n_threads=n_threads) as gen:
        encoded = [gen.encode(r.messages) for r in requests]
        ids, cut = gen.generate_ids([e[1] for e in encoded], [r.max_tokens for r in requests],
                                    groups=[r.group for r in requests], stops=[r.stop for r in requests])
        outputs = [gen.text(o) for o in ids]
        stats = {"prompt_tokens": gen.prompt_tokens, "generated_tokens": gen.generated_tokens}
    return {"prompts": [e[0] for e in encoded], "outputs": outputs, "output_ids": ids, "cut": cut,
            "seconds": time.perf_counter() - start, **stats}

