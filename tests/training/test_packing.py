"""Padding-free packing: layout, and packed loss equal to padded loss on a real (tiny) model."""

import random

import pytest

from edgelora.data.chat import IGNORE_INDEX, encode_chat
from edgelora.training.packing import collate, epoch_batches, micro_batch_stream, pack_rows


def enc(n, start=10):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:], "truncated": False}


def test_pack_rows_fill_up_to_budget_in_order():
    data = [enc(5), enc(4), enc(3), enc(8), enc(1)]
    rows = pack_rows(data, [0, 1, 2, 3, 4], row_tokens=9)
    assert rows == [[0, 1], [2], [3, 4]]
    assert all(sum(len(data[i]["input_ids"]) for i in r) <= 9 for r in rows)


def test_collate_packed_resets_positions_and_masks_boundaries():
    a, b = enc(4, 100), enc(3, 200)
    batch = collate([[a, b], [enc(2, 300)]], pad_id=0, device="cpu", packed=True)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert batch["input_ids"][0].tolist() == a["input_ids"] + b["input_ids"]
    labels = batch["labels"][0].tolist()
    assert labels[4] == IGNORE_INDEX  # b's first token is never predicted from a's last
    assert labels[5:] == b["labels"][1:]
    assert batch["labels"][1, 2:].tolist() == [IGNORE_INDEX] * 5  # padding
    assert batch["tokens"] == 9


def test_same_examples_per_step_packed_or_not():
    data = [enc(random.Random(i).randint(3, 30)) for i in range(23)]
    for seed in (0, 1):
        padded = epoch_batches(data, batch_size=4, rng=random.Random(seed), packed=False, row_tokens=40)
        packed = epoch_batches(data, batch_size=4, rng=random.Random(seed), packed=True, row_tokens=40)
        assert [sorted(i for row in b for i in row) for b in padded] == \
               [sorted(i for row in b for i in row) for b in packed]
        assert len(packed) == 6 and all(len(b) <= 4 for b in packed)
        assert sum(len(b) for b in packed) < sum(len(b) for b in padded)  # fewer rows: padding gone


def test_stream_skip_resumes_the_same_sequence():
    data = [enc(5 + i) for i in range(10)]
    full = micro_batch_stream(data, batch_size=3, seed=7, packed=True, row_tokens=20)
    first = [next(full) for _ in range(9)]
    resumed = micro_batch_stream(data, batch_size=3, seed=7, packed=True, row_tokens=20, skip=5)
    assert [next(resumed) for _ in range(4)] == first[5:]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True, dtype=torch.float32)
    return tok, model.eval()


@pytest.mark.parametrize("plain_head", [True, False])
def test_packed_loss_equals_padded_loss(tiny, plain_head):
    import torch
    from peft import LoraConfig, get_peft_model

    from edgelora.training.loop import loss_sum_of

    tok, base = tiny
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    convs = [[{"role": "user", "content": f"Question number {i}? " + "word " * (i * 3)},
              {"role": "assistant", "content": "Answer " + "x " * (7 - i)}] for i in range(6)]
    data = [encode_chat(tok, c, max_length=128) for c in convs]
    padded = collate([[e] for e in data], tok.pad_token_id, "cpu", packed=False)
    rows = pack_rows(data, list(range(len(data))), row_tokens=128)
    assert len(rows) < len(data)  # really packed several examples per row
    packed = collate([[data[i] for i in r] for r in rows], tok.pad_token_id, "cpu", packed=True)
    assert padded["targets"] == packed["targets"]
    with torch.no_grad():
        loss_padded = float(loss_sum_of(model, padded, plain_head))
        loss_packed = float(loss_sum_of(model, packed, plain_head))
        # Attention must not cross examples: each example alone gives the same total.
        alone = sum(float(loss_sum_of(model, collate([[e]], tok.pad_token_id, "cpu", packed=False), plain_head))
                    for e in data)
    model.unload()
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    assert loss_packed == pytest.approx(alone, rel=1e-5)
