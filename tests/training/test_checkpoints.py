"""Checkpoints, SIGTERM/SIGKILL and resume, early stop, time-budget schedule (tiny model, CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from edgelora.training import checkpoints as ckpts
from edgelora.errors import TrainingError, TrainingInterrupted
from edgelora.testing.tiny import example
from edgelora.testing.tiny import train_args
from edgelora.config import TrainConfig
from edgelora.training.loop import budget_total, train_lora


TRAIN = [example(f"Item {i}?", "banana split" if i % 2 else "apple pie") for i in range(12)]
EVAL = [example(f"Item {i}?", "split banana") for i in range(12, 15)]
# dropout > 0 so the resumed run must also restore the RNG to match.
ARGS = dict(train_examples=TRAIN, eval_examples=EVAL, r=4, alpha=8, dropout=0.1, learning_rate=2e-2,
            max_steps=6, batch_size=4, eval_every=2, max_length=48, seed=3, device="cpu", dtype="float32")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "adapter"
    report = train_lora(base_dir=tiny_llama_dir, out_dir=out, **train_args(ARGS))
    return out, report


def assert_same_run(out, ref_out):
    from safetensors.torch import load_file

    got, want = rows(out), rows(ref_out)
    assert [r["step"] for r in got] == list(range(1, 7))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        assert (g.get("eval_loss") is None) == (w.get("eval_loss") is None)
        if w.get("eval_loss") is not None:
            assert g["eval_loss"] == pytest.approx(w["eval_loss"], rel=1e-5)
    a, b = load_file(out / "adapter_model.safetensors"), load_file(ref_out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-5


def test_sigterm_saves_and_resume_matches_uninterrupted(tiny_llama_dir, tmp_path, reference):
    ref_out, ref_report = reference
    out, ck = tmp_path / "adapter", tmp_path / "ck"

    def kill_at_3(ev):
        if ev.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGTERM at step 4/6.*--resume"):
        train_lora(base_dir=tiny_llama_dir, out_dir=out, checkpoint_dir=ck, progress=kill_at_3, **train_args(ARGS))
    assert not out.exists()
    assert ckpts.latest_complete(ck).name == "step-00000004"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    events = []
    report = train_lora(base_dir=tiny_llama_dir, out_dir=out, checkpoint_dir=ck, resume=True,
                        progress=events.append, **train_args(ARGS))
    assert report["resumed_from"] == "step-00000004"
    assert [e["step"] for e in events if "step" in e] == [5, 6]
    assert report["best_step"] == ref_report["best_step"]
    assert_same_run(out, ref_out)
    assert not ck.exists()  # checkpoints dropped once the adapter is final


KILLER = textwrap.dedent("""
    import os, signal, sys
    from edgelora.training.loop import train_lora
    from tests.training.test_checkpoints import ARGS
    from edgelora.testing.tiny import train_args

    def kill_at_5(ev):
        if ev.get("step") == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    train_lora(base_dir=sys.argv[1], out_dir=sys.argv[2], checkpoint_dir=sys.argv[3], progress=kill_at_5, **train_args(ARGS))
""")


def test_sigkill_then_resume_from_newest_complete_checkpoint(tiny_llama_dir, tmp_path, reference):
    ref_out, _ = reference
    out, ck = tmp_path / "adapter", tmp_path / "ck"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tiny_llama_dir), str(out), str(ck)],
                          cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # A half-written checkpoint (no marker) must be ignored.
    (ck / "step-00000006").mkdir()
    (ck / "step-00000006" / "state.json").write_text("{}")
    assert ckpts.latest_complete(ck).name == "step-00000004"

    changed = {**ARGS, "learning_rate": 3e-2}
    with pytest.raises(TrainingError, match="different learning_rate; pass --force"):
        train_lora(base_dir=tiny_llama_dir, out_dir=out, checkpoint_dir=ck, resume=True, **train_args(changed))
    with pytest.raises(TrainingError, match="different train_data"):
        train_lora(base_dir=tiny_llama_dir, out_dir=out, checkpoint_dir=ck, resume=True,
                   **train_args(ARGS, train_examples=TRAIN[:-1]))
    report = train_lora(base_dir=tiny_llama_dir, out_dir=out, checkpoint_dir=ck, resume=True, **train_args(ARGS))
    assert report["resumed_from"] == "step-00000004"
    assert_same_run(out, ref_out)


def test_early_stop_keeps_best_and_reports(tiny_llama_dir, tmp_path):
    # Train answers "banana split", eval wants "split banana": eval loss falls, then rises.
    train = [example(f"Item {i}?", "banana split") for i in range(16)]
    held = [example(f"Item {i}?", "split banana") for i in range(16, 20)]
    report = train_lora(base_dir=tiny_llama_dir, train_examples=train, eval_examples=held, out_dir=tmp_path / "a", max_length=64, config=TrainConfig(r=8, alpha=16, learning_rate=5e-2, max_steps=40, batch_size=4, eval_every=2, early_stop=2, device="cpu"))
    assert report["stopped_early"] == "early_stop"
    assert report["steps"] == report["best_step"] + 4 < 40
    evals = [r["eval_loss"] for r in rows(tmp_path / "a") if r.get("eval_loss") is not None]
    assert min(evals) == report["best_eval_loss"] and evals[-1] > report["best_eval_loss"]


def test_budget_shortens_schedule_to_what_fits():
    # 1 s per step plus a 2 s eval every 4 steps: 1.5 s per step; 30 s left fit 20 more steps.
    assert budget_total(step=3, total=100, seconds_per_step=1.0, eval_seconds=2.0, eval_every=4,
                         seconds_left=30.0) == 23
    assert budget_total(step=3, total=10, seconds_per_step=1.0, eval_seconds=0.0, eval_every=4,
                         seconds_left=300.0) == 10
    assert budget_total(step=3, total=10, seconds_per_step=5.0, eval_seconds=0.0, eval_every=4,
                         seconds_left=1.0) == 4


def test_out_of_memory_splits_micro_batches_with_the_same_result(tiny_llama_dir, tmp_path, monkeypatch):
    import torch

    import edgelora.training.loop as train_mod

    args = {**ARGS, "max_steps": 2, "eval_examples": [], "packing": False, "dropout": 0.0}  # same masks either way
    ref = train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "ref", **train_args(args))
    real = train_mod.loss_sum_of

    def fits_two_rows(model, batch, plain_head, fused=False):
        if batch["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, plain_head, fused)

    monkeypatch.setattr(train_mod, "loss_sum_of", fits_two_rows)
    events = []
    report = train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "split", progress=events.append, **train_args(args))
    assert report["micro_batch_splits"] == 2
    assert any("splitting each micro-batch in 2" in e.get("message", "") for e in events)
    assert [r["loss"] for r in rows(tmp_path / "split")] == pytest.approx([r["loss"] for r in rows(tmp_path / "ref")],
                                                                           rel=1e-5)
    assert report["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-5)

    monkeypatch.setattr(train_mod, "loss_sum_of", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory (simulated)")))
    with pytest.raises(TrainingError, match="even with one row of max_length=48 tokens.*lower max_length"):
        train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "never", **train_args(args))
