"""The plugin manual: every hook edgelora calls, when, with what, and how results combine.

A plugin is a module (or any object) with functions named like the hooks below and
decorated with :data:`hookimpl`. Implement only the hooks you need; a function whose
name starts with ``edgelora_`` but matches no hook here is an error at load time
(``check_pending``), so a typo cannot go unnoticed. Third-party plugins are found
through the entry-point group ``edgelora``::

    [project.entry-points.edgelora]
    my-target = "my_package.plugin"

The entry-point name is the plugin's name: ``edgelora plugins`` lists it with its
version and what it registers, ``EDGELORA_PLUGINS`` / ``EDGELORA_BLOCK_PLUGINS`` allow or
block it, and every error about it names it. The built-in stages, sources,
architectures and the Ollama target are default plugins that use exactly these hooks
(``edgelora/default_plugins/``); read them as examples.

Registration hooks (``edgelora_register_*``) receive a ``register`` callback and are
called once per plugin when the plugin manager is built. Registering a name that
another plugin already registered raises :class:`edgelora.errors.PluginError` naming
both plugins. A third-party plugin that raises inside a registration hook is dropped
whole (nothing it registered stays) and reported, so the other commands keep working.

For an export target, :mod:`edgelora.testing` is the contract kit: subclass
``TargetContract`` in your tests and it exports a tiny bundle with your target, checks
the manifest, verifies the bundle and cleans up.

The contract only grows: hooks are added, never changed; a removal is deprecated with
warnings first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from edgelora.context import Context
    from edgelora.gguf.architectures import Architecture
    from edgelora.registry import Source, Stage, Target

hookspec = pluggy.HookspecMarker("edgelora")
hookimpl = pluggy.HookimplMarker("edgelora")

#: A finding added to a bundle verification by :func:`edgelora_verify_findings`.
Finding = dict[str, Any]  # {"name": str, "ok": bool, "detail": str}


@hookspec
def edgelora_register_stages(register: Callable[["Stage"], None]) -> None:
    """Register pipeline stages.

    When: once per plugin, when the plugin manager is built (every command that runs
    stages: ``build``, ``train``, ``modelfile``, ``plan``).
    Gets: ``register(stage)``; call it once per :class:`edgelora.registry.Stage`
    (``name``, ``run(context) -> dict``, ``requires``, ``produces``, ``config_keys``,
    ``plugin_kinds``).
    Returns: nothing; what counts is what you passed to ``register``.
    Combine: 1:N, every plugin's stages are collected; the runner orders them by
    ``requires``/``produces`` (registration order breaks ties) and skips a stage whose
    inputs, config keys (with the content of files they name) and plugin version are
    unchanged, and, for the registries named in ``plugin_kinds`` (the bundle stage:
    ``("targets",)``), the plugins and versions of their entries. A duplicate stage name
    is an error naming both plugins.
    """


@hookspec
def edgelora_register_sources(register: Callable[["Source"], None]) -> None:
    """Register base-model sources (where ``[base] source = NAME`` fetches from).

    When: once per plugin, when the plugin manager is built.
    Gets: ``register(source)`` taking an :class:`edgelora.registry.Source` whose
    ``fetch(base_config, project_dir, dest_dir, download) -> dict`` returns ``path``,
    ``files`` ({relative path: sha256}), ``source`` and ``revision``.
    Returns: nothing.
    Combine: 1:N, all sources are collected; the one named by ``[base] source`` is used.
    Duplicate source names are an error naming both plugins.
    """


@hookspec
def edgelora_register_architectures(register: Callable[["Architecture"], None]) -> None:
    """Register GGUF architectures the converter can write.

    When: once per plugin, when the plugin manager is built (``plan``, ``convert``, ``build``).
    Gets: ``register(arch)`` taking an :class:`edgelora.gguf.architectures.Architecture`.
    Returns: nothing.
    Combine: 1:N; the converter picks the entry that claims the model's ``config.json``
    ``architectures``; an HF model no entry claims fails in ``plan``. Duplicate names are
    an error naming both plugins.
    """


@hookspec
def edgelora_register_targets(register: Callable[["Target"], None]) -> None:
    """Register export targets: files that go into the bundle beside the GGUF (and,
    optionally, how a verified bundle is installed for that target on the host).

    When: once per plugin, when the plugin manager is built.
    Gets: ``register(target)`` taking an :class:`edgelora.registry.Target`. Its
    ``export(context, staging_dir) -> {bundle path: file}`` runs in the ``bundle`` stage,
    in its own process and staging folder, stopped after ``[export] target_timeout_s``;
    writing outside ``staging_dir`` fails it. ``default=True`` targets run in every build,
    the others only when named in ``[export] targets``.
    Returns: nothing.
    Combine: 1:N; every selected target runs, one after another. A target that fails
    (raises, crashes, times out, writes outside its folder, returns a bad path) fails
    alone: the bundle is written without its files and ``manifest.json`` ``targets``
    records the error with the plugin's name. Duplicate names are an error naming both
    plugins.
    """


@hookspec(firstresult=True)
def edgelora_run_stage(stage: "Stage", context: "Context") -> dict[str, Any] | None:
    """Run one stage and return the artifacts it produced.

    When: by the runner, for every stage the stage cache does not skip, in order.
    Gets: the stage and the frozen context holding the config and the artifacts so far.
    Returns: a dict of artifact name -> value (JSON-serialisable; paths as absolute
    strings), holding at least every name in ``stage.produces``; or None to let the
    next implementation run it.
    Combine: first non-None wins; the default plugin calls ``stage.run(context)`` last.
    Use ``@hookimpl(wrapper=True)`` to time, trace or cache around every stage:
    ``result = yield`` gives the artifacts, return them (or a replacement).
    """


@hookspec
def edgelora_verify_findings(bundle_dir: str, manifest: dict[str, Any]) -> list[Finding] | None:
    """Add findings to a bundle verification.

    When: by ``edgelora verify``, after the built-in file, GGUF and probe checks, and
    only with ``--allow-plugins`` (the target host runs no third-party code by default).
    Gets: the folder of the verified private copy of the bundle (written and hash-checked by
    edgelora; a folder also when a .tar was verified) and its parsed manifest.
    Returns: a list of ``{"name": str, "ok": bool, "detail": str}``, or None for nothing.
    Combine: 1:N, every plugin's list is appended to the report; any ``ok: False``
    fails the verification.
    """


@hookspec
def edgelora_register_commands(cli: "click.Group") -> None:
    """Add CLI commands.

    When: when the ``edgelora`` command group is built, for every command except
    ``verify`` and ``install`` (which run on the target host without third-party code).
    Gets: the root click group; call ``cli.add_command(cmd)`` or decorate with ``@cli.command()``.
    Returns: nothing.
    Combine: 1:N, every plugin adds its commands; a plugin failing here only loses its
    own commands (a warning is printed).
    """
