"""Run a command with networking off, to prove it needs no network (Linux namespaces)."""

from __future__ import annotations

import subprocess


def no_network_prefix() -> list[str] | None:
    """``unshare`` arguments that run a command in a new network namespace (``-rn`` as an
    unprivileged user, ``-n`` as root), or None where neither works here."""
    for prefix in (["unshare", "-rn"], ["unshare", "-n"]):
        try:
            if subprocess.run(prefix + ["true"], capture_output=True).returncode == 0:
                return prefix
        except FileNotFoundError:
            return None
    return None
