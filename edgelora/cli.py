"""Thin click layer over :mod:`edgelora.api`: parse, call, render."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .errors import EdgeloraError, PlanError


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def handle_errors(fn):
    """One line per error; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug")
        try:
            return fn(*args, **kwargs)
        except PlanError as e:
            for p in e.problems:
                click.echo(f"problem: {p}", err=True)
            click.echo(f"error: plan found {len(e.problems)} problem(s)", err=True)
            if debug:
                traceback.print_exc()
            sys.exit(e.exit_code)
        except EdgeloraError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # an unexpected failure still gets one line
            if debug:
                traceback.print_exc()
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"error: {type(e).__name__}: {first} (run with --debug for the traceback)", err=True)
            sys.exit(2)

    return wrapper


project_dir = click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
"""The project folder argument shared by every command that works on a project."""


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgelora")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def cli(debug):
    """Fine-tune a pinned base LLM and carry it to an air-gapped Ollama host as a verified bundle."""


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="Project (model) name.")
@click.option("--force", is_flag=True, help="Overwrite an existing edgelora.toml.")
@handle_errors
def init(directory, name, force):
    """Scaffold a project: edgelora.toml (every field documented) and data/."""
    from . import api

    path = api.init_project(directory, name=name, force=force)
    click.echo(f"wrote {path} and {directory / 'data'}/; next: edit it, then `edgelora plan {directory}`")


@cli.command()
@project_dir
@handle_errors
def plan(directory):
    """Check config, data, base model, architecture and targets; report every problem."""
    from . import api

    summary = api.plan(directory)
    for k, v in summary.items():
        click.echo(f"{k:18s} {v}")
    click.echo("plan: ok")


@cli.command()
@project_dir
@click.option("--force", "force", multiple=True, help="Re-run this stage even if cached (repeatable).")
@handle_errors
def build(directory, force):
    """fetch-base → train → merge → convert → quantize → modelfile → bundle → verify."""
    from . import api

    console = _console()
    api.plan(directory, log=console.print)
    result = api.build(directory, force=force, log=console.print, console=console)
    _print_scores(result.get("eval") or {})
    b = result["bundle"]
    click.echo(f"bundle: {b['dir']}\narchive: {b['tar']}\nverify: {'ok' if result['verify_ok'] else 'FAILED'}")


def _print_scores(report: dict) -> None:
    scores = report.get("scores") or {}
    if not scores:
        return
    click.echo(f"task score ({report.get('task')}: all fields exact):")
    for set_name, models in scores.items():
        for model, s in models.items():
            click.echo(f"  {set_name:8s} {model:20s} {s['exact_match']:7.1%}")


@cli.command()
@project_dir
@handle_errors
def fetch(directory):
    """Fetch the pinned base (the only command that may use the network) and pin it in edgelora.lock."""
    from . import api

    base = api.fetch(directory)
    click.echo(f"base: {base['path']} ({len(base['files'])} files, revision {base['revision']})")


def _stage_command(name: str, stage: str, doc: str):
    @project_dir
    @click.option("--force", is_flag=True, help="Re-run even if inputs are unchanged.")
    @handle_errors
    def command(directory, force):
        from . import api

        console = _console()
        ctx = api.run_stages(directory, [stage], force=[stage] if force else [], log=console.print,
                             console=console)
        if stage == "modelfile":
            click.echo(ctx.artifacts["modelfile"]["text"], nl=False)
            return
        for k, v in ctx.artifacts.items():
            if isinstance(v, str):
                click.echo(f"{k}: {v}")

    command.__doc__ = doc
    return cli.command(name)(command)


_stage_command("train", "train", "Train the LoRA adapter for the project (runs fetch and data checks first).")
_stage_command("modelfile", "modelfile", "Render the project's Ollama Modelfile (runs the stages it needs).")


@cli.command()
@click.argument("base", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("adapter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def merge(base, adapter, output):
    """Merge a PEFT LoRA ADAPTER into BASE and write merged safetensors to -o DIR."""
    from . import api

    report = api.merge(base, adapter, output)
    click.echo(json.dumps(report, indent=2, default=str))


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PEFT adapter merged on the fly while converting.")
@click.option("--outtype", type=click.Choice(["f16", "bf16", "f32"]), default="f16", show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the logits comparison against HF.")
@handle_errors
def convert(model_dir, output, adapter, outtype, no_validate):
    """Convert an HF model directory (optionally + adapter) to GGUF, checked against HF logits."""
    from . import api

    report = api.convert(model_dir, output, adapter_dir=adapter, outtype=outtype, validate=not no_validate)
    click.echo(json.dumps(report, indent=2, default=str))


@cli.command()
@click.argument("input_gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "qtype", required=True, help="Quantization type, e.g. Q8_0, Q4_0, Q4_K_M.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def quantize(input_gguf, qtype, output):
    """Quantize a GGUF with llama.cpp's own quantizer."""
    from . import api

    report = api.quantize(input_gguf, output, qtype)
    click.echo(json.dumps(report, indent=2, default=str))


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--no-probes", is_flag=True, help="Only check files; do not load the model.")
@click.option("--allow-plugins", is_flag=True, help="Also run third-party verify plugins (off by default).")
@handle_errors
def verify(bundle, as_json, no_probes, allow_plugins):
    """Verify a bundle (directory or .tar): checksums, GGUF load, recorded probes."""
    from . import api

    report = api.verify(bundle, run_probes=not no_probes, allow_plugins=allow_plugins)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "manifest"}, indent=2, default=str))
    else:
        for c in report["checks"]:
            click.echo(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c.get('detail', '')}")
        click.echo("verify: ok" if report["ok"] else "verify: FAILED")
    sys.exit(0 if report["ok"] else 1)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def plugins_command(as_json):
    """List every registered stage, source, architecture and target, with its plugin."""
    from . import api

    info = api.list_plugins()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for row in info["registered"]:
        click.echo(f"{row['kind']:13s} {row['name']:16s} {row['plugin']:40s} {row['description']}")
    for p in info["third_party"]:
        click.echo(f"plugin        {p['name']} {p['version']} ({p['source']})")
    for err in info["errors"]:
        click.echo(f"broken        {err}")


def _add_plugin_commands():
    try:
        from . import plugins

        plugins.load().pm.hook.edgelora_register_commands(cli=cli)
    except Exception as e:  # a broken plugin never breaks the built-in commands
        click.echo(f"warning: plugin commands not loaded: {e}", err=True)


def main(argv=None):
    # verify and install run on the target host: no third-party code unless allowed.
    if argv is None and len(sys.argv) > 1 and sys.argv[1] not in ("--help", "-h", "--version",
                                                                 "verify", "install"):
        _add_plugin_commands()
    cli.main(args=argv, prog_name="edgelora")


if __name__ == "__main__":
    main()
