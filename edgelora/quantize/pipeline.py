"""Every requested quantization type, measured against F16 and gated: what the quantize stage runs.

Per type, with an importance matrix available, both variants are made (with and without
it, unless the type needs it) and the one closer to F16 is kept under the final name by a
rename: no file is copied, and the discarded variant is deleted. The quality gate then
decides which types ship.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgelora.errors import QuantizeError
from edgelora.quantize.quality import GateThresholds, apply_gate, measure
from edgelora.quantize.llama_quantize import NEEDS_IMATRIX, ftype_for, quantize

# Types an importance matrix does not change (16/32-bit copies; Q8_0 rounds per block without weights).
NO_IMATRIX_EFFECT = frozenset({"F32", "F16", "BF16", "Q8_0"})


def wants_imatrix(types, setting: str) -> bool:
    """Whether ``export.imatrix = setting`` asks for one with these ``types``."""
    types = {t.upper() for t in types}
    if setting == "off":
        return False
    if setting == "auto":
        return bool(types - NO_IMATRIX_EFFECT)
    return True  # "on" or a file path


def quantize_all(src_gguf, out_dir, stem: str, types: list[str], *, imatrix: dict | None = None,
                 compare: bool = True, batches: list[list[int]], thresholds: GateThresholds,
                 gate: str = "drop", log=print) -> tuple[dict, dict]:
    """Quantize ``src_gguf`` to each of ``types``; returns ({type: path} that ship, report).

    The report holds each llama.cpp run, the quality measurements of every variant and the
    gate's verdict per type. Raises QuantizeError when no type passes (or, with
    ``gate="fail"``, when any fails), naming the numbers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    types = [t.upper() for t in types]
    for t in types:
        ftype_for(t, with_imatrix=bool(imatrix))  # unknown type / missing imatrix: fail before any work
    runs: dict[str, dict] = {}
    variants: dict[str, dict[str, Path]] = {}
    for t in types:
        options = []
        use = bool(imatrix) and t not in NO_IMATRIX_EFFECT
        if use:
            options.append(("+imatrix", imatrix))
        if not use or (compare and t not in NEEDS_IMATRIX):
            options.append(("", None))
        variants[t] = {}
        for suffix, imat in options:
            label = t + suffix
            path = out_dir / f"{stem}.{t}{'.imatrix' if suffix else '.plain'}.candidate.gguf"
            runs[label] = quantize(src_gguf, path, t, imatrix=imat)
            variants[t][label] = path
            log(f"  {label:16s} {os.path.getsize(path) / 2**20:8.1f} MiB  {runs[label]['seconds']:.1f} s")
    log("  quality vs F16 (held-out texts, one forward pass each):")
    candidates = {label: p for v in variants.values() for label, p in v.items()}
    report = measure(src_gguf, candidates, batches, log=log)
    chosen = {t: min(v, key=lambda label: report["results"][label]["mean_kl"]) for t, v in variants.items()}
    report = apply_gate(report, chosen, thresholds)
    report["runs"] = runs
    final: dict[str, Path] = {}
    for t, v in variants.items():
        keep = out_dir / f"{stem}.{t}.gguf"
        for label, p in v.items():
            if label == chosen[t]:
                os.replace(p, keep)
                runs[label]["out_path"] = str(keep)
            else:
                p.unlink()
        final[t] = keep
    failed = {t: g for t, g in report["gate"].items() if not g["passed"]}
    for t, g in failed.items():
        log(f"  gate: {t} FAILS ({'; '.join(g['failures'])})"
            + (", left out of the bundle" if gate == "drop" else ""))
    none_pass = len(failed) == len(types)
    if none_pass or (failed and gate == "fail") or gate == "drop":
        for t in failed:  # a failing type never lies around looking shippable
            final[t].unlink()
    if none_pass:
        raise QuantizeError("quality gate: no requested type passes: " + "; ".join(
            f"{t}: {', '.join(g['failures'])}" for t, g in failed.items()))
    if failed and gate == "fail":
        t, g = next(iter(failed.items()))
        raise QuantizeError(f"quality gate: {t} fails: {', '.join(g['failures'])} (export.gate = 'fail')")
    shipped = {t: str(p.resolve()) for t, p in final.items() if gate == "report" or t not in failed}
    report["shipped"] = list(shipped)
    return shipped, report
