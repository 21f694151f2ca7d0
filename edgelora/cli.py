"""Thin click layer over :mod:`edgelora.api`: parse, call, render."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgelora import __version__
from edgelora import cli_host
from edgelora.cli_support import EXIT_CODES, handle_errors, make_console, project_dir


class _Group(click.Group):
    def list_commands(self, ctx):
        return list(self.commands)

    def parse_args(self, ctx, args):
        # --debug also after the command (`edgelora build . --debug`), as llm and git-style tools take it
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args = ["--debug"] + [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]
        return super().parse_args(ctx, args)

    def format_commands(self, ctx, formatter):
        # each command's whole first sentence, wrapped in its column; click's default cuts it with "..."
        rows = [(name, cmd.get_short_help_str(limit=10_000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Group, epilog="\b\nExample:\n  edgelora init myproj && edgelora plan myproj && "
             "edgelora build myproj\n\n" + EXIT_CODES)
@click.version_option(__version__, prog_name="edgelora")
@click.option("--debug", is_flag=True, help="Show tracebacks and library warnings (also accepted after the command).")
def cli(debug):
    """Fine-tune a pinned base LLM and carry it to an air-gapped Ollama host as a verified bundle."""
    from edgelora.util.console import quiet_libraries

    quiet_libraries(debug)


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
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (problems still go to stderr).")
@handle_errors
def plan(directory, as_json):
    """Check config, data (tokenized with the base's chat template), base, architecture and targets: every problem.

    What needs the fetched base is listed as `not checked until fetch`.
    """
    from edgelora import api
    from edgelora.pipeline.plan import NOT_UNTIL_FETCH

    summary = api.plan(directory, log=lambda m: click.echo(m, err=True))
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    unchecked = summary.pop(NOT_UNTIL_FETCH, [])
    for k, v in summary.items():
        if k != "warnings":
            click.echo(f"{k:18s} {', '.join(map(str, v)) if isinstance(v, list) else v}")
    for item in unchecked:
        click.echo(f"{'unchecked':18s} {item}: {NOT_UNTIL_FETCH}")
    click.echo("plan: no problems found" + (f"; {len(unchecked)} check(s) wait for `edgelora fetch`"
                                            if unchecked else ""))


@cli.command()
@project_dir
@click.option("--force", "force", multiple=True, metavar="STAGE",
              help="Re-run this stage even if cached (repeatable; `edgelora plugins` lists the stages).")
@click.option("--no-gate", is_flag=True, help="Build the bundle even when an [eval] gate fails (recorded in the manifest).")
@click.option("--with-toolkit", is_flag=True,
              help="Add toolkit/ (edgelora's host-side wheels and install.sh) to the bundle, as [bundle] toolkit = true.")
@click.option("--json", "as_json", is_flag=True, help="Print the build result (bundle, scores, reports) as JSON.")
@handle_errors
def build(directory, force, no_gate, with_toolkit, as_json):
    """Plan, then fetch-base → train → merge → convert → quantize → evaluate → gate → modelfile → bundle → verify.

    Unchanged stages are skipped; --force STAGE re-runs one.
    """
    from edgelora import api

    console = make_console()
    api.plan(directory, log=console.print)
    result = api.build(directory, force=force, log=console.print, console=console, gate=not no_gate,
                       with_toolkit=with_toolkit)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        sys.exit(0 if result["verify_ok"] and all(t.get("ok") for t in (result["bundle"].get("targets") or {}).values())
                 else 1)
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

    console = make_console()
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

        console = make_console()
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

    console = make_console()
    ctx = api.run_stages(directory, ["train"], force=["train"] if (force or resume) else [], log=console.print,
                         console=console, options={"resume": resume, "force": force})
    for k, v in ctx.artifacts.items():
        if isinstance(v, str):
            click.echo(f"{k}: {v}")


_stage_command("modelfile", "modelfile", "Render the project's Ollama Modelfile (runs the stages it needs).")


_json_option = click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")


def _size(n: int) -> str:
    from edgelora.util.files import human_bytes

    return human_bytes(n)


def _report(report: dict, as_json: bool, summary: str) -> None:
    click.echo(json.dumps(report, indent=2, default=str) if as_json else summary)


def _convert_summary(report: dict) -> str:
    conv = report.get("convert", report)
    check = report.get("validation")
    what = (f"{conv['path']}: LoRA GGUF ({conv['lora_pairs']} pairs)" if conv.get("type") == "lora-adapter"
            else f"{conv['path']}: {conv['gguf_arch']} {conv['outtype'].upper()}, {conv['n_tensors']} tensors")
    line = f"{what}, {_size(conv['file_bytes'])} in {conv['seconds']:.1f} s"
    if check:
        logits = check.get("logits", check)
        line += (f"; checked against HF: top-1 agreement {logits['top1_agreement']:.3f}, "
                 f"max |Δlogit| {logits['max_abs_delta']:.3g}")
    return line


@cli.command()
@click.argument("base", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("adapter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@_json_option
@handle_errors
def merge(base, adapter, output, as_json):
    """Merge a PEFT LoRA ADAPTER into BASE and write merged safetensors to -o DIR."""
    from edgelora import api

    report = api.merge(base, adapter, output)
    _report(report, as_json, f"merged {report['merged_tensors']} tensors into {report['path']} "
                             f"({report['tensors']} tensors, {_size(report['bytes'])})")


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
@_json_option
@handle_errors
def convert(model_dir, output, adapter, outtype, no_validate, adapter_only, base_gguf, as_json):
    """Convert an HF model directory (optionally + adapter) to GGUF, checked against HF logits."""
    from edgelora import api

    if adapter_only or base_gguf:
        if adapter is None or not adapter_only:
            raise click.UsageError("--adapter-only needs --adapter DIR; --base-gguf needs --adapter-only")
        report = api.convert_adapter(model_dir, adapter, output, outtype=outtype, validate=not no_validate,
                                     base_gguf=base_gguf)
    else:
        report = api.convert(model_dir, output, adapter_dir=adapter, outtype=outtype, validate=not no_validate)
    _report(report, as_json, _convert_summary(report))


@cli.command()
@click.argument("input_gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "qtype", required=True, help="Quantization type, e.g. Q8_0, Q4_0, Q4_K_M.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--imatrix", "imatrix_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Importance matrix file (GGUF imatrix or legacy .dat); needed by IQ1/IQ2/IQ3_XXS and Q2_K_S.")
@_json_option
@handle_errors
def quantize(input_gguf, qtype, output, imatrix_path, as_json):
    """Quantize a GGUF with llama.cpp's own quantizer."""
    from edgelora import api

    report = api.quantize(input_gguf, output, qtype, imatrix_path=imatrix_path)
    _report(report, as_json, f"{report['out_path']}: {report['qtype']}, {_size(report['in_bytes'])} -> "
                             f"{_size(report['out_bytes'])}{' with importance matrix' if report['imatrix'] else ''} "
                             f"in {report['seconds']:.1f} s")



@cli.command()
@project_dir
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@handle_errors
def clean(directory, dry_run):
    """Remove model files under .edgelora/ that no stage's last run recorded (stale GGUFs, old checkpoints).

    Reports, the fetched base and the stage cache records stay, so unchanged stages are still skipped.
    """
    from edgelora import api

    result = api.clean(directory, dry_run=dry_run)
    for path in result["removed"]:
        click.echo(f"{'would remove' if dry_run else 'removed'} {path}")
    click.echo(f"{'would free' if dry_run else 'freed'} {_size(result['bytes'])} "
               f"({len(result['removed'])} item(s)); the stage cache still skips unchanged stages")


EXAMPLES = {
    "init": "edgelora init support-bot --name support-bot",
    "plan": "edgelora plan support-bot\n  edgelora plan support-bot --json | jq .max_seq_length",
    "build": "edgelora build support-bot\n  edgelora build support-bot --force train --debug",
    "eval": "edgelora eval support-bot --model base --model gguf:Q8_0 --set heldout",
    "fetch": "HF_HUB_OFFLINE=0 edgelora fetch support-bot",
    "train": "edgelora train support-bot\n  edgelora train support-bot --resume",
    "modelfile": "edgelora modelfile support-bot > Modelfile",
    "merge": "edgelora merge base/ adapter/ -o merged/",
    "convert": "edgelora convert merged/ -o model.F16.gguf\n"
               "  edgelora convert base/ --adapter adapter/ --adapter-only -o lora.gguf",
    "quantize": "edgelora quantize model.F16.gguf --type Q4_K_M -o model.Q4_K_M.gguf",
    "verify": "edgelora verify dist/support-bot-0.1.0.tar --trust keys/",
    "keygen": "edgelora keygen keys/release.key",
    "install": "edgelora install support-bot-0.1.0.tar --trust release.key.pub",
    "list": "edgelora list --json",
    "uninstall": "edgelora uninstall support-bot:0.1.0",
    "plugins": "edgelora plugins --json",
    "chat": "edgelora chat dist/support-bot-0.1.0 \"How do I reset my password?\"\n"
            "  edgelora chat model.Q8_0.gguf",
    "clean": "edgelora clean support-bot --dry-run",
    "toolkit": "edgelora toolkit host-kit\n  edgelora toolkit host-kit --python 3.12 --platform manylinux2014_aarch64 --find-links wheels/",
}


for _command in cli_host.COMMANDS:
    cli.add_command(_command)


def _add_examples() -> None:
    """Every --help ends with an example, like llm's and huggingface-cli's."""
    for name, example in EXAMPLES.items():
        command = cli.commands.get(name)
        if command is not None and not command.epilog:
            command.epilog = "\b\nExample" + ("s" if "\n" in example else "") + ":\n  " + example


_add_examples()


def _add_plugin_commands():
    try:
        from edgelora import plugins

        plugins.load().pm.hook.edgelora_register_commands(cli=cli)
    except Exception as e:  # a broken plugin never breaks the built-in commands
        click.echo(f"warning: plugin commands not loaded: {e}", err=True)


TARGET_HOST_COMMANDS = ("verify", "install", "keygen", "list", "uninstall")


def _command_word(args: list[str]) -> str | None:
    """The command named in ``args``, wherever group options (``--debug``) sit before it."""
    return next((a for a in args if not a.startswith("-")), None)


def main(argv=None):
    # verify and install run on the target host: no third-party code unless allowed, whatever
    # the position of the group's flags
    word = _command_word(sys.argv[1:]) if argv is None else None
    if argv is None and word is not None and word not in TARGET_HOST_COMMANDS:
        _add_plugin_commands()
    cli.main(args=argv, prog_name="edgelora")


if __name__ == "__main__":
    main()
