"""GPU tests can run where the embedded SmolLM2 package is not installed (e.g. a bare GPU box).

Set EDGELORA_TOKENIZER_DIR to a folder holding SmolLM2's tokenizer files; the tiny
random Llama is then built from those alone instead of the dequantized embedded model.
"""

import os
from pathlib import Path

import pytest

from tests.conftest import make_tiny_llama


@pytest.fixture(scope="session")
def tokenizer_dir(request) -> Path:
    env = os.environ.get("EDGELORA_TOKENIZER_DIR")
    if env:
        return Path(env)
    return request.getfixturevalue("smollm2_dir")


@pytest.fixture(scope="session")
def tiny_llama_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-gpu"), tokenizer_dir)
