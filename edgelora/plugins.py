"""Loading plugins and collecting what they register.

Default plugins (``edgelora.default_plugins.*``) are always registered first.
Third-party plugins come from the entry-point group ``edgelora``; two environment
variables control them:

- ``EDGELORA_PLUGINS``: comma-separated allow-list of entry-point names; when set,
  only these load. ``EDGELORA_PLUGINS=""`` (set but empty) loads none.
- ``EDGELORA_BLOCK_PLUGINS``: comma-separated names never loaded.

A plugin that fails to import is reported by name (``load_errors``) and skipped, so
one broken plugin never breaks other commands.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

GROUP = "edgelora"
DEFAULT_PLUGINS = (
    "edgelora.default_plugins.sources",
    "edgelora.default_plugins.architectures",
    "edgelora.default_plugins.stages",
    "edgelora.default_plugins.targets",
    "edgelora.default_plugins.runner_hooks",
)


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    registry: Registry
    load_errors: list[str] = field(default_factory=list)
    third_party: list[dict[str, str]] = field(default_factory=list)


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {x.strip() for x in value.split(",") if x.strip()}


def load(*, third_party: bool = True, extra: list[Any] = ()) -> Plugins:
    """Build a plugin manager with the defaults, entry-point plugins and ``extra``."""
    pm = pluggy.PluginManager("edgelora")
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    errors: list[str] = []
    loaded: list[dict[str, str]] = []
    if third_party:
        allow = _env_list("EDGELORA_PLUGINS")
        block = _env_list("EDGELORA_BLOCK_PLUGINS") or set()
        for ep in entry_points(group=GROUP):
            if ep.name in block or (allow is not None and ep.name not in allow):
                continue
            dist = getattr(ep, "dist", None)
            version = dist.version if dist else "?"
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not break the others
                errors.append(f"plugin {ep.name!r} ({ep.value}) failed to import: {type(e).__name__}: {e}")
                continue
            try:
                pm.register(obj, name=ep.name)
            except Exception as e:
                errors.append(f"plugin {ep.name!r} could not be registered: {e}")
                continue
            loaded.append({"name": ep.name, "version": version, "source": ep.value})
    for obj in extra:
        pm.register(obj)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {e.plugin!r}: {e}") from None
    registry = collect(pm)
    return Plugins(pm=pm, registry=registry, load_errors=errors, third_party=loaded)


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook once per plugin, so each name knows its provider."""
    reg = Registry()
    for kind in ("stages", "sources", "architectures", "targets"):
        caller = getattr(pm.hook, f"edgelora_register_{kind}")
        table = getattr(reg, kind)
        for impl in caller.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(obj, _kind=kind, _table=table, _plugin=plugin_name):
                name = obj.name
                if name in _table:
                    other = reg.providers[(_kind, name)]
                    raise PluginError(
                        f"{_kind[:-1]} {name!r} registered twice: by {other!r} and by {_plugin!r}")
                _table[name] = obj
                reg.providers[(_kind, name)] = _plugin

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as e:
                raise PluginError(f"plugin {plugin_name!r} failed in edgelora_register_{kind}: {e}") from e
    return reg


def plugin_version(pm: pluggy.PluginManager, plugin_name: str) -> str:
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == plugin_name:
            return dist.version
    from . import __version__

    return __version__
