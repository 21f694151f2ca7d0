"""Shared fixtures: the real SmolLM2 tokenizer/model (embedded default) and tiny random Llamas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgelora.testing.tiny import make_tiny_llama  # noqa: F401  (tests import it from here)

# Nothing in the test suite may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CACHE = Path(os.environ.get("EDGELORA_TEST_CACHE", Path.home() / ".cache" / "edgelora-tests"))


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
    from edgelora.sources.fetch import embedded_gguf_path

    return embedded_gguf_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct dequantized from the embedded GGUF (cached across runs)."""
    from edgelora.util.hashing import sha256_file
    from edgelora.sources.fetch import import_gguf

    dest = CACHE / f"smollm2-{sha256_file(smollm2_gguf)[:12]}-i2"  # -i2: import without version stamps
    if not (dest / "config.json").is_file():
        import_gguf(smollm2_gguf, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64, GQA 4/2, tied) using SmolLM2's real tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)
