"""The commands of the air-gapped host (verify, keygen, install, toolkit, list, uninstall, plugins,
chat): they import no build-side library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgelora.cli_support import handle_errors, trust_option

@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--no-probes", is_flag=True, help="Only check files; do not load the model.")
@click.option("--allow-plugins", is_flag=True, help="Also run third-party verify plugins (off by default).")
@click.option("--allow-failed-gate", is_flag=True, help="Accept a bundle built with --no-gate whose gates failed.")
@trust_option
@handle_errors
def verify(bundle, as_json, no_probes, allow_plugins, trust, allow_failed_gate):
    """Verify a bundle (directory or .tar): signature, checksums, GGUF header and load, recorded probes."""
    from edgelora import api
    from edgelora.host.verify import format_report

    report = api.verify(bundle, run_probes=not no_probes, allow_plugins=allow_plugins, trust=trust,
                        allow_failed_gate=allow_failed_gate)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "manifest"}, indent=2, default=str))
    else:
        click.echo(format_report(report))
    sys.exit(0 if report["ok"] else 1)


@click.command()
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


@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="Ollama model NAME:TAG (default: the bundle's, else <name>:<version>).")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path),
              help="Write into this Ollama model store instead of running `ollama create` "
                   "(default when ollama is absent: $OLLAMA_MODELS or ~/.ollama/models).")
@click.option("--allow-downgrade", is_flag=True, help="Allow a lower version, or a reused version with other content.")
@click.option("--no-probes", is_flag=True, help="Verify files and GGUF header only; do not load the model.")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another install holding the store lock.")
@click.option("--quant", help="Install this quantization (the bundle's Modelfile.QUANT) under its own tag.")
@click.option("--no-latest", is_flag=True, help="Do not point NAME:latest at the installed version.")
@click.option("--allow-failed-gate", is_flag=True, help="Install a bundle built with --no-gate whose gates failed.")
@trust_option
@handle_errors
def install(bundle, name, store, allow_downgrade, no_probes, lock_timeout, quant, no_latest, allow_failed_gate,
            trust):
    """Verify BUNDLE (folder or .tar), then install it into Ollama atomically."""
    from edgelora import api

    result = api.install(bundle, name=name, store=store, allow_downgrade=allow_downgrade, trust=trust,
                         run_probes=not no_probes, lock_timeout=lock_timeout,
                         log=lambda m: click.echo(m, err=True), allow_failed_gate=allow_failed_gate,
                         quant=quant, latest=not no_latest)
    click.echo(f"installed {result['model']} ({result['via']}); run it with: ollama run {result['model']}")


@click.command()
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


@click.command("list")
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


@click.command()
@click.argument("model")
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), help="Ollama model store.")
@handle_errors
def uninstall(model, store):
    """Remove NAME[:TAG] that edgelora installed; blobs other models use are kept."""
    from edgelora import api

    for key in api.uninstall(model, store=store, log=lambda m: None):
        click.echo(f"uninstalled {key}")


@click.command("plugins")
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


@click.command()
@click.argument("model", metavar="MODEL_OR_BUNDLE", type=click.Path(exists=True, path_type=Path))
@click.argument("prompt", required=False)
@click.option("--system", help="System prompt (default: the bundle Modelfile's SYSTEM, if any).")
@click.option("--max-tokens", type=int, default=512, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, help="Sampling temperature (default: the Modelfile's, else 0: greedy).")
@click.option("--ctx", "n_ctx", type=int, help="Context length in tokens (default: the Modelfile's num_ctx, else 4096).")
@trust_option
@handle_errors
def chat(model, prompt, system, max_tokens, temperature, n_ctx, trust):
    """Talk to a built GGUF or a bundle's model offline (its own chat template and stops).

    With PROMPT, answer it and exit; without, chat on the terminal (an empty line or Ctrl-D ends).
    """
    from edgelora import api
    from edgelora.host.chat import ChatSession

    interactive = prompt is None
    if interactive and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()  # piped: one prompt from stdin
        interactive = False
        if not prompt:
            raise click.UsageError("no PROMPT given and stdin is empty")
    with api.open_chat(model, trust=trust) as chat_model:
        session = ChatSession(chat_model, system=system, n_ctx=n_ctx, temperature=temperature)
        try:
            if not interactive:
                for piece in session.reply(prompt, max_tokens=max_tokens):
                    click.echo(piece, nl=False)
                click.echo()
                return
            click.echo(f"chatting with {chat_model.gguf.name} (empty line or Ctrl-D to quit)", err=True)
            while True:
                try:
                    text = click.prompt(">>>", prompt_suffix=" ", default="", show_default=False)
                except (EOFError, click.Abort):
                    break
                if not text.strip():
                    break
                for piece in session.reply(text, max_tokens=max_tokens):
                    click.echo(piece, nl=False)
                click.echo()
        finally:
            session.close()


COMMANDS = [verify, keygen, install, toolkit, list_command, uninstall, plugins_command, chat]
