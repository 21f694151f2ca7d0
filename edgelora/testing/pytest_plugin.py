"""pytest fixtures for plugin authors, loaded automatically through the ``pytest11`` entry point.

- ``edgelora_tiny_base``: a tiny random Llama with SmolLM2's real tokenizer;
- ``edgelora_build``: ``edgelora_build(targets=[...], config={...}, extra_plugins=()) -> TinyBuild``;
  builds the tiny project to a verified bundle with those targets. Identical calls in a session
  are reused.

The tiny project lives in ``$EDGELORA_TEST_CACHE`` (default ``~/.cache/edgelora-tests``) under a
key digesting edgelora's source, behind a file lock: the first session pays for training and
conversion, later ones re-run only the bundle stage (with the targets) and verify.
Importing this module is cheap (no torch): pytest imports it in every session of an
environment where edgelora is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest


def cache_root() -> Path:
    return Path(os.environ.get("EDGELORA_TEST_CACHE", Path.home() / ".cache" / "edgelora-tests"))


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two test sessions must not build in one folder at once
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune(keep: Path, spare: int = 2) -> None:
    """Remove kit projects of other edgelora code versions, keeping the ``spare`` most recent
    (switching branches back and forth stays cheap); a locked one is in use and stays."""
    import fcntl
    import shutil

    others = sorted((p for p in keep.parent.glob("contract-*") if p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[spare:]:
        try:
            with open(old / "lock", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue


@pytest.fixture(scope="session")
def edgelora_kit_dir() -> Path:
    from edgelora.testing.tiny import cache_key

    path = cache_root() / f"contract-{cache_key()}"
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)
    _prune(path)
    return path


@pytest.fixture(scope="session")
def edgelora_tiny_base():
    """Does not depend on edgelora's code, so it is cached apart from the kit project."""
    from edgelora.testing.tiny import BASE_VERSION, make_tiny_base

    folder = cache_root() / f"tiny-base-{BASE_VERSION}"
    with _locked(folder / "lock"):
        return make_tiny_base(folder)


@pytest.fixture(scope="session")
def edgelora_build(edgelora_tiny_base, edgelora_kit_dir, tmp_path_factory):
    from edgelora.testing.tiny import build_tiny

    keep_root = tmp_path_factory.mktemp("edgelora-bundles")
    done: dict[str, object] = {}

    def build(targets=(), config=None, extra_plugins=()):
        key = json.dumps({"targets": list(targets), "config": config or {},
                          "extra": [f"{type(p).__module__}.{type(p).__qualname__}" for p in extra_plugins]},
                         sort_keys=True)
        if key not in done:
            with _locked(edgelora_kit_dir / "lock"):
                done[key] = build_tiny(edgelora_kit_dir / "project", edgelora_tiny_base, targets=list(targets),
                                       config=config, keep=keep_root / f"bundle-{len(done)}",
                                       extra_plugins=extra_plugins)
        return done[key]

    return build
