"""The plugin manual: every hook edgelora calls, when, with what, and how results combine.

A plugin is any module or object with functions named like the hooks below and
decorated with :data:`hookimpl`. Third-party plugins are found through the
entry-point group ``edgelora``::

    [project.entry-points.edgelora]
    my_target = "my_package.plugin"

The built-in stages, sources, architectures and targets are default plugins that
use exactly these hooks (see ``edgelora/default_plugins/``).

Registration hooks receive a ``register`` callback. Registering a name that another
plugin already registered raises :class:`edgelora.errors.PluginError` naming both
plugins. The contract only grows: hooks are added, never changed; removals are
deprecated with warnings first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .context import Context
    from .registry import Architecture, Source, Stage, Target

hookspec = pluggy.HookspecMarker("edgelora")
hookimpl = pluggy.HookimplMarker("edgelora")


@hookspec
def edgelora_register_stages(register: Callable[["Stage"], None]) -> None:
    """Register pipeline stages.

    When: once, when the plugin manager is built (every command that runs stages).
    Gets: ``register(stage)``; call it once per :class:`edgelora.registry.Stage`.
    Returns: nothing. Combine: 1:N, every plugin's stages are collected; the runner
    orders them by ``requires``/``produces``. A duplicate stage name is an error.
    """


@hookspec
def edgelora_register_sources(register: Callable[["Source"], None]) -> None:
    """Register base-model sources (where ``[base] source = NAME`` fetches from).

    When: once, when the plugin manager is built.
    Gets: ``register(source)`` taking an :class:`edgelora.registry.Source`.
    Returns: nothing. Combine: 1:N; duplicate source names are an error.
    """


@hookspec
def edgelora_register_architectures(register: Callable[["Architecture"], None]) -> None:
    """Register GGUF architectures the converter can write.

    When: once, when the plugin manager is built (``plan``, ``convert``, ``build``).
    Gets: ``register(arch)`` taking an :class:`edgelora.gguf.architectures.Architecture`.
    Returns: nothing. Combine: 1:N; duplicate names are an error. An HF model whose
    ``config.json`` ``architectures`` no entry claims fails in ``plan``.
    """


@hookspec
def edgelora_register_targets(register: Callable[["Target"], None]) -> None:
    """Register export targets (what ends up in a bundle besides the GGUF, and how
    a bundle is installed on the target host).

    When: once, when the plugin manager is built.
    Gets: ``register(target)`` taking an :class:`edgelora.registry.Target`.
    Returns: nothing. Combine: 1:N; duplicate names are an error.
    """


@hookspec(firstresult=True)
def edgelora_run_stage(stage: "Stage", context: "Context") -> dict[str, Any] | None:
    """Run one stage and return the artifacts it produced.

    When: by the runner, for every stage that is not skipped by the stage cache.
    Gets: the stage and the frozen context holding config and artifacts so far.
    Returns: a dict of artifact name -> value. Combine: first non-None wins; the
    default plugin calls ``stage.run(context)`` last. Use ``wrapper=True`` in your
    hookimpl to time, trace or cache around every stage (yield, then read or
    replace the result).
    """


@hookspec
def edgelora_verify_findings(bundle_dir: str, manifest: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Add findings to a bundle verification.

    When: by ``edgelora verify``, after the built-in file, GGUF and probe checks,
    only for plugins explicitly allowed on the target host (``--allow-plugins``).
    Gets: the (already hash-checked) bundle directory and its parsed manifest.
    Returns: a list of ``{"name": str, "ok": bool, "detail": str}``. Combine: 1:N,
    every list is appended to the report; any ``ok: False`` fails verification.
    """


@hookspec
def edgelora_register_commands(cli: "click.Group") -> None:
    """Add CLI commands.

    When: when the ``edgelora`` command group is built.
    Gets: the root click group; call ``cli.add_command`` or decorate with ``@cli.command``.
    Returns: nothing. Combine: 1:N.
    """
