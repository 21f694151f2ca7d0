"""Loading plugins and collecting what they register.

Plugins come from three places, in this order, and ``edgelora plugins`` says which:

- ``builtin``: the default plugins (``edgelora.default_plugins.*``), always loaded;
- ``entry point``: distributions declaring ``[project.entry-points.edgelora]``;
- ``env``: modules named in ``EDGELORA_PLUGIN_MODULES=pkg.mod,other.mod`` (for developing a
  plugin without packaging it).

Two environment variables control the third-party ones (entry points and env modules alike):

- ``EDGELORA_PLUGINS``: comma-separated allow-list of plugin names; when set, only these
  load. ``EDGELORA_PLUGINS=""`` (set but empty) loads none.
- ``EDGELORA_BLOCK_PLUGINS``: comma-separated names never loaded.

A third-party plugin that fails to import, or raises while registering, is reported by
name (``load_errors``) and skipped, so one broken plugin never breaks other commands. A
misspelled hook (``check_pending``) and a name registered twice are errors, naming the
plugins: those are contract violations a plugin author must see at once.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from edgelora import hookspecs
from edgelora.errors import PluginError
from edgelora.registry import Registry

GROUP = "edgelora"
MODULES_ENV = "EDGELORA_PLUGIN_MODULES"
DEFAULT_PLUGINS = (
    "edgelora.default_plugins.sources",
    "edgelora.default_plugins.architectures",
    "edgelora.default_plugins.stages",
    "edgelora.default_plugins.targets",
    "edgelora.default_plugins.runner_hooks",
)
KINDS = ("stages", "sources", "architectures", "targets")


@dataclass
class PluginInfo:
    """One loaded (or broken) plugin, as ``edgelora plugins`` shows it."""

    name: str
    version: str
    source: str          # "builtin" | "entry point" | "env" | "extra"
    origin: str          # module path or entry-point value
    registers: list[str] = field(default_factory=list)  # "target:ollama", ...
    hooks: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "source": self.source, "origin": self.origin,
                "registers": list(self.registers), "hooks": list(self.hooks), "error": self.error}


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    registry: Registry
    load_errors: list[str] = field(default_factory=list)
    third_party: list[dict[str, str]] = field(default_factory=list)
    info: list[PluginInfo] = field(default_factory=list)


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {x.strip() for x in value.split(",") if x.strip()}


def _edgelora_version() -> str:
    from edgelora import __version__

    return __version__


def _module_version(modname: str) -> str:
    mod = importlib.import_module(modname)
    version = getattr(mod, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError, packages_distributions, version as dist_version

    top = modname.split(".")[0]
    for dist in packages_distributions().get(top, []):
        try:
            return dist_version(dist)
        except PackageNotFoundError:
            continue
    return "?"


def _third_party_candidates():
    """(name, source, origin, version, loader) for every third-party plugin, unfiltered."""
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        yield ep.name, "entry point", ep.value, (dist.version if dist else "?"), ep.load
    for modname in sorted(_env_list(MODULES_ENV) or ()):
        yield modname, "env", modname, None, (lambda m=modname: importlib.import_module(m))


def load(*, third_party: bool = True, extra: list[Any] = ()) -> Plugins:
    """Build a plugin manager with the defaults, third-party plugins and ``extra``."""
    pm = pluggy.PluginManager("edgelora")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        infos[modname] = PluginInfo(modname, _edgelora_version(), "builtin", modname)
    errors: list[str] = []
    if third_party:
        allow = _env_list("EDGELORA_PLUGINS")
        block = _env_list("EDGELORA_BLOCK_PLUGINS") or set()
        for name, source, origin, version, loader in _third_party_candidates():
            if name in block or (allow is not None and name not in allow):
                continue
            try:
                obj = loader()
                if version is None:
                    version = _module_version(origin)
            except Exception as e:  # a broken plugin must not break the others
                msg = f"plugin {name!r} ({origin}) failed to import: {type(e).__name__}: {e}"
                errors.append(msg)
                infos[name] = PluginInfo(name, version or "?", source, origin, error=msg)
                continue
            try:
                pm.register(obj, name=name)
            except Exception as e:  # noqa: BLE001 - e.g. the same module under two names
                msg = f"plugin {name!r} ({origin}) could not be registered: {e}"
                errors.append(msg)
                infos[name] = PluginInfo(name, version, source, origin, error=msg)
                continue
            infos[name] = PluginInfo(name, version, source, origin)
    for obj in extra:
        name = pm.register(obj)
        infos[name] = PluginInfo(name, "?", "extra", type(obj).__module__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {e.plugin!r}: {e}") from None
    third = {n for n, i in infos.items() if i.source in ("entry point", "env")}
    registry = collect(pm, isolate=third, errors=errors)
    for name, info in infos.items():
        if name in registry.failed and not info.error:
            info.error = registry.failed[name]
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        registry.versions[name] = info.version
    for (kind, obj_name), provider in registry.providers.items():
        if provider in infos:
            infos[provider].registers.append(f"{kind[:-1]}:{obj_name}")
    loaded = [{"name": i.name, "version": i.version, "source": i.origin}
              for i in infos.values() if i.source in ("entry point", "env") and not i.error]
    return Plugins(pm=pm, registry=registry, load_errors=errors, third_party=loaded,
                   info=list(infos.values()))


def collect(pm: pluggy.PluginManager, *, isolate: set[str] = frozenset(),
            errors: list[str] | None = None) -> Registry:
    """Call every registration hook once per plugin, so each name knows its provider.

    A plugin in ``isolate`` that raises while registering is dropped whole (nothing it
    registered stays) and reported in ``errors``; any other plugin's exception propagates.
    """
    reg = Registry()
    staged: list[tuple[str, str, list[Any]]] = []
    for kind in KINDS:
        caller = getattr(pm.hook, f"edgelora_register_{kind}")
        for impl in caller.get_hookimpls():  # registration order
            plugin_name = impl.plugin_name
            if plugin_name in reg.failed:
                continue
            items: list[Any] = []
            try:
                impl.function(register=items.append)
            except Exception as e:
                msg = f"plugin {plugin_name!r} failed in edgelora_register_{kind}: {type(e).__name__}: {e}"
                if plugin_name not in isolate:
                    raise PluginError(msg) from e
                reg.failed[plugin_name] = msg
                if errors is not None:
                    errors.append(msg)
                continue
            staged.append((kind, plugin_name, items))
    for kind, plugin_name, items in staged:
        if plugin_name in reg.failed:
            continue
        for obj in items:
            table = getattr(reg, kind)
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin_name!r}: edgelora_register_{kind} registered {obj!r} without a name")
            if name in table:
                other = reg.providers[(kind, name)]
                raise PluginError(f"{kind[:-1]} {name!r} registered twice: by {other!r} and by {plugin_name!r}")
            table[name] = obj
            reg.providers[(kind, name)] = plugin_name
    return reg


def plugin_version(pm: pluggy.PluginManager, plugin_name: str) -> str:
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == plugin_name:
            return dist.version
    return _edgelora_version()
