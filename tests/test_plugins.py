"""The plugin contract: hooks documented and exercised, fake third-party stage and target."""

import inspect
from pathlib import Path

import pytest

from edgelora import hookspecs, plugins
from edgelora.context import Context
from edgelora.errors import PluginError
from edgelora.hookspecs import hookimpl
from edgelora.registry import Stage, Target
from edgelora.pipeline.runner import order_stages, run, select

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("edgelora_")]


def test_every_hook_is_documented_and_typed():
    assert len(HOOKS) >= 7
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        for word in ("When:", "Gets:", "Returns:", "Combine:"):
            assert word in doc, f"{name} docstring lacks {word!r}"
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return type"
        for param in sig.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, f"{name}({param.name}) has no type"
    assert hookspecs.__doc__ and "edgelora.testing" in hookspecs.__doc__


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


def test_a_stage_keyed_on_targets_reruns_when_a_target_plugin_arrives(tmp_path):
    """The bundle stage runs every target: a new or upgraded target plugin must not be skipped."""
    calls = []

    def bundle_like(ctx):
        calls.append(1)
        (tmp_path / "pack.txt").write_text("packed")
        return {"b": str(tmp_path / "pack.txt")}

    class Pipeline:
        @hookimpl
        def edgelora_register_stages(self, register):
            register(Stage("pack", bundle_like, produces=("b",), plugin_kinds=("targets",)))

    class ExtraTarget:
        @hookimpl
        def edgelora_register_targets(self, register):
            register(Target("extra", lambda ctx, d: {}, description="extra"))

    pipeline, target = Pipeline(), ExtraTarget()  # the same plugin objects keep their registered names
    for extra in ([pipeline], [pipeline], [pipeline, target], [pipeline, target]):
        loaded = plugins.load(third_party=False, extra=extra)
        run(_ctx(tmp_path, loaded.registry), [loaded.registry.stages["pack"]], loaded.pm)
    assert len(calls) == 2, "runs first, skips, re-runs once the target set changed, then skips"


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


class _EP:
    """A stand-in entry point (the real ones come from installed distributions)."""

    def __init__(self, name, obj=None, error=None, version="9.9.9"):
        import types

        self.name, self.value = name, f"{name.replace('-', '_')}_module"
        self.dist = types.SimpleNamespace(version=version)
        self._obj, self._error = obj, error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


class LmStudio:
    @hookimpl
    def edgelora_register_targets(self, register):
        register(Target("lmstudio", lambda ctx, d: {}, description="LM Studio folder"))


class RaisesWhileRegistering:
    @hookimpl
    def edgelora_register_stages(self, register):
        register(Stage("half", lambda ctx: {}, produces=()))

    @hookimpl
    def edgelora_register_targets(self, register):
        raise RuntimeError("cannot find my templates")


def test_listing_shows_name_version_source_and_registrations(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("edgelora_env_plugin_for_test")
    mod.__version__ = "0.0.7"

    @hookimpl
    def edgelora_register_sources(register):
        from edgelora.registry import Source

        register(Source("env-source", lambda *a, **k: {}, description="from env"))

    mod.edgelora_register_sources = edgelora_register_sources
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setenv("EDGELORA_PLUGIN_MODULES", mod.__name__)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        _EP("lmstudio", LmStudio()), _EP("broken", error=ImportError("No module named 'nowhere'")),
        _EP("half-broken", RaisesWhileRegistering())])
    loaded = plugins.load()
    info = {i.name: i for i in loaded.info}
    assert info["lmstudio"].as_dict() == {
        "name": "lmstudio", "version": "9.9.9", "source": "entry point", "origin": "lmstudio_module",
        "registers": ["target:lmstudio"], "hooks": ["edgelora_register_targets"], "error": ""}
    assert info[mod.__name__].source == "env" and info[mod.__name__].version == "0.0.7"
    assert info[mod.__name__].registers == ["source:env-source"]
    assert info["edgelora.default_plugins.targets"].source == "builtin"
    assert "target:ollama" in info["edgelora.default_plugins.targets"].registers
    assert "failed to import: ImportError" in info["broken"].error and "'broken'" in info["broken"].error
    # a plugin raising while registering is dropped whole: not even its stage stays
    assert "edgelora_register_targets: RuntimeError: cannot find my templates" in info["half-broken"].error
    assert "half" not in loaded.registry.stages
    assert "train" in loaded.registry.stages and "lmstudio" in loaded.registry.targets
    assert len(loaded.load_errors) == 2

    from click.testing import CliRunner

    from edgelora.cli import cli

    out = CliRunner().invoke(cli, ["plugins"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    row = next(line for line in lines if line.startswith("lmstudio "))
    assert row.split() == ["lmstudio", "9.9.9", "entry", "point", "target:lmstudio"]
    assert any(line.startswith("broken ") and "BROKEN: plugin 'broken'" in line for line in lines)
    built = CliRunner().invoke(cli, ["init", "--help"])
    assert built.exit_code == 0, "other commands keep working with a broken plugin installed"


def test_allow_and_block_lists_apply_to_entry_points(monkeypatch):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [_EP("lmstudio", LmStudio())])
    monkeypatch.setenv("EDGELORA_PLUGINS", "")
    assert "lmstudio" not in plugins.load().registry.targets
    monkeypatch.setenv("EDGELORA_PLUGINS", "lmstudio")
    assert "lmstudio" in plugins.load().registry.targets
    monkeypatch.setenv("EDGELORA_BLOCK_PLUGINS", "lmstudio")
    assert "lmstudio" not in plugins.load().registry.targets


def test_plan_warns_about_a_broken_plugin_the_project_does_not_use(monkeypatch, tmp_path, tiny_llama_dir):
    import json

    from edgelora import api
    from edgelora.errors import PlanError
    from edgelora.testing import conversations

    monkeypatch.setattr(plugins, "entry_points", lambda group: [_EP("lmstudio", error=ImportError("no lmstudio"))])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations(12)))
    toml = f'[project]\nname = "p"\n[base]\nsource = "local"\npath = "{tiny_llama_dir}"\n'
    (tmp_path / "edgelora.toml").write_text(toml)
    logs: list[str] = []
    api.plan(tmp_path, log=logs.append)
    assert any("plugin 'lmstudio'" in line and "no lmstudio" in line for line in logs)
    (tmp_path / "edgelora.toml").write_text(toml + '[export]\ntargets = ["lmstudio"]\n')
    with pytest.raises(PlanError) as e:
        api.plan(tmp_path, log=logs.append)
    text = str(e.value)
    assert "no lmstudio" in text and "[export] targets ['lmstudio'] are not registered" in text
