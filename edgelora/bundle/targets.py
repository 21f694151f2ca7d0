"""Run export targets in isolation: one staging folder, one process and one time limit each.

A target is third-party code running inside the build. Whatever it does, the core bundle
(GGUF, Modelfile, manifest) and the other targets must come out the same, so each target:

- runs in a fresh process (multiprocessing ``spawn``, its own session). A thread cannot be
  stopped, and a hung native call (a server that never returns, a deadlocked BLAS) ignores
  Python-level timeouts; a process can be killed, together with anything it started. Spawn,
  not fork: the parent may hold torch's thread pools and open llama.cpp handles, which
  a forked child would inherit half-initialised. The cost is an interpreter start and the
  plugin's imports, well under a second for a target that does not import torch;
- gets an empty staging folder and a context with the config, the artifacts so far and a
  ``log`` that streams back to the build (``ctx.registry`` holds only the target itself);
- is watched: files created, changed or removed under the project and bundle folders,
  outside its staging folder, are reported and fail the target;
- returns ``{bundle path: file}``; every path must be a clean relative bundle path, every
  file a regular file inside its staging folder, and no name may clash with the core files
  or an earlier target's.

A target that raises, crashes, hangs past ``export.target_timeout_s`` or breaks the rules
above fails alone: its outcome names the target and the plugin, and its files stay out of
the bundle. Because the export runs in another process, ``Target.export`` must be importable
by name (a module-level function, as an entry-point plugin's always is).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable

from edgelora.bundle.layout import RESERVED, check_relpath
from edgelora.errors import ConfigError

_IGNORED_DIRS = {"__pycache__"}  # the interpreter's bytecode cache, not the plugin's doing


@dataclass
class TargetOutcome:
    """What happened to one target; ``report()`` is what the manifest records."""

    name: str
    plugin: str
    version: str
    ok: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    error: str = ""
    strays: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plugin": self.plugin, "version": self.version, "ok": self.ok,
                               "files": sorted(self.files), "seconds": round(self.seconds, 2)}
        if self.error:
            out["error"] = self.error
        if self.strays:
            out["outside_staging"] = self.strays
        return out


def select_targets(registry, extra: Iterable[str]) -> list[str]:
    """The default targets, then ``extra`` (``[export] targets``) in order; unknown names fail."""
    extra = list(extra)
    unknown = [n for n in extra if n not in registry.targets]
    if unknown:
        raise ConfigError(f"edgelora.toml: [export] targets {unknown} are not registered "
                          f"(known: {', '.join(sorted(registry.targets)) or 'none'}; see `edgelora plugins`)")
    names = [n for n, t in registry.targets.items() if t.default]
    return names + [n for n in dict.fromkeys(extra) if n not in names]


# -- watching for writes outside the staging folder -----------------------------------

def snapshot(roots: Iterable[Path], exclude: Path) -> dict[str, tuple]:
    """(size, mtime_ns, inode, mode) of every entry under ``roots``, links not followed,
    skipping ``exclude``."""
    exclude = Path(os.path.abspath(exclude))
    seen: dict[str, tuple] = {}
    for root in roots:
        root = Path(os.path.abspath(root))
        if not root.is_dir():
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                it = os.scandir(folder)
            except OSError:
                continue
            with it:
                for entry in it:
                    path = Path(entry.path)
                    if path == exclude or entry.name in _IGNORED_DIRS:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = entry.is_dir(follow_symlinks=False)
                    seen[entry.path] = (0 if is_dir else st.st_size, 0 if is_dir else st.st_mtime_ns,
                                        st.st_ino, st.st_mode)
                    if is_dir:
                        stack.append(path)
    return seen


def diff_snapshots(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Human-readable changes: ``created PATH``, ``changed PATH``, ``removed PATH``."""
    out = [f"created {p}" for p in sorted(after.keys() - before.keys())]
    out += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    out += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    return out


# -- the worker process -----------------------------------------------------------------

def _worker(conn, target, payload: dict) -> None:
    """Child process: run ``target.export`` and send back ("ok", files) or ("error", text)."""
    if hasattr(os, "setsid"):
        os.setsid()  # own process group: a timeout kills whatever the target started, too
    from edgelora.context import Context
    from edgelora.registry import Registry

    def log(msg: str) -> None:
        conn.send(("log", str(msg)))

    try:
        ctx = Context(config=payload["config"], project_dir=Path(payload["project_dir"]),
                      registry=Registry(targets={target.name: target}),
                      artifacts=MappingProxyType(payload["artifacts"]), log=log)
        files = target.export(ctx, Path(payload["staging"]))
        if not isinstance(files, dict):
            raise TypeError(f"export returned {type(files).__name__}, expected a dict of bundle path -> file")
        conn.send(("ok", {str(k): os.fspath(v) for k, v in files.items()}))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, named
        last = traceback.extract_tb(e.__traceback__)[-1:] or [None]
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last[0] else ""
        conn.send(("error", f"{type(e).__name__}: {e}{where}"))
    finally:
        conn.close()


def _kill(proc) -> None:
    if proc.pid is not None and hasattr(os, "killpg") and proc.pid != os.getpgrp():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.is_alive():
        proc.kill()
    proc.join(5)


def _run_isolated(target, payload: dict, timeout_s: float, log: Callable[[str], None]) -> tuple[str, Any]:
    """("ok", files) | ("error", text) | ("timeout", text) | ("crash", text)."""
    try:
        pickle.dumps(target)
    except Exception as e:  # noqa: BLE001
        return "error", (f"export cannot be sent to the isolated worker ({type(e).__name__}: {e}); "
                         "make it a module-level function")
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe(duplex=False)
    # Not a daemon: a target may use multiprocessing itself; the finally below reaps it.
    proc = mp.Process(target=_worker, args=(child, target, payload), name=f"edgelora-target-{target.name}")
    proc.start()
    child.close()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(proc)
                return "timeout", f"timed out after {timeout_s:g} s ([export] target_timeout_s) and was stopped"
            try:
                ready = parent.poll(min(remaining, 0.5))
                msg = parent.recv() if ready else None
            except (EOFError, OSError):
                proc.join(5)
                return "crash", f"worker process died (exit code {proc.exitcode}) before reporting"
            if msg is None:
                if not proc.is_alive() and not parent.poll(0):
                    return "crash", f"worker process died (exit code {proc.exitcode}) before reporting"
                continue
            kind, value = msg
            if kind == "log":
                log(value)
                continue
            proc.join(5)
            return kind, value
    finally:
        parent.close()
        _kill(proc)  # the whole process group: nothing a target started outlives its export


def _check_files(files: dict[str, str], staging: Path, taken: dict[str, str]) -> str | None:
    staging_real = os.path.realpath(staging)
    for arc, src in files.items():
        why = check_relpath(arc)
        if why:
            return f"bundle path {arc!r}: {why}"
        if arc in RESERVED or arc == "README.md":
            return f"bundle path {arc}: reserved for edgelora"
        if arc.casefold() in taken:
            return f"bundle path {arc}: already used by {taken[arc.casefold()]}"
        src_path = Path(src)
        if src_path.is_symlink() or not src_path.is_file():
            return f"bundle path {arc}: {src} is not a regular file"
        if os.path.commonpath([os.path.realpath(src_path), staging_real]) != staging_real:
            return f"bundle path {arc}: {src} is outside the target's staging folder {staging}"
    return None


def run_target(ctx, name: str, staging: Path, *, timeout_s: float, watch: Iterable[Path],
               taken: dict[str, str]) -> TargetOutcome:
    """Export one target into ``staging`` (emptied first), isolated and watched."""
    target = ctx.registry.targets[name]
    plugin = ctx.registry.providers.get(("targets", name), "?")
    outcome = TargetOutcome(name=name, plugin=plugin, version=ctx.registry.versions.get(plugin, "?"))
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    watch = [Path(w) for w in watch]
    before = snapshot(watch, staging)
    payload = {"config": ctx.config, "project_dir": str(ctx.project_dir),
               "artifacts": dict(ctx.artifacts), "staging": str(staging.resolve())}
    t0 = time.monotonic()
    kind, value = _run_isolated(target, payload, timeout_s, lambda m: ctx.log(f"  [{name}] {m}"))
    outcome.seconds = time.monotonic() - t0
    outcome.strays = diff_snapshots(before, snapshot(watch, staging))
    problem = None
    if kind != "ok":
        problem = value
    elif outcome.strays:
        shown = ", ".join(outcome.strays[:3]) + (f" (+{len(outcome.strays) - 3} more)" if len(outcome.strays) > 3 else "")
        problem = f"wrote outside its staging folder: {shown}"
    else:
        problem = _check_files(value, staging, taken)
    if problem:
        outcome.error = f"target {name!r} (plugin {plugin!r}) failed: {problem}"
    else:
        outcome.ok = True
        outcome.files = {arc: Path(src) for arc, src in value.items()}
    return outcome


def run_targets(ctx, names: Iterable[str], staging_root: Path, *, timeout_s: float,
                watch: Iterable[Path], core_files: dict[str, Path]) -> list[TargetOutcome]:
    """Run ``names`` one after another; a failure is logged and recorded, never raised."""
    taken = {arc.casefold(): "edgelora" for arc in core_files}
    outcomes = []
    for name in names:
        outcome = run_target(ctx, name, Path(staging_root) / name, timeout_s=timeout_s, watch=watch, taken=taken)
        if outcome.ok:
            taken.update({arc.casefold(): f"target {name!r}" for arc in outcome.files})
            ctx.log(f"  target {name} ({outcome.plugin} {outcome.version}): {len(outcome.files)} file(s) "
                    f"in {outcome.seconds:.1f} s")
        else:
            ctx.log(f"  warning: {outcome.error}")
        outcomes.append(outcome)
    return outcomes
