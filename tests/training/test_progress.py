"""The terminal progress bar appears with the first step that knows its total: never 0/None."""

import io

from rich.console import Console

from edgelora.training.progress import TrainProgress


class _Ctx:
    def __init__(self, console):
        self.console = console
        self.lines = []

    def log(self, msg):
        self.lines.append(msg)


def test_bar_never_reads_none():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    ctx = _Ctx(console)
    with TrainProgress(ctx) as progress:
        progress({"message": "loading"})
        progress({"step": 0, "total": None})
        progress({"step": 1, "total": 4, "loss": 2.123456789})
        progress({"step": 4, "total": 4, "loss": 1.5, "eval_loss": 1.25, "eta_s": 0})
    text = out.getvalue()
    assert "None" not in text and "4/4" in text
    assert "loss 1.5000" in text and "2.123456789" not in text
    assert ctx.lines == ["  loading"]
