"""The contract kit for plugin authors: the tests every export target must pass.

In your plugin's tests::

    from edgelora.testing import TargetContract

    class TestMyTarget(TargetContract):
        target = "my-target"      # the name your plugin registers
        plugin = "my-target"      # your entry-point name (optional check)

pytest then builds a tiny project to a verified bundle with your target selected
(a random 2-layer Llama on SmolLM2's real tokenizer, two LoRA steps, GGUF, Q8_0; no
network, well under a minute on two cores) and checks that the target is registered by
an entry point with a version; that its export succeeds; that every file it returns is in
``manifest.json``, ``SHA256SUMS`` and the tar with the right size and sha256; that the bundle
verifies (directory and tar); that it wrote nothing outside its staging folder; and, when it
has ``install``, that install followed by uninstall leaves nothing behind.

The fixtures (``edgelora_tiny_base``, ``edgelora_build``) come from
:mod:`edgelora.testing.pytest_plugin`, which pytest loads by itself through edgelora's
``pytest11`` entry point. Needs ``pip install "edgelora[test]"`` (for the tokenizer's GGUF).
"""

from edgelora.testing.contract import TargetContract
from edgelora.testing.tiny import TinyBuild, build_tiny, conversations, make_tiny_base, make_tiny_llama, make_tokenizer

__all__ = ["TargetContract", "TinyBuild", "build_tiny", "conversations", "make_tiny_base", "make_tiny_llama",
           "make_tokenizer"]
