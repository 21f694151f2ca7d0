"""Data-parallel training: two processes (torchrun, gloo on CPU) take the same steps as one.

One process with grad_accum=2 and two ranks with grad_accum=1 consume the same micro-batches
per optimizer step (every rank builds the same seeded stream and takes every second one), and
losses are normalised by the global target count, so the loss curves must agree.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from edgelora.testing.tiny import example, train_args
from edgelora.training.loop import train_lora


TRAIN = [example(f"Item {i}?", "banana split" if i % 3 else "apple pie") for i in range(16)]
EVAL = [example(f"Item {i}?", "banana split") for i in range(16, 19)]
ARGS = dict(train_examples=TRAIN, eval_examples=EVAL, r=4, alpha=8, dropout=0.0, learning_rate=2e-2,
            max_steps=4, batch_size=2, eval_every=2, max_length=48, seed=1, device="cpu", dtype="float32")

RANK_SCRIPT = textwrap.dedent("""
    import sys
    from edgelora.training.loop import train_lora
    from tests.training.test_distributed import ARGS
    from edgelora.testing.tiny import train_args

    report = train_lora(base_dir=sys.argv[1], out_dir=sys.argv[2], **train_args(ARGS, grad_accum=1))
    # one write (< PIPE_BUF, so atomic): both ranks share the pipe, and print() writes piece by piece
    sys.stdout.write(f"RANK_REPORT {report['world_size']} {report['steps']}\\n")
    sys.stdout.flush()
""")


def test_two_ranks_match_one_process(tiny_llama_dir, tmp_path):
    single = train_lora(base_dir=tiny_llama_dir, out_dir=tmp_path / "one", **train_args(ARGS, grad_accum=2))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tiny_llama_dir), str(tmp_path / "two")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RANK_REPORT 2 4") == 2  # both ranks return rank 0's report
    report = json.loads((tmp_path / "two" / "train_report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 4
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        if a.get("eval_loss") is not None:
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)
    assert report["train_tokens"] == single["train_tokens"]
