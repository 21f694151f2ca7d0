"""Atomic training checkpoints: what a resumed run needs to continue bit-for-bit.

A checkpoint is a folder ``step-00000012/`` holding the adapter, the optimizer,
scheduler and RNG states (``trainer_state.pt``), the loop's own state
(``state.json``: step, best eval loss, metric rows, the run's fingerprint) and,
written last, the marker ``COMPLETE``. It is assembled under a temporary name and
renamed into place, so a run killed at any moment leaves either a complete
checkpoint or none: :func:`latest_complete` never returns a half-written one.
"""

from __future__ import annotations

import json
import signal
import os
import random
import shutil
from pathlib import Path

from edgelora.errors import TrainingError
from edgelora.util.files import sha256_json

MARKER = "COMPLETE"
PREFIX = "step-"


def run_fingerprint(settings: dict, train_examples: list[dict], eval_examples: list[dict]) -> dict:
    """What must not change between an interrupted run and its resumption."""
    return {"settings": settings, "train_data": sha256_json(train_examples), "eval_data": sha256_json(eval_examples)}


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """Names of settings (and 'train_data'/'eval_data') that differ between two fingerprints."""
    changed = [k for k in ("train_data", "eval_data") if old.get(k) != new.get(k)]
    a, b = old.get("settings", {}), new.get("settings", {})
    changed += sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return changed


def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(root: Path, step: int, *, model, optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep`` complete ones."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, sort_keys=True) + "\n", encoding="utf-8")
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync_file(f)
    (tmp / MARKER).write_text(f"{step}\n", encoding="utf-8")
    _fsync_file(tmp / MARKER)
    if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    complete = _complete(root)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_complete(root: Path) -> Path | None:
    """The newest checkpoint whose marker was written, or None."""
    complete = _complete(root)
    return complete[-1] if complete else None


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{ckpt}: unreadable checkpoint state ({e})") from e


def restore(ckpt: Path, *, model, optimizer, scheduler) -> None:
    """Load adapter weights, optimizer, scheduler and RNG states from ``ckpt`` into live objects."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = ckpt / "adapter" / "adapter_model.safetensors"
    if not weights.is_file():
        raise TrainingError(f"{ckpt}: checkpoint has no adapter_model.safetensors")
    set_peft_model_state_dict(model, load_file(weights))
    blob = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])


def clear(root: Path) -> None:
    """Remove every checkpoint (complete or not) under ``root``."""
    shutil.rmtree(root, ignore_errors=True)


class SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
