"""Load, chat-template compilation and probe replay of an untrusted bundle, in a child process
with CPU-time, memory and wall-clock limits.

A chat template is code that Jinja partly evaluates while *compiling* it (constant folding),
before any render-time cap applies, and llama-cpp-python compiles the GGUF's template inside
``Llama()``; llama.cpp's own parser handles the rest of the untrusted file. So that work runs
in ``python -m edgelora.host.sandbox``: it sets RLIMIT_AS and RLIMIT_CPU on itself before
touching the bundle, the parent kills it at the wall-clock limit, and whatever it did not
report is one failed check naming the limit it hit. No plugins are loaded in the child.

Protocol: the job is one JSON object on stdin; the child writes one JSON object a line to
stdout: ``{"begin": NAME}`` before each step, then ``{"name", "ok", "detail"[, "probes",
"logit_tolerance"]}`` for each check. The first failed check ends the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
BASE_MEMORY = GIB  # python, numpy, llama.cpp, thread stacks (~0.5 GiB): address space, not resident memory
TEMPLATE_CPU_S = 2  # compiling an honest chat template takes milliseconds


@dataclass(frozen=True)
class Limits:
    cpu_s: float
    memory_bytes: int
    wall_s: float


def default_limits(gguf_sizes: list[int], n_probes: int, n_threads: int | None = None) -> Limits:
    """Generous for an honest model (load ~1 s/GiB, a probe a few seconds on CPU), tight for a
    payload; each chat template also gets only TEMPLATE_CPU_S of CPU to compile. CPU time
    counts every thread, so it scales with the thread count."""
    from edgelora.runtime.llama import default_threads

    threads = n_threads or default_threads()
    biggest = max(gguf_sizes, default=0)
    per_thread = 10 + 20 * sum(gguf_sizes) / GIB + 5 * n_probes * max(1.0, biggest / GIB)
    # address space: the base, the mapped GGUF plus its working buffers, and a stack per thread
    memory = BASE_MEMORY + 2 * biggest + threads * (16 << 20)
    return Limits(cpu_s=per_thread * threads, memory_bytes=memory, wall_s=2 * per_thread + 30)


def run_model_checks(jobs: list[dict], *, logit_tolerance: float, n_threads, limits: Limits) -> list[dict]:
    """Run ``jobs`` ([{arc, path, items}]) in the limited child; returns the checks it reported
    (plus one naming the limit when it was stopped)."""
    job = {"jobs": jobs, "logit_tolerance": logit_tolerance, "n_threads": n_threads, "limits": asdict(limits)}
    # few malloc arenas: each reserves 64 MiB of address space per thread, which RLIMIT_AS counts;
    # the child imports the same edgelora as this process
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-m", "edgelora.host.sandbox"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    timed_out = False
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    checks, current = [], None
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if "begin" in msg:
            current = msg["begin"]
        else:
            checks.append(msg)
            current = None
    if current is not None or (proc.returncode != 0 and not any(not c["ok"] for c in checks)):
        checks.append({"name": current or "sandbox", "ok": False,
                       "detail": _why_stopped(current or "", proc.returncode, timed_out, limits, err)})
    return checks


def _why_stopped(step: str, code: int, timed_out: bool, limits: Limits, err: bytes) -> str:
    if timed_out:
        return f"sandbox: stopped at the wall-clock limit of {limits.wall_s:g} s"
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        if step.startswith("template:"):
            return f"sandbox: stopped at the CPU-time limit of {TEMPLATE_CPU_S} s for compiling the chat template"
        return f"sandbox: stopped at the CPU-time limit of {limits.cpu_s:g} s"
    last = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = last[-1].strip()[-200:] if last else "no message"
    if code < 0:
        return (f"sandbox: killed by {signal.Signals(-code).name} (memory limit "
                f"{limits.memory_bytes / GIB:.1f} GiB): {tail}")
    return f"sandbox: exited with status {code}: {tail}"


# ---- the child ---------------------------------------------------------------------------------


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _apply_limits(limits: dict) -> None:
    import resource

    cpu = max(1, int(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (int(limits["memory_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _check_model(job: dict, tolerance: float, n_threads) -> bool:
    from edgelora.errors import VerifyError
    from edgelora.bundle.probes import load_llama, replay_probes

    arc = job["arc"]
    if not _compile_template(job):
        return False
    _emit({"begin": f"load:{arc}"})
    try:
        llm = load_llama(job["path"], n_threads=n_threads)
    except VerifyError as e:
        _emit({"name": f"load:{arc}", "ok": False, "detail": str(e)})
        return False
    except MemoryError:
        _emit({"name": f"load:{arc}", "ok": False, "detail": f"{arc}: sandbox: ran out of its memory limit while "
                                                             "loading (chat template or model)"})
        return False
    try:
        _emit({"name": f"load:{arc}", "ok": True, "detail": f"llama-cpp-python loaded {arc}"})
        items = job.get("items")
        if not items:
            _emit({"name": f"probes:{arc}", "ok": True, "detail": job.get("note") or "no probes recorded"})
            return True
        _emit({"begin": f"probes:{arc}"})
        start = time.monotonic()
        try:
            results = replay_probes(job["path"], items, logit_tolerance=tolerance, llm=llm, stop_at_failure=True)
        except MemoryError:
            _emit({"name": f"probes:{arc}", "ok": False, "detail": "probe replay failed: sandbox: ran out of its "
                                                                   "memory limit"})
            return False
        except Exception as e:  # a template or runtime failure in replay is a failed check
            _emit({"name": f"probes:{arc}", "ok": False, "detail": f"probe replay failed: {type(e).__name__}: {e}"})
            return False
    finally:
        llm.close()
    bad = [r for r in results if not r["ok"]]
    worst = max((r.get("max_abs_logit_delta") or 0.0 for r in results), default=0.0)
    detail = (f"{len(results) - len(bad)}/{len(items)} probes pass; max |Δlogit| {worst:.3g} "
              f"(tolerance {tolerance}; {time.monotonic() - start:.2f} s)")
    if bad:
        detail += "; moved: " + "; ".join(f"probe {r['index']}: {r['detail']}" for r in bad[:5])
    _emit({"name": f"probes:{arc}", "ok": not bad, "detail": detail, "probes": results})
    return not bad


def _compile_template(job: dict) -> bool:
    """Compile the GGUF's chat template alone first, under a short CPU budget, so a payload
    in it fails fast here rather than later inside ``Llama()`` under the whole budget."""
    import resource

    from edgelora.runtime.chat_template import ChatTemplateError, compile_chat_template
    from edgelora.errors import ConversionError
    from edgelora.gguf.reader import read_metadata

    arc = job["arc"]
    try:
        template = read_metadata(job["path"], arrays=False).kv.get("tokenizer.chat_template")
    except ConversionError as e:
        _emit({"name": f"template:{arc}", "ok": False, "detail": str(e)})
        return False
    if not isinstance(template, str):
        return True
    _emit({"begin": f"template:{arc}"})
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, spent + TEMPLATE_CPU_S), hard))
    try:
        compile_chat_template(template)
    except MemoryError:
        _emit({"name": f"template:{arc}", "ok": False, "detail": "chat_template: sandbox: ran out of its memory "
                                                                 "limit while compiling"})
        return False
    except ChatTemplateError as e:
        _emit({"name": f"template:{arc}", "ok": False, "detail": str(e)})
        return False
    except Exception as e:  # noqa: BLE001  (whatever Jinja raises for hostile input is a failed check)
        _emit({"name": f"template:{arc}", "ok": False, "detail": f"chat_template: {type(e).__name__}: {e}"})
        return False
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    _emit({"begin": f"load:{arc}"})
    return True


def _child() -> int:
    job = json.loads(sys.stdin.read())
    _apply_limits(job["limits"])
    for item in job["jobs"]:
        if not _check_model(item, float(job["logit_tolerance"]), job.get("n_threads")):
            break
    return 0


if __name__ == "__main__":
    sys.exit(_child())
