"""Shared fixtures: the real SmolLM2 tokenizer/model (embedded default) and tiny random Llamas."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Nothing in the test suite may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = Path(os.environ.get("EDGELORA_TEST_CACHE", Path.home() / ".cache" / "edgelora-tests"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from edgelora.sources import embedded_gguf_path

    return embedded_gguf_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct dequantized from the embedded GGUF (cached across runs)."""
    from edgelora.fsutil import sha256_file
    from edgelora.sources import import_gguf

    dest = CACHE / f"smollm2-{sha256_file(smollm2_gguf)[:12]}-i2"  # -i2: import without version stamps
    if not (dest / "config.json").is_file():
        import_gguf(smollm2_gguf, dest)
    return dest


def make_tiny_llama(dest: Path, tokenizer_dir: Path, *, seed: int = 0, tie: bool = True,
                    layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                    **overrides) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=tie, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than init so logits are not all alike
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(dest, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64, GQA 4/2, tied) using SmolLM2's real tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)
