"""Thin click layer over :mod:`edgelora.api`: parse, call, render."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

from edgelora import __version__
from edgelora.errors import EdgeloraError, PlanError


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
            from edgelora.util.extras import missing_extra

            if missing_extra(e):  # a build-side command on a host-only install
                click.echo(f"error: {missing_extra(e)}", err=True)
                sys.exit(2)
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
    from edgelora import api

    path = api.init_project(directory, name=name, force=force)
    click.echo(f"wrote {path} and {directory / 'data'}/; next: edit it, then `edgelora plan {directory}`")


@cli.command()
@project_dir
@handle_errors
def plan(directory):
    """Check config, data, base model, architecture and targets; report every problem."""
    from edgelora import api

    summary = api.plan(directory, log=lambda m: click.echo(m, err=True))
    for k, v in summary.items():
        if k != "warnings":
            click.echo(f"{k:18s} {v}")
    click.echo("plan: ok")


@cli.command()
@project_dir
@click.option("--force", "force", multiple=True, help="Re-run this stage even if cached (repeatable).")
@click.option("--no-gate", is_flag=True, help="Build the bundle even when an [eval] gate fails (recorded in the manifest).")
@click.option("--with-toolkit", is_flag=True,
              help="Add toolkit/ (edgelora's host-side wheels and install.sh) to the bundle, as [bundle] toolkit = true.")
@handle_errors
def build(directory, force, no_gate, with_toolkit):
    """fetch-base → train → merge → convert → quantize → evaluate → gate → modelfile → bundle → verify."""
    from edgelora import api

    console = _console()
    api.plan(directory, log=console.print)
    result = api.build(directory, force=force, log=console.print, console=console, gate=not no_gate,
                       with_toolkit=with_toolkit)
    _print_scores((result.get("eval") or {}) | {"gates": (result.get("gates") or {}).get("results")})
    _print_quant_quality(result)
    b = result["bundle"]
    click.echo(f"bundle: {b['dir']}\narchive: {b['tar']}\nverify: {'ok' if result['verify_ok'] else 'FAILED'}")
    failed = {n: t for n, t in (b.get("targets") or {}).items() if not t.get("ok")}
    for name, t in failed.items():
        click.echo(f"target {name}: FAILED: {t.get('error')}", err=True)
    if failed:
        click.echo(f"build: the bundle is complete without the failed target(s) {', '.join(failed)}", err=True)
        sys.exit(1)


def _print_quant_quality(result: dict) -> None:
    from edgelora.quantize.stage import task_scores
    from edgelora.quantize.quality import render_markdown

    report = result.get("quant_quality") or {}
    if report.get("results"):
        click.echo(render_markdown(report, task_scores(result.get("eval"))))


def _print_scores(report: dict) -> None:
    from edgelora.evaluation.runner import headline

    rows = headline(report)
    if not rows:
        return
    click.echo("eval (greedy, on the GGUFs; Δ in points vs base):")
    for r in rows:
        base = "—" if r["base"] is None else f"{r['base']:.1%}"
        tuned = ", ".join(f"{m} {v:.1%}" + ("" if r["base"] is None else f" ({(v - r['base']) * 100:+.1f})")
                          for m, v in r["models"].items() if v is not None)
        click.echo(f"  {r['set']:12s} {r['metric']:12s} base {base:>6s}  {tuned}")
    for g in report.get("gates") or []:
        click.echo(f"  gate {g['set']}/{g['metric']} on {g.get('model')}: {'pass' if g['ok'] else 'FAIL: ' + g['detail']}")
    files = report.get("files") or {}
    if files.get("eval.md"):
        click.echo(f"  details: {files['eval.md']}")


@cli.command("eval")
@project_dir
@click.option("--model", "models", multiple=True, metavar="base|adapter|gguf:QUANT|PATH.gguf",
              help="Model to score (repeatable; default: base and every shipped quantization).")
@click.option("--set", "sets", multiple=True, metavar="NAME",
              help="Eval set to run (repeatable; default: all: heldout, probes, [eval] sets, regression).")
@click.option("--json", "as_json", is_flag=True, help="Print the eval.json report.")
@handle_errors
def eval_command(directory, models, sets, as_json):
    """Score eval sets on the project's models through llama-cpp-python (greedy)."""
    from edgelora import api

    console = _console()
    report = api.evaluate(directory, models=models, sets=sets or None, log=console.print)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_scores(report)


@cli.command()
@project_dir
@handle_errors
def fetch(directory):
    """Fetch the pinned base (the only command that may use the network) and pin it in edgelora.lock."""
    from edgelora import api

    base = api.fetch(directory)
    click.echo(f"base: {base['path']} ({len(base['files'])} files, revision {base['revision']})")


def _stage_command(name: str, stage: str, doc: str):
    @project_dir
    @click.option("--force", is_flag=True, help="Re-run even if inputs are unchanged.")
    @handle_errors
    def command(directory, force):
        from edgelora import api

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


@cli.command("train")
@project_dir
@click.option("--force", is_flag=True, help="Re-run even if inputs are unchanged; with --resume, resume even "
              "though the config or dataset changed since the checkpoint.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint of an interrupted run.")
@handle_errors
def train(directory, force, resume):
    """Train the LoRA adapter for the project (runs fetch and data checks first).

    Under `accelerate launch` (or torchrun) it trains data-parallel on several GPUs.
    """
    from edgelora import api

    console = _console()
    ctx = api.run_stages(directory, ["train"], force=["train"] if (force or resume) else [], log=console.print,
                         console=console, options={"resume": resume, "force": force})
    for k, v in ctx.artifacts.items():
        if isinstance(v, str):
            click.echo(f"{k}: {v}")


_stage_command("modelfile", "modelfile", "Render the project's Ollama Modelfile (runs the stages it needs).")


@cli.command()
@click.argument("base", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("adapter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def merge(base, adapter, output):
    """Merge a PEFT LoRA ADAPTER into BASE and write merged safetensors to -o DIR."""
    from edgelora import api

    report = api.merge(base, adapter, output)
    click.echo(json.dumps(report, indent=2, default=str))


@cli.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--adapter", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="PEFT adapter merged on the fly while converting.")
@click.option("--outtype", type=click.Choice(["f16", "bf16", "f32"]), default="f16", show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip the logits comparison against HF.")
@click.option("--adapter-only", is_flag=True,
              help="Write only the adapter, as a LoRA GGUF sidecar (llama.cpp lora_path) for the base's GGUF.")
@click.option("--base-gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --adapter-only: the base GGUF to validate the sidecar on (default: a temporary one).")
@handle_errors
def convert(model_dir, output, adapter, outtype, no_validate, adapter_only, base_gguf):
    """Convert an HF model directory (optionally + adapter) to GGUF, checked against HF logits."""
    from edgelora import api

    if adapter_only or base_gguf:
        if adapter is None or not adapter_only:
            raise click.UsageError("--adapter-only needs --adapter DIR; --base-gguf needs --adapter-only")
        report = api.convert_adapter(model_dir, adapter, output, outtype=outtype, validate=not no_validate,
                                     base_gguf=base_gguf)
    else:
        report = api.convert(model_dir, output, adapter_dir=adapter, outtype=outtype, validate=not no_validate)
    click.echo(json.dumps(report, indent=2, default=str))


@cli.command()
@click.argument("input_gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "qtype", required=True, help="Quantization type, e.g. Q8_0, Q4_0, Q4_K_M.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--imatrix", "imatrix_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Importance matrix file (GGUF imatrix or legacy .dat); needed by IQ1/IQ2/IQ3_XXS and Q2_K_S.")
@handle_errors
def quantize(input_gguf, qtype, output, imatrix_path):
    """Quantize a GGUF with llama.cpp's own quantizer."""
    from edgelora import api

    report = api.quantize(input_gguf, output, qtype, imatrix_path=imatrix_path)
    click.echo(json.dumps(report, indent=2, default=str))


_trust_option = click.option(
    "--trust", type=click.Path(exists=True, path_type=Path), envvar="EDGELORA_TRUST",
    help="Trusted Ed25519 public key (.pub) or a folder of them: unsigned or wrongly signed bundles are refused.")


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--no-probes", is_flag=True, help="Only check files; do not load the model.")
@click.option("--allow-plugins", is_flag=True, help="Also run third-party verify plugins (off by default).")
@_trust_option
@handle_errors
def verify(bundle, as_json, no_probes, allow_plugins, trust):
    """Verify a bundle (directory or .tar): signature, checksums, GGUF header and load, recorded probes."""
    from edgelora import api
    from edgelora.host.verify import format_report

    report = api.verify(bundle, run_probes=not no_probes, allow_plugins=allow_plugins, trust=trust)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "manifest"}, indent=2, default=str))
    else:
        click.echo(format_report(report))
    sys.exit(0 if report["ok"] else 1)


@cli.command()
@click.argument("key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--type", "key_type", type=click.Choice(["ed25519", "ecdsa-p256"]), default="ed25519", show_default=True,
              help="ed25519 signs manifest.sig ([bundle] signing_key); ecdsa-p256 signs model.sig, the OpenSSF "
                   "model-signing signature ([bundle] model_signing_key).")
@handle_errors
def keygen(key, key_type):
    """Make a key pair: KEY (private, mode 0600) and KEY.pub; never overwrites."""
    from edgelora import api

    out = api.keygen(key, key_type)
    if key_type != "ed25519":
        click.echo(f"private key: {out['private']} (mode 0600; set [bundle] model_signing_key to it)\n"
                   f"public key:  {out['public']} (check model.sig with: model_signing verify key "
                   f"--signature BUNDLE_DIR/model.sig --public_key {out['public']} BUNDLE_DIR)")
        return
    click.echo(f"private key: {out['private']} (mode 0600; set [bundle] signing_key to it)\n"
               f"public key:  {out['public']} (copy to the target host; verify/install --trust it)\n"
               f"key id:      {out['key_id']}")


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Ollama model NAME:TAG (default: the bundle's, else <name>:<version>).")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path),
              help="Write into this Ollama model store instead of running `ollama create` "
                   "(default when ollama is absent: $OLLAMA_MODELS or ~/.ollama/models).")
@click.option("--allow-downgrade", is_flag=True, help="Allow a lower version, or a reused version with other content.")
@click.option("--no-probes", is_flag=True, help="Verify files and GGUF header only; do not load the model.")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another install holding the store lock.")
@_trust_option
@handle_errors
def install(bundle, name, store, allow_downgrade, no_probes, lock_timeout, trust):
    """Verify BUNDLE (folder or .tar), then install it into Ollama atomically."""
    from edgelora import api

    result = api.install(bundle, name=name, store=store, allow_downgrade=allow_downgrade, trust=trust,
                         run_probes=not no_probes, lock_timeout=lock_timeout,
                         log=lambda m: click.echo(m, err=True))
    click.echo(f"installed {result['model']} ({result['via']}); run it with: ollama run {result['model']}")


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--python", "python", metavar="X.Y", help="The host's Python version (default: this one).")
@click.option("--platform", "platform", metavar="TAG",
              help="The host's platform tag, e.g. manylinux_2_28_aarch64 (default: this machine's).")
@click.option("--find-links", "find_links", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Wheelhouse folder searched first (repeatable), e.g. one holding llama-cpp-python built on the host.")
@click.option("--no-download", is_flag=True, help="Never use the network; fail on a wheel found nowhere locally.")
@handle_errors
def toolkit(out_dir, python, platform, find_links, no_download):
    """Write the host toolkit alone: wheels for edgelora's host side, requirements.txt with hashes, install.sh.

    Wheels come from --find-links, pip's wheel cache, this environment's installed copy (same
    Python and platform), and last the package index (`pip download`, the only network use).
    """
    from edgelora import api

    out = api.toolkit(out_dir, python=python, platform=platform, find_links=find_links, download=not no_download,
                      log=lambda m: click.echo(m, err=True))
    click.echo(f"toolkit: {out['dir']} ({len(out['wheels'])} wheels, {out['size_bytes'] / 1e6:.1f} MB); "
               f"on the host: sh {out['dir']}/install.sh [VENV_DIR]")


@cli.command("list")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), help="Ollama model store to read.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def list_command(store, as_json):
    """Models edgelora installed, with their bundle version."""
    from edgelora import api

    rows = api.list_installed(store=store)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models installed by edgelora")
    for r in rows:
        state = "" if r.get("present", True) else "  (manifest missing)"
        click.echo(f"{r['model']:32s} {r['bundle']} {r['version']:10s} {r['via']:14s} {r['installed_at']}{state}")


@cli.command()
@click.argument("model")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), help="Ollama model store.")
@handle_errors
def uninstall(model, store):
    """Remove NAME[:TAG] that edgelora installed; blobs other models use are kept."""
    from edgelora import api

    for key in api.uninstall(model, store=store, log=lambda m: None):
        click.echo(f"uninstalled {key}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def plugins_command(as_json):
    """List every registered stage, source, architecture and target, with its plugin."""
    from edgelora import api

    info = api.list_plugins()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{'plugin':38s} {'version':9s} {'source':12s} registers")
    for p in info["plugins"]:
        what = f"BROKEN: {p['error']}" if p["error"] else (", ".join(p["registers"]) or
                                                           "hooks: " + ", ".join(p["hooks"]))
        click.echo(f"{p['name']:38s} {p['version']:9s} {p['source']:12s} {what}")
    click.echo("")
    click.echo(f"{'kind':13s} {'name':16s} {'plugin':38s} description")
    for row in info["registered"]:
        click.echo(f"{row['kind']:13s} {row['name']:16s} {row['plugin']:38s} {row['description']}")


def _add_plugin_commands():
    try:
        from edgelora import plugins

        plugins.load().pm.hook.edgelora_register_commands(cli=cli)
    except Exception as e:  # a broken plugin never breaks the built-in commands
        click.echo(f"warning: plugin commands not loaded: {e}", err=True)


def main(argv=None):
    # verify and install run on the target host: no third-party code unless allowed.
    if argv is None and len(sys.argv) > 1 and sys.argv[1] not in ("--help", "-h", "--version",
                                                                 "verify", "install",
                                                                 "keygen", "list", "uninstall"):
        _add_plugin_commands()
    cli.main(args=argv, prog_name="edgelora")


if __name__ == "__main__":
    main()
