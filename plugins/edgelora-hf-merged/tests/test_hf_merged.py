"""The hf-merged target: the shared contract, then transformers loads the export and its
logits match the adapter-attached PEFT model."""

from __future__ import annotations

import json

import pytest

from edgelora.testing import TargetContract


class TestHfMergedContract(TargetContract):
    target = "hf-merged"
    plugin = "hf-merged"

    def check_export(self, build, files):
        assert {"hf-merged/model.safetensors", "hf-merged/config.json", "hf-merged/tokenizer.json",
                "hf-merged/tokenizer_config.json", "hf-merged/SERVING.md"} <= set(files)
        assert json.loads(files["hf-merged/tokenizer_config.json"].read_text()).get("chat_template")


@pytest.fixture(scope="module")
def merged(edgelora_build):
    return edgelora_build(targets=["hf-merged"])


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_merged_export_matches_adapter_attached_logits(merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = merged.bundle_dir / "hf-merged"
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    prompts = [[{"role": "user", "content": "What colour is the sky number 3?"}],
               [{"role": "system", "content": "Answer with one colour word."},
                {"role": "user", "content": "What colour is the plum number 41?"}]]
    exported = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    def load_base():
        return AutoModelForCausalLM.from_pretrained(str(merged.base_dir), local_files_only=True, dtype=torch.float32)

    base = load_base().eval()
    attached = PeftModel.from_pretrained(load_base(), str(merged.adapter_dir)).eval()
    for messages in prompts:
        ids = torch.tensor([tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)])
        plain = _logits(base, ids)
        want, got = _logits(attached, ids), _logits(exported, ids)
        assert (want - plain).abs().max() > 1e-3, "the adapter must change the model, or this test proves nothing"
        assert (got - want).abs().max() < 1e-4, f"max |Δlogit| {(got - want).abs().max():.2e}"
        assert torch.equal(got.argmax(-1), want.argmax(-1))
