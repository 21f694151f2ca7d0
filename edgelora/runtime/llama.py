"""One way to open a GGUF with llama-cpp-python, shared by every check.

CPU "extra buffer types" (AMX and repacked weight layouts) are turned off: their kernels
depend on the CPU, so a build host and a target host would not compute the same logits,
and llama-cpp-python 0.3.36's AMX kernel segfaults on multi-token batches on CPUs that
advertise AMX (reproduced on SmolLM2-135M Q8_0/Q4_0 on this project's build machine).
``Llama()`` has no argument for it, so the default-params factory is swapped while the
model loads, under a lock.
"""

from __future__ import annotations

import contextlib
import os
import threading

from edgelora.errors import VerifyError

_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def plain_cpu_buffers(enabled: bool = True):
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = not enabled
        return p

    with _LOAD_LOCK:
        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = original


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 from C; silence it while loading."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def default_threads() -> int:
    # Batch threads default to every core; with OpenMP spinning on a shared 2-core machine
    # that was ~10x slower than one thread, so callers set both counts from this.
    return max(1, (os.cpu_count() or 2) // 2)


def open_llama(gguf_path, *, extra_buffer_types: bool = False, **kwargs):
    """``llama_cpp.Llama`` on ``gguf_path``, quiet, with portable CPU kernels."""
    from llama_cpp import Llama

    n = kwargs.pop("n_threads", None) or default_threads()
    kwargs = {"verbose": False, "n_threads": n, "n_threads_batch": n, **kwargs}
    with quiet_stderr(), plain_cpu_buffers(not extra_buffer_types):
        return Llama(model_path=str(gguf_path), **kwargs)


def chat_template_of(llm) -> tuple[str, dict]:
    """(embedded chat template, special tokens) of a loaded GGUF."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise VerifyError(f"{llm.model_path}: GGUF has no tokenizer.chat_template")
    special = {}
    for key, meta in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        if meta in llm.metadata:
            special[key] = llm.detokenize([int(llm.metadata[meta])], special=True).decode("utf-8", "replace")
    return template, special


def render_prompt(llm, messages: list[dict]) -> str:
    from edgelora.runtime.chat_template import render_chat

    template, special = chat_template_of(llm)
    return render_chat(template, messages, special_tokens=special)


def tokenize_prompt(llm, prompt: str) -> list[int]:
    # add_bos=True lets the GGUF's own add_bos_token flag decide, as Ollama's runner does.
    return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)


def is_end_of_generation(llm, token: int) -> bool:
    """Whether llama.cpp's vocabulary counts ``token`` as end of generation (EOS, EOT, ...)."""
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
