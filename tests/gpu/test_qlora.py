"""QLoRA on CUDA (opt-in: ``pytest -m gpu``): NF4 base, paged 8-bit AdamW, checkpointing."""

import json

import pytest

from edgelora.testing.tiny import example
from edgelora.config import TrainConfig
from edgelora.training.loop import train_lora

pytestmark = pytest.mark.gpu


def test_qlora_trains_and_adapter_changes_the_model(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train = [example(f"Item {i}?", "banana split") for i in range(16)]
    held = [example(f"Item {i}?", "banana split") for i in range(16, 20)]
    out = tmp_path / "adapter"
    report = train_lora(base_dir=tiny_llama_dir, train_examples=train, eval_examples=held, out_dir=out, max_length=64, config=TrainConfig(r=8, alpha=16, learning_rate=2e-2, max_steps=12, batch_size=4, eval_every=4, device="cuda"))
    assert report["quantization"] == "nf4" and report["device"] == "cuda"
    assert report["optimizer"]["name"] == "PagedAdamW8bit"
    assert report["best_eval_loss"] < report["initial_eval_loss"] - 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]

    # The adapter trained against the NF4 base must also work on the full-precision base
    # (that is what merge and convert use): it makes the trained answer the greedy one.
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    prompt = tok.apply_chat_template(held[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(generated[0, ids.shape[1]:]).startswith("banana split")
