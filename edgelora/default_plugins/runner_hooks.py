"""The default way to run a stage: call it. Wrappers from other plugins go around this."""

from __future__ import annotations

from edgelora.hookspecs import hookimpl


@hookimpl(trylast=True)
def edgelora_run_stage(stage, context):
    return stage.run(context)
