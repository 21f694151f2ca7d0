"""edgelora export target ``llamacpp-server``: serve the bundle's GGUF with llama.cpp's
OpenAI-compatible server (``python -m llama_cpp.server`` from ``llama-cpp-python[server]``).

The bundle gets ``llamacpp-server/launch.sh`` (model path relative to the bundle, context
size from the project, threads from the host) and ``llamacpp-server/<name>.service`` (a
systemd unit running it). No ``--chat_format`` is passed on purpose: llama-cpp-python then
formats chats with the GGUF's own ``tokenizer.chat_template``, the template edgelora proved
equal to the Modelfile's TEMPLATE at build time, and stops on the GGUF's end-of-turn token.
A named format (``chatml``, ...) could differ from it, e.g. in a default system prompt.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from edgelora.hookspecs import hookimpl
from edgelora.registry import Target

__version__ = "0.1.0"
NAME = "llamacpp-server"
FOLDER = "llamacpp-server"
DEFAULT_PORT = 8080
INSTALL_DIR = "/opt/edgelora"
_MARKER = "# written by edgelora-llamacpp-server"


def _num_ctx(ctx) -> int:
    # The Modelfile already holds the context size the project chose; use the same number.
    text = (ctx.artifacts.get("modelfile") or {}).get("text", "")
    m = re.search(r"^PARAMETER num_ctx (\d+)\s*$", text, re.MULTILINE)
    if m:
        return int(m.group(1))
    return ctx.config.ollama.num_ctx or max(2048, ctx.config.data.max_seq_length)


def launch_script(*, name: str, version: str, gguf: str, n_ctx: int, template: str) -> str:
    alias = shlex.quote(f"{name}:{version}")
    return f"""#!/bin/sh
{_MARKER} for {name} {version}
# Serves ./{gguf} with llama.cpp's OpenAI-compatible server on http://$HOST:$PORT/v1
# Needs: pip install "llama-cpp-python[server]"   (edgelora pins llama-cpp-python==0.3.36)
# Chat format: the GGUF's own chat template ({template}), proven equal to the Modelfile's.
# Environment: HOST (default 127.0.0.1), PORT (default {DEFAULT_PORT}), THREADS (default: all cores),
#              PYTHON (default python3).
set -eu
HERE=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
BUNDLE=$(dirname -- "$HERE")
THREADS=${{THREADS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)}}
exec "${{PYTHON:-python3}}" -m llama_cpp.server \\
    --model "$BUNDLE/{gguf}" \\
    --model_alias {alias} \\
    --n_ctx {n_ctx} \\
    --n_threads "$THREADS" \\
    --n_threads_batch "$THREADS" \\
    --host "${{HOST:-127.0.0.1}}" \\
    --port "${{PORT:-{DEFAULT_PORT}}}"
"""


def systemd_unit(*, name: str, version: str, bundle_dir: str) -> str:
    return f"""{_MARKER} for {name} {version}
# Install: copy the bundle to {bundle_dir}, then this file to /etc/systemd/system/edgelora-{name}.service
# (or run the target's install step), then: systemctl daemon-reload && systemctl enable --now edgelora-{name}
[Unit]
Description=llama.cpp OpenAI-compatible server for {name} {version} (edgelora bundle)
After=network.target

[Service]
Type=simple
Environment=HOST=127.0.0.1
Environment=PORT={DEFAULT_PORT}
ExecStart=/bin/sh {bundle_dir}/{FOLDER}/launch.sh
WorkingDirectory={bundle_dir}
Restart=on-failure
DynamicUser=yes
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def export(ctx, staging: Path) -> dict[str, Path]:
    cfg = ctx.config
    name, version = cfg.project.name, cfg.project.version
    first = cfg.export.quantize[0]
    gguf = f"{name}.{first}.gguf"
    if first not in (ctx.artifacts.get("quantized") or {}):
        raise ValueError(f"no quantized GGUF for {first} (artifact 'quantized')")
    template = (ctx.artifacts.get("modelfile") or {}).get("template", "from the GGUF")
    folder = staging / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "launch.sh"
    script.write_text(launch_script(name=name, version=version, gguf=gguf, n_ctx=_num_ctx(ctx), template=template),
                      encoding="utf-8", newline="\n")
    script.chmod(0o755)
    unit = folder / f"edgelora-{name}.service"
    unit.write_text(systemd_unit(name=name, version=version, bundle_dir=f"{INSTALL_DIR}/{name}-{version}"),
                    encoding="utf-8", newline="\n")
    ctx.log(f"{FOLDER}/launch.sh serves {gguf} with n_ctx {_num_ctx(ctx)}")
    return {f"{FOLDER}/launch.sh": script, f"{FOLDER}/{unit.name}": unit}


def _manifest_name(bundle_dir: Path) -> tuple[str, str]:
    import json

    m = json.loads((Path(bundle_dir) / "manifest.json").read_text(encoding="utf-8"))
    return m["name"], m["version"]


def _unit_path(root: Path, name: str) -> Path:
    return Path(root) / "etc" / "systemd" / "system" / f"edgelora-{name}.service"


def install(bundle_dir: Path, root: Path) -> dict:
    """Write the systemd unit under ``root`` with ExecStart pointing at ``bundle_dir``."""
    bundle_dir = Path(bundle_dir).resolve()
    name, version = _manifest_name(bundle_dir)
    if not (bundle_dir / FOLDER / "launch.sh").is_file():
        raise FileNotFoundError(f"{bundle_dir / FOLDER / 'launch.sh'}: bundle was built without this target")
    path = _unit_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(systemd_unit(name=name, version=version, bundle_dir=str(bundle_dir)), encoding="utf-8")
    tmp.replace(path)
    return {"installed": [str(path)]}


def uninstall(bundle_dir: Path, root: Path) -> dict:
    """Remove the unit ``install`` wrote (only if it carries this plugin's marker)."""
    name, _ = _manifest_name(bundle_dir)
    path = _unit_path(root, name)
    if path.is_file() and path.read_text(encoding="utf-8").startswith(_MARKER):
        path.unlink()
        return {"removed": [str(path)]}
    return {"removed": []}


@hookimpl
def edgelora_register_targets(register):
    register(Target(NAME, export, install=install, uninstall=uninstall,
                    description="llama.cpp OpenAI-compatible server: launch script + systemd unit"))
