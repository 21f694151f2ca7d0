"""Progress display for long work (rich when on a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
import time


class TrainProgress:
    """Callable receiving training events; renders a bar with loss, eval loss, tokens/s and ETA."""

    def __init__(self, ctx=None, *, every_s: float = 10.0):
        self.ctx = ctx
        self.every_s = every_s
        self._bar = None
        self._task = None
        self._last_line = 0.0
        self.events: list[dict] = []

    def __enter__(self):
        console = getattr(self.ctx, "console", None)
        if console is not None and console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("  train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
            self._bar.start()  # the task is added with the first step: never a bar reading 0/None
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        if "message" in event:
            self._log(f"  {event['message']}")
            return
        info = _describe(event)
        if self._bar is not None:
            if self._task is None:
                if not event.get("total"):
                    return
                self._task = self._bar.add_task("train", total=event["total"], info="")
            self._bar.update(self._task, completed=event.get("step", 0), total=event.get("total"), info=info)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s or event.get("eval_loss") is not None \
                or event.get("step") == event.get("total"):
            self._last_line = now
            self._log(f"  train step {event.get('step')}/{event.get('total')} {info}")

    def _log(self, msg: str) -> None:
        if self.ctx is not None:
            self.ctx.log(msg)
        else:
            print(msg, file=sys.stderr, flush=True)


def _describe(ev: dict) -> str:
    parts = []
    if ev.get("loss") is not None:
        parts.append(f"loss {ev['loss']:.4f}")
    if ev.get("eval_loss") is not None:
        parts.append(f"eval {ev['eval_loss']:.4f}")
    if ev.get("tokens_per_s"):
        parts.append(f"{ev['tokens_per_s']:.0f} tok/s")
    if ev.get("eta_s") is not None:
        parts.append(f"eta {ev['eta_s']:.0f} s")
    return " ".join(parts)
