"""Installing through ``ollama create`` when the Ollama binary is on PATH: same verification
and rollback check as the store path; edgelora keeps its lock and records in its own state
folder (``$EDGELORA_STATE_DIR``, else ``$XDG_STATE_HOME/edgelora``), since Ollama owns the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from edgelora.errors import InstallError
from edgelora.util.files import write_new_file
from edgelora.host.installer import install_record, take_aliases, verify_and_plan
from edgelora.host.store import JOURNAL, Store, store_os_error


def state_store() -> Store:
    """Where edgelora keeps its lock and records when Ollama owns the store."""
    base = os.environ.get("EDGELORA_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "edgelora")
    return Store(base, layout=False)


def install_with_ollama(bundle: Path, ollama: str, *, name=None, allow_downgrade=False, trust=None,
                        run_probes=True, lock_timeout=60.0, log=print, allow_failed_gate=False, quant=None,
                        latest=True) -> dict:
    state = state_store()
    with state.lock(timeout=lock_timeout, log=log):
        staging = state.new_staging()
        try:
            # the same checks as the store path, Modelfile included
            checked = verify_and_plan(bundle, state, staging, name=name, trust=trust, run_probes=run_probes,
                                      allow_downgrade=allow_downgrade, log=log, allow_failed_gate=allow_failed_gate,
                                      quant=quant, latest=latest)
            report, root, manifest, records = checked.report, checked.root, checked.manifest, checked.records
            name_, tag = checked.name, checked.tag
            # the record goes into the journal first: a crash after `ollama create` and before the
            # record is written still leaves rollback protection (rolled forward, unconfirmed)
            record = install_record(manifest, report, name_, tag, "ollama create", [])
            record["aliases"] = [f"{name_}:{t}" for t in checked.aliases[1:]]
            record["modelfile"] = checked.modelfile
            write_new_file(staging / JOURNAL, json.dumps({"blobs": [], "record": {"key": f"{name_}:{tag}",
                                                                                    "value": record}}).encode())
            # the private verified copy, never the bundle the user passed (it may change under us)
            cmd = [ollama, "create", f"{name_}:{tag}", "-f", str(root / checked.modelfile)]
            log(f"running {' '.join(cmd)}")
            try:
                proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=3600)
            except (OSError, subprocess.TimeoutExpired) as e:
                (staging / JOURNAL).unlink()
                raise InstallError(f"ollama create {name_}:{tag}: could not run: {e}") from e
            if proc.returncode != 0:
                lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
                (staging / JOURNAL).unlink()
                raise InstallError(f"ollama create {name_}:{tag} failed (exit {proc.returncode}): "
                                   f"{lines[-1] if lines else 'no output'}; nothing registered")
            for alias in record["aliases"]:  # NAME:latest, so `ollama run NAME` works offline
                cp = subprocess.run([ollama, "cp", f"{name_}:{tag}", alias], capture_output=True, text=True,
                                    timeout=600)
                if cp.returncode != 0:
                    log(f"warning: ollama cp {name_}:{tag} {alias} failed: {(cp.stderr or '').strip()[-200:]}")
                    record["aliases"].remove(alias)
            take_aliases(records, f"{name_}:{tag}", record["aliases"])
            records["models"][f"{name_}:{tag}"] = record
            try:
                state.write_records(records, staging)
                (staging / JOURNAL).unlink()
            except OSError as e:
                subprocess.run([ollama, "rm", f"{name_}:{tag}"], capture_output=True, timeout=600)
                raise store_os_error(e, "writing the install record; the model was removed again", state) from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {name_}:{tag} with ollama create")
    return {"model": f"{name_}:{tag}", "via": "ollama create", "aliases": record["aliases"], "version": manifest["version"],
            "verify": {k: v for k, v in report.items() if k != "manifest"}}
