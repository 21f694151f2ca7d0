"""Validation ladder steps 2-4 for a written GGUF.

2. read it back (keys present with llama.cpp's types, 1-D tensors F32);
3. llama.cpp's tokenizer equals the HF tokenizer on hard text and chat tokens;
4. llama.cpp logits equal HF float32 logits (argmax agreement, max |delta|).

Each classic conversion bug (missing q/k permutation, wrong rope theta, wrong
pre-tokenizer, untyped special tokens) loads fine and is only caught here.
"""

from __future__ import annotations


from edgelora.errors import FidelityError
from edgelora.runtime.llama import open_llama

TOKENIZER_TEXTS = (
    "Hello world! How are you today?",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines   \n  trailing   ",
    "Digits: 3 33 333 3333 12345678 3.14159 1,000,000 2024-05-17",
    "Emoji \U0001F680\U0001F999 \U0001F636\u200d\U0001F32B\ufe0f and CJK \u6211\u60f3\u5728apple\u5de5\u4f5c \u3053\u3093\u306b\u3061\u306f",
    "Mixed: I've been 'told he's there; we'Ve ------======= \u043d\u0435\u0449\u043e \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438",
    "code:\n    def f(x):\n        return x ** 2  # square\n",
)
LOGIT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Q: What is 17 times 23?\nA:",
)
# Appended to a probe shorter than the positions asked for (plain prose every tokenizer handles).
CONTINUATION = (
    " The morning was quiet, and the river ran slowly past the old mill. Children walked to school"
    " along the bank, counting boats: one, two, three. At noon the baker opened his shop, and the"
    " smell of fresh bread drifted over the square, where people stopped to talk about the weather,"
    " the harvest and the news from the city. In the evening the lamps were lit one by one."
)


def read_back(gguf_path) -> dict:
    """Ladder step 2: parse the written file and check what llama.cpp will read."""
    from gguf import GGMLQuantizationType

    from edgelora.gguf.reader import read_metadata

    meta = read_metadata(gguf_path)
    kv, types = meta.kv, meta.kv_types
    problems: list[str] = []
    arch = kv.get("general.architecture")
    if arch is None:
        return {"path": str(gguf_path), "problems": ["general.architecture missing"]}
    required = {
        "general.architecture": ("STRING",), "general.type": ("STRING",),
        "general.file_type": ("UINT32",), "general.quantization_version": ("UINT32",),
        f"{arch}.context_length": ("UINT32",), f"{arch}.embedding_length": ("UINT32",),
        f"{arch}.block_count": ("UINT32",), f"{arch}.feed_forward_length": ("UINT32",),
        f"{arch}.attention.head_count": ("UINT32",), f"{arch}.attention.head_count_kv": ("UINT32",),
        f"{arch}.attention.layer_norm_rms_epsilon": ("FLOAT32",), f"{arch}.rope.freq_base": ("FLOAT32",),
        "tokenizer.ggml.model": ("STRING",), "tokenizer.ggml.pre": ("STRING",),
        "tokenizer.ggml.tokens": ("ARRAY", "STRING"), "tokenizer.ggml.token_type": ("ARRAY", "INT32"),
    }
    if kv.get("tokenizer.ggml.model") == "gpt2":
        required["tokenizer.ggml.merges"] = ("ARRAY", "STRING")
    for key, want in required.items():
        if key not in kv:
            problems.append(f"{key} missing")
        elif types[key] != want:
            problems.append(f"{key} has type {types[key]}, expected {want}")

    n_tokens = len(kv.get("tokenizer.ggml.tokens") or [])
    tensor_types: dict[str, int] = {}
    embd_rows = None
    for name, shape, ttype, _ in meta.tensors:
        tname = GGMLQuantizationType(ttype).name
        tensor_types[tname] = tensor_types.get(tname, 0) + 1
        if len(shape) == 1 and ttype != GGMLQuantizationType.F32:
            problems.append(f"1-D tensor {name} is {tname}, expected F32")
        if name == "token_embd.weight":
            embd_rows = int(shape[-1])  # gguf shapes are innermost-first
    if embd_rows is None:
        problems.append("token_embd.weight missing")
    elif embd_rows != n_tokens:
        problems.append(f"{n_tokens} tokens but token_embd has {embd_rows} rows")
    for name in ("bos", "eos", "unk", "pad"):
        tid = kv.get(f"tokenizer.ggml.{name}_token_id")
        if tid is not None and not 0 <= int(tid) < max(n_tokens, 1):
            problems.append(f"tokenizer.ggml.{name}_token_id {tid} out of range")
    return {
        "path": str(gguf_path), "arch": arch, "pre": kv.get("tokenizer.ggml.pre"),
        "n_keys": len(kv), "n_tensors": len(meta.tensors), "tensor_types": tensor_types,
        "n_tokens": n_tokens, "rope_freq_base": kv.get(f"{arch}.rope.freq_base"),
        "rms_eps": kv.get(f"{arch}.attention.layer_norm_rms_epsilon"),
        "add_bos": kv.get("tokenizer.ggml.add_bos_token"), "problems": problems,
    }



def hf_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _chat_text(tok) -> str | None:
    if not getattr(tok, "chat_template", None):
        return None
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there!  2+2=?"},
                {"role": "assistant", "content": "4 \U0001F600"}]
    try:
        return tok.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template may reject a system turn; the rest still tests tokens
        return tok.apply_chat_template(messages[1:], tokenize=False)


def check_tokenization(gguf_path, tokenizer_dir, texts=None) -> dict:
    """Ladder step 3: llama.cpp (vocab only) tokenizes like HF, with and without BOS/special parsing."""
    tok = hf_tokenizer(tokenizer_dir)
    llm = open_llama(gguf_path, vocab_only=True)
    texts = list(texts or TOKENIZER_TEXTS)
    chat = _chat_text(tok)
    if chat:
        texts.append(chat)
    mismatches = []
    known = []
    prefixing = _sentencepiece_space_prefix(gguf_path)
    specials = [t for t in tok.get_added_vocab() if t]
    for text in texts:
        # special=True: chat tokens such as <|im_start|> must come out as one id, as in HF
        plain_hf = tok.encode(text, add_special_tokens=False)
        plain_cpp = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        full_hf = tok.encode(text)
        full_cpp = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        for kind, a, b in (("plain", plain_hf, plain_cpp), ("with-special", full_hf, full_cpp)):
            if list(a) != list(b):
                entry = {"text": text[:60], "kind": kind, "hf": list(a)[:24], "llama_cpp": list(b)[:24]}
                # llama.cpp's SentencePiece tokenizer prepends a space to the text and after every
                # special token, even before existing whitespace; transformers' Metaspace does
                # neither. No GGUF key expresses that, so such texts are reported, not failed.
                if prefixing and (text[:1].isspace() or any(s in text for s in specials)):
                    known.append(entry)
                else:
                    mismatches.append(entry)
    del llm
    return {"n_texts": len(texts), "chat_template_checked": chat is not None,
            "mismatches": mismatches, "known_divergences": known, "ok": not mismatches}


def _sentencepiece_space_prefix(gguf_path) -> bool:
    from edgelora.gguf.reader import read_metadata

    kv = read_metadata(gguf_path).kv
    return kv.get("tokenizer.ggml.model") == "llama" and bool(kv.get("tokenizer.ggml.add_space_prefix", True))


def probe_ids(tok, prompt: str, n_tokens: int) -> list[int]:
    """``prompt``'s ids (with BOS as the tokenizer adds it), extended to ``n_tokens`` with the
    fixed continuation text: both sides score the same sequence (teacher forcing). A greedy
    continuation would cost the streamed reference one pass over the weights per token."""
    ids = list(tok.encode(prompt))[:n_tokens]
    filler = list(tok.encode(CONTINUATION, add_special_tokens=False))
    while filler and len(ids) < n_tokens:
        ids += filler[: n_tokens - len(ids)]
    return ids


def compare_logits(gguf_path, model_dir, adapter_dir=None, prompts=None, n_tokens: int = 64,
                   tokenizer_dir=None, lora_path=None, base_filter=None) -> dict:
    """Ladder step 4: per-position argmax agreement and max |delta logit|, HF fp32 vs llama.cpp.

    Each prompt is extended to ``n_tokens`` with a fixed continuation, then both sides score
    the same token sequence. The HF side is :func:`edgelora.merge.streamed_forward.reference_logits`
    (one module's weights in memory at a time); llama.cpp loads the GGUF once for all prompts.
    """
    import numpy as np

    from edgelora.merge.streamed_forward import reference_logits

    tok = hf_tokenizer(tokenizer_dir or model_dir)
    prompts = list(prompts or LOGIT_PROMPTS)
    sequences = [probe_ids(tok, prompt, n_tokens) for prompt in prompts]
    # adapter_dir: PEFT is an independent path from MergedView: it also checks the merge itself
    reference = reference_logits(model_dir, sequences, adapter_dir=adapter_dir, base_filter=base_filter)
    # lora_path: a LoRA GGUF sidecar applied on top of gguf_path (compared with the PEFT model)
    llm = open_llama(gguf_path, n_ctx=max(512, n_tokens), n_batch=max(512, n_tokens), logits_all=True,
                     **({"lora_path": str(lora_path)} if lora_path else {}))
    per_prompt = []
    agree = total = 0
    max_delta = 0.0
    try:
        for prompt, ids, hf in zip(prompts, sequences, reference.logits):
            hf = hf.numpy()
            llm.reset()
            llm.eval(ids)
            cpp = np.array(llm.scores[: len(ids), :], dtype=np.float32)
            if cpp.shape[1] < hf.shape[1]:
                # the GGUF dropped embedding rows no token maps to (Gemma 3): compare the real vocabulary
                hf = hf[:, : cpp.shape[1]]
            if cpp.shape != hf.shape:
                raise FidelityError(f"{gguf_path}: logits shape {cpp.shape} != HF {hf.shape}")
            same = int((cpp.argmax(-1) == hf.argmax(-1)).sum())
            delta = float(np.abs(cpp - hf).max())
            per_prompt.append({"prompt": prompt[:40], "tokens": len(ids), "top1": same / len(ids),
                               "max_abs_delta": delta})
            agree += same
            total += len(ids)
            max_delta = max(max_delta, delta)
    finally:
        del llm
    return {"top1_agreement": agree / max(total, 1), "max_abs_delta": max_delta, "positions": total,
            "prompts": per_prompt, "reference": reference.describe()}


def validate(gguf_path, model_dir, adapter_dir=None, min_top1: float = 0.98, *, tokenizer_dir=None,
             prompts=None, n_tokens: int = 64, base_filter=None) -> dict:
    """Run ladder steps 2-4; raise FidelityError (with the numbers) on any failure.
    ``base_filter``: the merge base the GGUF was converted from (the HF reference uses it too)."""
    tokenizer_dir = tokenizer_dir or model_dir
    report = {"read_back": read_back(gguf_path)}
    if report["read_back"]["problems"]:
        raise FidelityError(f"{gguf_path}: read-back problems: {'; '.join(report['read_back']['problems'][:4])}")
    report["tokenization"] = check_tokenization(gguf_path, tokenizer_dir)
    if not report["tokenization"]["ok"]:
        first = report["tokenization"]["mismatches"][0]
        raise FidelityError(f"{gguf_path}: llama.cpp tokenizes {first['text']!r} ({first['kind']}) as "
                            f"{first['llama_cpp']} but HF gives {first['hf']}")
    report["logits"] = compare_logits(gguf_path, model_dir, adapter_dir, prompts=prompts, n_tokens=n_tokens,
                                      tokenizer_dir=tokenizer_dir, base_filter=base_filter)
    top1 = report["logits"]["top1_agreement"]
    if top1 < min_top1:
        raise FidelityError(f"{gguf_path}: top-1 agreement with HF {top1:.3f} < {min_top1} "
                            f"(max |delta logit| {report['logits']['max_abs_delta']:.3g} over "
                            f"{report['logits']['positions']} positions)")
    report["ok"] = True
    return report
