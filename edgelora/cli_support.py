"""What every command of the CLI shares: exit codes, error rendering, the console, the project argument."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click

from edgelora.errors import EdgeloraError, PlanError

EXIT_CODES = """\b
Exit codes:
  0  success
  1  problems found: config, data, base model, a failed check or target
  2  usage error (unknown option, stage or file kind) or network error
  3  an [eval] gate failed (build --no-gate builds anyway)
  130  interrupted"""

# How many of one error's problems are printed before "... and N more".
SHOWN_PROBLEMS = 50


def make_console():
    from edgelora.util.console import make_console as console_for_output

    return console_for_output()


def echo_problems(problems: list[str]) -> None:
    for p in problems[:SHOWN_PROBLEMS]:
        click.echo(f"problem: {p}", err=True)
    if len(problems) > SHOWN_PROBLEMS:
        click.echo(f"problem: ... and {len(problems) - SHOWN_PROBLEMS} more", err=True)


def handle_errors(fn):
    """One line per error; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug")
        try:
            return fn(*args, **kwargs)
        except PlanError as e:
            echo_problems(e.problems)
            click.echo(f"error: plan found {len(e.problems)} problem(s)", err=True)
            if debug:
                traceback.print_exc()
            sys.exit(e.exit_code)
        except EdgeloraError as e:
            if debug:
                traceback.print_exc()
            if e.problems and len(e.problems) > 1:  # one per line, never one long line
                echo_problems(e.problems)
                click.echo(f"error: {len(e.problems)} problems", err=True)
            else:
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

trust_option = click.option(
    "--trust", type=click.Path(exists=True, path_type=Path), envvar="EDGELORA_TRUST",
    help="Trusted Ed25519 public key (.pub) or a folder of them: unsigned or wrongly signed bundles are refused.")

