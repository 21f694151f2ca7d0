"""Data-parallel QLoRA on two GPUs (torchrun, NCCL): the same steps as one GPU with grad_accum=2,
no more memory per GPU, and checkpoints that resume across the two layouts.

Opt-in (``pytest -m gpu``) and skipped unless two CUDA devices are visible.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from edgelora.testing.tiny import example, train_args
from edgelora.training.loop import train_lora

pytestmark = pytest.mark.gpu

TRAIN = [example(f"Item {i}?", "banana split " * (i % 4 + 1)) for i in range(32)]
EVAL = [example(f"Item {i}?", "banana split") for i in range(32, 36)]
ARGS = dict(train_examples=TRAIN, eval_examples=EVAL, r=8, alpha=16, learning_rate=2e-2, max_steps=6,
            batch_size=4, eval_every=3, save_every=3, max_length=64, seed=1, device="cuda", quantization="nf4")

RANK_SCRIPT = textwrap.dedent("""
    import sys
    from edgelora.testing.tiny import train_args
    from edgelora.training.loop import train_lora
    from tests.gpu.test_two_gpus import ARGS

    import os, signal
    stop_at = int(sys.argv[4]) if len(sys.argv) > 4 else None

    def stop(ev):  # rank 0 gets progress events; the SIGTERM flag is all-reduced, so every rank stops
        if ev.get("step") == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    force = "--force" in sys.argv
    train_lora(base_dir=sys.argv[1], out_dir=sys.argv[2], checkpoint_dir=sys.argv[3], resume=True, force=force,
               progress=stop, **train_args(ARGS, grad_accum=1))
""")


def _two_gpus():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")


def _torchrun(tmp_path, base, out, ckpt, *extra, ok=True):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": root, "NCCL_NVLS_ENABLE": "0"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(base), str(out), str(ckpt), *map(str, extra)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if not ok:
        assert proc.returncode != 0 and "TrainingInterrupted" in proc.stderr, proc.stderr[-3000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "train_report.json").read_text())


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gpus_take_the_steps_of_one_with_grad_accum_2(tiny_llama_dir, tmp_path):
    _two_gpus()
    one = train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "one", **train_args(ARGS, grad_accum=2))
    two = _torchrun(tmp_path, tiny_llama_dir, tmp_path / "two", tmp_path / "two-ck")
    assert two["world_size"] == 2 and two["steps"] == one["steps"] == 6
    for a, b in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two")):
        assert b == pytest.approx(a, rel=2e-2)  # bf16 compute: reduction order differs between layouts
    assert two["train_tokens"] == one["train_tokens"]
    assert two["peak_gpu_memory_bytes"] <= one["peak_gpu_memory_bytes"] * 1.05


def test_checkpoints_resume_across_one_and_two_gpus(tiny_llama_dir, tmp_path):
    import os
    import signal

    from edgelora.errors import TrainingInterrupted

    _two_gpus()
    # two GPUs stop at step 3 (SIGTERM: checkpoint saved); one GPU with grad_accum=2 resumes to step 6
    ck = tmp_path / "ck"
    _torchrun(tmp_path, tiny_llama_dir, tmp_path / "a", ck, 3, ok=False)
    resumed = train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "a", checkpoint_dir=ck, resume=True,
                         force=True, **train_args(ARGS, grad_accum=2))  # world size is in the fingerprint
    assert resumed["resumed_from"] is not None and resumed["steps"] == 6

    # and the other way round: one GPU stops at step 3, two GPUs resume
    ck2 = tmp_path / "ck2"

    def stop(ev):
        if ev.get("step") == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "b", checkpoint_dir=ck2, progress=stop,
                   **train_args(ARGS, grad_accum=2))
    two = _torchrun(tmp_path, tiny_llama_dir, tmp_path / "b", ck2, 0, "--force")
    assert two["resumed_from"] is not None and two["steps"] == 6 and two["world_size"] == 2
