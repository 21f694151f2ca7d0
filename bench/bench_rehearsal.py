"""The forgetting guard on the demo: build it once per setting and print held-out, probes and
regression (base vs fine-tune, per category) as a markdown table.

Each setting is a set of edgelora.toml overrides on a copy of ``demo/`` in one work folder,
so the stage cache reuses fetch-base, convert-base and the rehearsal answers across builds.
Builds run one after another with gates off (``build --no-gate``). Usage::

    .venv/bin/python bench/bench_rehearsal.py [--work /tmp/rehearsal-bench] \\
        [--setting "ratio 0=data.rehearsal={ratio = 0}"] ...

Without ``--setting``: [data] rehearsal ratio 0, 0.1, 0.25 and 0.5 on the shipped demo config.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [f"ratio {r}=data.rehearsal={{ratio = {r}}}" for r in ("0", "0.1", "0.25", "0.5")]


def override(toml: str, key: str, value: str) -> str:
    """``toml`` with ``section.key = value`` set (replaced in, or added to, that section)."""
    section, name = key.split(".", 1)
    m = re.search(rf"(?ms)^\[{re.escape(section)}\]\n(.*?)(?=^\[|\Z)", toml)
    if m is None:
        return toml + f"\n[{section}]\n{name} = {value}\n"
    body = m.group(1)
    line = re.compile(rf"(?m)^{re.escape(name)}\s*=.*$")
    body = line.sub(f"{name} = {value}", body) if line.search(body) else f"{name} = {value}\n" + body
    return toml[:m.start(1)] + body + toml[m.end(1):]


def build(proj: Path, overrides: list[str]) -> dict:
    from edgelora import api

    toml = (ROOT / "demo" / "edgelora.toml").read_text(encoding="utf-8")
    for o in overrides:
        key, value = o.split("=", 1)
        toml = override(toml, key.strip(), value.strip())
    (proj / "edgelora.toml").write_text(toml, encoding="utf-8")
    start = time.monotonic()
    result = api.build(proj, log=lambda m: None, gate=False)
    seconds = time.monotonic() - start
    ev = result["eval"]
    base = ev["base_model"]
    tuned = next(m for m in ev["sets"]["heldout"]["models"] if m != base)
    data = json.loads((proj / ".edgelora" / "work" / "prepare-data" / "data_report.json").read_text())

    def score(s, model, metric):
        return ev["sets"][s]["models"][model]["metrics"].get(metric)

    return {"seconds": seconds, "heldout": score("heldout", tuned, "json_fields"),
            "probes": score("probes", tuned, "json_fields"),
            "regression": score("regression", tuned, "checks"), "regression_base": score("regression", base, "checks"),
            "categories": ev["sets"]["regression"]["models"][tuned].get("categories"),
            "categories_base": ev["sets"]["regression"]["models"][base].get("categories"),
            "rehearsal": (data.get("rehearsal") or {}).get("added", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/rehearsal-bench"))
    ap.add_argument("--setting", action="append", help="NAME=section.key=value[;section.key=value]")
    args = ap.parse_args()
    proj = args.work / "demo"
    if not proj.exists():
        shutil.copytree(ROOT / "demo", proj, ignore=shutil.ignore_patterns(".edgelora", "dist"))
    rows = []
    for setting in args.setting or DEFAULT:
        name, _, spec = setting.partition("=")
        r = build(proj, [s for s in spec.split(";") if s.strip()])
        rows.append((name, r))
        print(json.dumps({"setting": name, **r}), flush=True)
    pct = lambda v: "—" if v is None else f"{v:.1%}"  # noqa: E731
    print("\n| setting | rehearsal examples | held-out | probes | regression (base) | build |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['rehearsal']} | {pct(r['heldout'])} | {pct(r['probes'])} | "
              f"{pct(r['regression'])} ({pct(r['regression_base'])}) | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
