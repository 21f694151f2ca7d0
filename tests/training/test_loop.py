import json

import pytest

from edgelora.data.chat import encode_chat
from edgelora.errors import TrainingError
from edgelora.testing.tiny import example
from edgelora.config import TrainConfig
from edgelora.training.loop import eval_loss, linear_target_modules, train_lora
from edgelora.training.packing import pad_examples

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# Train answers "banana split"; eval expects the same words swapped. Early steps
# raise both words everywhere (eval improves), later steps learn their order
# (eval worsens), so the best eval checkpoint is an early one, not the last.
TRAIN = [example(f"Item {i}?", "banana split") for i in range(16)]
EVAL = [example(f"Item {i}?", "split banana") for i in range(16, 20)]


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "adapter"
    events = []
    report = train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN, eval_examples=EVAL, out_dir=out, max_length=64, progress=events.append, config=TrainConfig(r=8, alpha=16, learning_rate=5e-2, max_steps=16, batch_size=4, eval_every=2, seed=0, device="cpu", early_stop=0))
    return out, report, events


def test_loss_decreases_and_report_is_complete(trained):
    out, report, events = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17))
    losses = [r["loss"] for r in rows]
    # A random 64-wide model with tied 49k embeddings bottoms out near 6 nats.
    assert losses[0] > 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0
    assert report["steps"] == 16 and report["device"] == "cpu" and report["quantization"] == "none"
    assert report["dtype"] in ("bfloat16", "float32")
    assert report["epochs_done"] == 4.0
    assert report["train_tokens"] > 0 and report["tokens_per_s"] > 0
    assert {"torch", "transformers", "peft"} <= set(report["versions"])
    assert report["lora"]["target_modules"] == LLAMA_LINEARS
    assert json.loads((out / "train_report.json").read_text()) == report
    steps = [e for e in events if "step" in e]
    assert [e["step"] for e in steps] == list(range(1, 17)) and steps[-1]["total"] == 16
    assert {"step", "total", "loss", "eval_loss", "tokens_per_s"} <= set(steps[0])
    assert any(e.get("event") == "notice" and "CPU" in e["message"] for e in events)
    assert steps[-1]["eta_s"] == 0 and steps[0]["eta_s"] > 0


def test_outputs_written_and_no_staging_left(trained):
    out, _, _ = trained
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.jsonl", "loss.png"} <= names
    assert not any(n.startswith(".") for n in names)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(p.name.endswith(".staging") for p in out.parent.iterdir())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and sorted(cfg["target_modules"]) == LLAMA_LINEARS


def test_best_checkpoint_is_kept_and_loads_with_peft(trained, tiny_llama_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report, _ = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if r.get("eval_loss") is not None}
    assert sorted(evals) == list(range(2, 17, 2))
    best_step = min(evals, key=evals.get)
    assert report["best_step"] == best_step and report["best_eval_loss"] == evals[best_step]
    assert best_step < 16 and evals[16] > evals[best_step] + 0.1  # the scenario really overfits

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)
    dtype = getattr(torch, report["dtype"])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True, dtype=dtype)
    model = PeftModel.from_pretrained(base, out)
    encoded = [encode_chat(tok, e["messages"], max_length=64) for e in EVAL]
    batch = pad_examples(encoded, tok.pad_token_id, "cpu")
    # The adapter on disk scores the best eval loss, not the last one.
    assert eval_loss(model, [batch], plain_head=True) == pytest.approx(evals[best_step], rel=2e-3)


def test_time_budget_stops_cleanly(tiny_llama_dir, tmp_path):
    out = tmp_path / "adapter"
    report = train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN, eval_examples=EVAL, out_dir=out, max_length=64, config=TrainConfig(max_steps=50, batch_size=4, device="cpu", max_seconds=0.001))
    assert report["steps"] == 1 and report["stopped_early"] == "max_seconds"
    assert report["final_eval_loss"] is not None and report["best_step"] == 1
    assert (out / "adapter_model.safetensors").is_file()


def test_no_eval_set_keeps_final_adapter(tiny_llama_dir, tmp_path):
    report = train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN[:4], eval_examples=[], out_dir=tmp_path / "a", max_length=64, config=TrainConfig(max_steps=2, batch_size=4, device="cpu"))
    assert report["best_eval_loss"] is None and report["best_step"] == 2
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_refusals_leave_no_output(tiny_llama_dir, tmp_path):
    out = tmp_path / "a"
    with pytest.raises(TrainingError, match="no example has an assistant token within max_length"):
        train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN, eval_examples=[], out_dir=out, max_length=8, config=TrainConfig(device="cpu"))
    with pytest.raises(TrainingError, match="nf4 .* needs a CUDA GPU"):
        train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN, eval_examples=[], out_dir=out, config=TrainConfig(device="cpu", quantization="nf4"))
    with pytest.raises(TrainingError, match="batch_size: must be a positive integer"):
        train_lora(base_dir=tiny_llama_dir, train_examples=TRAIN, eval_examples=[], out_dir=out, config=TrainConfig(batch_size=0))
    with pytest.raises(TrainingError, match="no config.json"):
        train_lora(base_dir=tmp_path, train_examples=TRAIN, eval_examples=[], out_dir=out)
    assert not out.exists()


def test_all_linear_targets_exclude_head(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, local_files_only=True)
    assert linear_target_modules(model) == LLAMA_LINEARS
