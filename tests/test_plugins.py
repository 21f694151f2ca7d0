"""The plugin contract: hooks documented and exercised, fake third-party stage and target."""

import inspect
from pathlib import Path

import pytest

from edgelora import hookspecs, plugins
from edgelora.context import Context
from edgelora.errors import PluginError
from edgelora.hookspecs import hookimpl
from edgelora.registry import Stage, Target
from edgelora.runner import order_stages, run, select

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("edgelora_")]


def test_every_hook_is_documented():
    assert len(HOOKS) >= 7
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        for word in ("When:", "Gets:", "Returns:"):
            assert word in doc, f"{name} docstring lacks {word!r}"


def test_every_hook_is_exercised_by_a_test():
    here = Path(__file__).parent
    text = "".join(p.read_text() for p in here.rglob("test_*.py"))
    for name in HOOKS:
        assert f"def {name}(" in text, f"no test implements {name}"


def test_builtins_registered_with_provider():
    reg = plugins.load(third_party=False).registry
    for stage in ("fetch-base", "train", "merge", "convert", "quantize", "modelfile", "bundle", "verify"):
        assert stage in reg.stages
    assert reg.providers[("stages", "train")] == "edgelora.default_plugins.stages"
    assert {"embedded", "local", "hf", "gguf"} <= set(reg.sources)
    assert "llama" in reg.architectures
    assert "ollama" in reg.targets


class FakeThirdParty:
    """A third-party plugin adding a stage and a target."""

    @hookimpl
    def edgelora_register_stages(self, register):
        register(Stage("shout", lambda ctx: {"shouted": "HELLO"}, requires=(), produces=("shouted",)))

    @hookimpl
    def edgelora_register_targets(self, register):
        register(Target("fake-target", lambda ctx, d: {}, description="fake"))

    @hookimpl
    def edgelora_register_sources(self, register):
        pass

    @hookimpl
    def edgelora_register_architectures(self, register):
        pass


def test_fake_third_party_stage_and_target():
    loaded = plugins.load(third_party=False, extra=[FakeThirdParty()])
    assert "shout" in loaded.registry.stages and "fake-target" in loaded.registry.targets
    rows = {(r["kind"], r["name"]): r for r in loaded.registry.listing()}
    assert ("target", "fake-target") in rows


def test_duplicate_name_names_both_plugins():
    class Dup:
        @hookimpl
        def edgelora_register_stages(self, register):
            register(Stage("train", lambda ctx: {}, produces=()))

    with pytest.raises(PluginError, match=r"'train' registered twice: by 'edgelora.default_plugins.stages' and by"):
        plugins.load(third_party=False, extra=[Dup()])


def test_misspelled_hook_fails():
    class Typo:
        @hookimpl
        def edgelora_register_stage(self, register):  # missing 's'
            pass

    with pytest.raises(PluginError, match="edgelora_register_stage"):
        plugins.load(third_party=False, extra=[Typo()])


def test_broken_entry_point_is_reported_not_fatal(monkeypatch):
    class EP:
        name, value, dist = "broken", "nowhere.module:plugin", None

        def load(self):
            raise ImportError("No module named 'nowhere'")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [EP()])
    loaded = plugins.load()
    assert loaded.load_errors and "'broken'" in loaded.load_errors[0]
    assert "train" in loaded.registry.stages
    monkeypatch.setenv("EDGELORA_BLOCK_PLUGINS", "broken")
    assert plugins.load().load_errors == []


def _ctx(tmp_path, registry):
    from edgelora.config import Config

    return Context(config=Config(root=tmp_path), project_dir=tmp_path, registry=registry, log=lambda m: None)


def test_runner_caches_and_wrapper_sees_every_stage(tmp_path):
    calls, wrapped = [], []

    def make(name, req, prod, keys=()):
        def fn(ctx):
            calls.append(name)
            out = tmp_path / f"{name}.txt"
            out.write_text(name + "".join(str(ctx.artifacts.get(r)) for r in req))
            return {prod: str(out)}
        return Stage(name, fn, requires=req, produces=(prod,), config_keys=keys)

    class Pipeline:
        @hookimpl
        def edgelora_register_stages(self, register):
            register(make("one", (), "a", ("train",)))
            register(make("two", ("a",), "b", ("export.quantize",)))

        @hookimpl(wrapper=True)
        def edgelora_run_stage(self, stage, context):
            wrapped.append(stage.name)
            return (yield)

    loaded = plugins.load(third_party=False, extra=[Pipeline()])
    reg = loaded.registry
    stages = select(order_stages([reg.stages["one"], reg.stages["two"]]), ["two"])
    run(_ctx(tmp_path, reg), stages, loaded.pm)
    assert calls == ["one", "two"] and wrapped == ["one", "two"]
    run(_ctx(tmp_path, reg), stages, loaded.pm)
    assert calls == ["one", "two"], "unchanged inputs must skip both stages"
    (tmp_path / "one.txt").write_text("tampered")
    run(_ctx(tmp_path, reg), stages, loaded.pm)
    assert calls == ["one", "two", "one"], "a tampered output re-runs its stage; same content downstream skips"
    assert (tmp_path / "one.txt").read_text() == "one"
    import dataclasses

    ctx = _ctx(tmp_path, reg)
    cfg = dataclasses.replace(ctx.config, export=dataclasses.replace(ctx.config.export, quantize=["Q4_0"]))
    run(dataclasses.replace(ctx, config=cfg), stages, loaded.pm)
    assert calls[-1] == "two" and calls.count("one") == 2, "only the stage whose config changed re-runs"


def test_verify_findings_hook_combines():
    class Finder:
        @hookimpl
        def edgelora_verify_findings(self, bundle_dir, manifest):
            return [{"name": "finder", "ok": True, "detail": bundle_dir}]

    loaded = plugins.load(third_party=False, extra=[Finder()])
    results = loaded.pm.hook.edgelora_verify_findings(bundle_dir="/b", manifest={})
    assert [{"name": "finder", "ok": True, "detail": "/b"}] in results


def test_register_commands_hook():
    import click
    from click.testing import CliRunner

    class Cmd:
        @hookimpl
        def edgelora_register_commands(self, cli):
            @cli.command("hello-plugin")
            def hello():
                click.echo("hi from plugin")

    from edgelora.cli import cli

    loaded = plugins.load(third_party=False, extra=[Cmd()])
    loaded.pm.hook.edgelora_register_commands(cli=cli)
    try:
        result = CliRunner().invoke(cli, ["hello-plugin"])
        assert result.output.strip() == "hi from plugin"
    finally:
        cli.commands.pop("hello-plugin", None)
