"""Installing through ``ollama create`` when the Ollama binary is on PATH: same verification
and rollback check as the store path; edgelora keeps its lock and records in its own state
folder (``$EDGELORA_STATE_DIR``, else ``$XDG_STATE_HOME/edgelora``), since Ollama owns the store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from edgelora.errors import InstallError
from edgelora.host.installer import MODELFILE, install_record, verify_and_plan
from edgelora.host.store import Store, store_os_error


def state_store() -> Store:
    """Where edgelora keeps its lock and records when Ollama owns the store."""
    base = os.environ.get("EDGELORA_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "edgelora")
    return Store(base, layout=False)


def install_with_ollama(bundle: Path, ollama: str, *, name=None, allow_downgrade=False, trust=None,
                        run_probes=True, lock_timeout=60.0, log=print) -> dict:
    state = state_store()
    with state.lock(timeout=lock_timeout, log=log):
        staging = state.new_staging()
        try:
            # the same checks as the store path, Modelfile included
            checked = verify_and_plan(bundle, state, staging, name=name, trust=trust, run_probes=run_probes,
                                      allow_downgrade=allow_downgrade, log=log)
            report, root, manifest, records = checked.report, checked.root, checked.manifest, checked.records
            name_, tag = checked.name, checked.tag
            cmd = [ollama, "create", f"{name_}:{tag}", "-f", str(root / MODELFILE)]
            log(f"running {' '.join(cmd)}")
            try:
                proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise InstallError(f"ollama create {name_}:{tag}: could not run: {e}") from e
            if proc.returncode != 0:
                lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
                raise InstallError(f"ollama create {name_}:{tag} failed (exit {proc.returncode}): "
                                   f"{lines[-1] if lines else 'no output'}; nothing registered")
            records["models"][f"{name_}:{tag}"] = install_record(manifest, report, name_, tag, "ollama create", [])
            try:
                state.write_records(records, staging)
            except OSError as e:
                subprocess.run([ollama, "rm", f"{name_}:{tag}"], capture_output=True, timeout=600)
                raise store_os_error(e, "writing the install record; the model was removed again", state) from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {name_}:{tag} with ollama create")
    return {"model": f"{name_}:{tag}", "via": "ollama create", "version": manifest["version"],
            "verify": {k: v for k, v in report.items() if k != "manifest"}}
