"""The verify stage: the host-side check (checksums, load, probe replay) run on the bundle just built."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.errors import FidelityError


def verify(ctx) -> dict:
    from edgelora.host.verify import verify_bundle

    report = verify_bundle(ctx.need(A.BUNDLE)["dir"])
    if not report["ok"]:
        bad = [c for c in report["checks"] if not c["ok"]]
        raise FidelityError(f"verify failed: {bad[0]['name']}: {bad[0]['detail']}")
    ctx.log(f"  verify: {len(report['checks'])} checks passed")
    return {A.VERIFY_REPORT: report}
