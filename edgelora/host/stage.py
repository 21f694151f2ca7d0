"""The verify stage: the host-side check (checksums, load, probe replay) run on the bundle just built."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.errors import FidelityError


def verify(ctx) -> dict:
    from edgelora.host.verify import verify_bundle

    # a --no-gate build ships its failed gates (flagged in the manifest): verify the rest
    report = verify_bundle(ctx.need(A.BUNDLE)["dir"], allow_failed_gate=not ctx.options.get("gate", True))
    if not report["ok"]:
        bad = [c for c in report["checks"] if not c["ok"]]
        raise FidelityError(f"verify failed: {bad[0]['name']}: {bad[0]['detail']}")
    ctx.log(f"  verify: {len(report['checks'])} checks passed")
    return {A.VERIFY_REPORT: report}
