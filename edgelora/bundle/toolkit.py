"""The host toolkit: the wheels that install edgelora's host side on an air-gapped machine.

``toolkit/`` holds ``wheels/`` (edgelora and every host-side dependency, exact versions from
this environment), ``requirements.txt`` (one ``NAME==VERSION --hash=sha256:...`` line per
wheel, for pip's ``--require-hashes``), ``install.sh`` and a README. In a bundle every one of
these files is in manifest.json, so manifest.sig covers the tools as well as the model.

Where each wheel comes from, first that works: a wheelhouse the caller names
(``find_links``), pip's wheel cache (llama-cpp-python, compiled from source, lands there),
the distribution installed here rebuilt from its RECORD (same Python and platform only; see
:mod:`edgelora.bundle.wheel_repack`), and last the package index with ``pip download``, the only
step that uses the network, and only when ``download`` is true (the ``edgelora toolkit``
command and ``[bundle] toolkit``). A wheel that none can provide is reported with the reason;
no toolkit folder is written then.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgelora.util.files import atomic_dir, human_bytes
from edgelora.util.hashing import sha256_file
from edgelora.errors import EdgeloraError

TOOLKIT_DIR = "toolkit"
INSTALL_SCRIPT = "install.sh"
REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
_SCRIPT_SOURCE = Path(__file__).resolve().parent / "toolkit_install.sh"
# sdist-only on PyPI: no binary to download for another platform; it is compiled where it runs
_COMPILED_ON_TARGET = {"llama-cpp-python"}
_LINUX_TAG = re.compile(r"(?:manylinux|musllinux)_(\d+)_(\d+)_(.+)|manylinux(?:2014|2010|1)_(.+)|linux_(.+)")


class ToolkitError(EdgeloraError):
    """The toolkit cannot be assembled (a wheel no source provides, a failed build)."""


@dataclass(frozen=True)
class Target:
    """The host's Python (``X.Y``) and platform tag (None: the same as this machine)."""

    python: str
    platform: str | None = None

    @property
    def is_here(self) -> bool:
        return self.platform is None and self.python == f"{sys.version_info[0]}.{sys.version_info[1]}"

    def platforms(self) -> list[str]:
        """The platform tags a wheel for this target may carry (manylinux_2_28 also runs 2_17 wheels)."""
        m = _LINUX_TAG.fullmatch(self.platform or "")
        if not m or not m.group(1):
            return [self.platform] if self.platform else []
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        kind = self.platform.split("_", 1)[0]
        tags = [f"{kind}_{major}_{m_}_{arch}" for m_ in range(minor, -1 if kind == "musllinux" else 16, -1)]
        if kind == "manylinux" and minor >= 17:
            tags.append(f"manylinux2014_{arch}")
        return tags + [f"linux_{arch}"]

    def tags(self) -> set:
        from packaging import tags

        if self.is_here:
            return set(tags.sys_tags())
        version = tuple(int(x) for x in self.python.split("."))
        platforms = self.platforms()
        return set(tags.cpython_tags(version, platforms=platforms)) | set(
            tags.compatible_tags(version, platforms=platforms))

    def marker_env(self) -> dict:
        from packaging.markers import default_environment

        env = dict(default_environment())
        env["python_version"] = self.python
        if self.python != env["python_full_version"].rsplit(".", 1)[0]:
            env["python_full_version"] = f"{self.python}.0"
        if self.platform:
            m = _LINUX_TAG.fullmatch(self.platform)
            if m:
                env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
                           platform_machine=next(g for g in m.groups()[2:] if g))
            elif self.platform.startswith("macosx"):
                env.update(sys_platform="darwin", platform_system="Darwin", os_name="posix",
                           platform_machine=self.platform.rsplit("_", 1)[-1])
            elif self.platform.startswith("win"):
                env.update(sys_platform="win32", platform_system="Windows", os_name="nt",
                           platform_machine="AMD64" if "amd64" in self.platform else self.platform)
        return env


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    path: Path
    source: str  # wheelhouse, pip cache, built from source, repacked from the installed copy, downloaded


# ---- which distributions, at which versions ------------------------------------------------------


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = zf.read(meta).decode("utf-8")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def resolve_pins(requirements: list[str], target: Target) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Exact versions for the closure of ``requirements`` (no extras) on ``target``, taken from
    the distributions installed in this environment. Returns ({name: version}, [(req, why)])."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = target.marker_env()
    pins: dict[str, str] = {}
    missing: list[tuple[str, str]] = []
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop(0))
        if req.marker is not None and not req.marker.evaluate(env | {"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append((str(req), "not installed in this environment, so no version to pin"))
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            missing.append((str(req), f"installed version {dist.version} does not satisfy it"))
            continue
        pins[name] = dist.version
        todo.extend(dist.requires or ())
    return pins, missing


# ---- where each wheel comes from -----------------------------------------------------------------


def pip_wheel_cache() -> Path | None:
    """pip's cache of wheels it built (``pip cache dir``/wheels), or None."""
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    path = Path(out.stdout.strip()) / "wheels" if out.returncode == 0 and out.stdout.strip() else None
    return path if path and path.is_dir() else None


def find_local_wheel(name: str, version: str, target: Target, folders: list[Path]) -> Path | None:
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import Version

    wanted, accepted = canonicalize_name(name), target.tags()
    for folder in folders:
        for path in sorted(folder.rglob("*.whl")):
            try:
                wname, wversion, _, wtags = parse_wheel_filename(path.name)
            except InvalidWheelFilename:
                continue
            if wname == wanted and wversion == Version(version) and wtags & accepted:
                return path
    return None


def download_wheel(name: str, version: str, target: Target, dest: Path) -> tuple[Path | None, str]:
    """``pip download`` one binary wheel (network: the package index); (path, why-not)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           "--disable-pip-version-check", f"{name}=={version}"]
    if not target.is_here:
        cmd += ["--implementation", "cp", "--python-version", target.python]
        for p in target.platforms():
            cmd += ["--platform", p]
    before = set(dest.glob("*.whl"))
    out = subprocess.run(cmd, capture_output=True, text=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if out.returncode == 0 and new:
        return new[0], ""
    last = next((line for line in reversed(out.stderr.splitlines()) if line.startswith("ERROR")), "")
    why = f"no binary wheel on the package index for Python {target.python} {target.platform or 'here'}"
    if name in _COMPILED_ON_TARGET:
        why += (f"; it is compiled from source: on (or for) the host run `pip wheel --no-deps {name}=={version}` "
                "and pass the folder holding the wheel with --find-links")
    return None, why + (f" (pip: {last})" if last else "")


def build_edgelora_wheel(dest: Path, source: Path | None = None, *, download: bool = False) -> Path:
    """``pip wheel`` of edgelora's source tree, in a copy so the checkout stays clean: with this
    environment's setuptools (offline), or, with ``download``, pip's isolated build environment."""
    from edgelora.util.resources import repo_root

    source = source or repo_root()
    if not (source / "pyproject.toml").is_file() or 'name = "edgelora"' not in (source / "pyproject.toml").read_text():
        raise ToolkitError(f"{source}: no edgelora source tree to build the edgelora wheel from; "
                           "pass a wheelhouse holding edgelora's wheel with --find-links")
    with tempfile.TemporaryDirectory(prefix="edgelora-src-") as tmp:
        copy = Path(tmp) / "src"
        keep = {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "Modelfile.j2", "edgelora", "templates"}
        copy.mkdir()
        for item in keep:
            src = source / item
            if src.is_dir():
                shutil.copytree(src, copy / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_shipped"))
            elif src.is_file():
                shutil.copy2(src, copy / item)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest),
               str(copy)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0 and download:
            out = subprocess.run([c for c in cmd if c != "--no-build-isolation"], capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ToolkitError(f"pip wheel of {source} failed (needs setuptools>=68 installed): {last}")
    built = sorted(dest.glob("edgelora-*.whl"))
    if not built:
        raise ToolkitError(f"pip wheel of {source} wrote no edgelora wheel")
    return built[-1]


def _repack_for(name: str, target: Target, dest: Path) -> tuple[Path | None, str]:
    """The installed copy rebuilt as a wheel, if that wheel runs on ``target`` (always here; a
    pure-Python one anywhere); (None, why) otherwise."""
    from packaging.utils import parse_wheel_filename

    from edgelora.bundle.wheel_repack import RepackError, repack_installed

    with tempfile.TemporaryDirectory(prefix="edgelora-repack-", dir=dest) as tmp:
        try:
            wheel = repack_installed(name, Path(tmp))
        except RepackError as e:
            return None, str(e)
        if not parse_wheel_filename(wheel.name)[3] & target.tags():
            why = f"the installed copy is built for this machine ({wheel.name})"
            if name in _COMPILED_ON_TARGET:
                why += (f"; {name} is compiled from source: on (or for) the host run `pip wheel --no-deps "
                        f"{name}=={metadata.version(name)}` and pass the folder holding the wheel with --find-links")
            return None, why
        return Path(shutil.move(wheel, dest / wheel.name)), ""


def collect_wheels(dest: Path, target: Target, *, find_links=(), download: bool = False,
                   log=print) -> tuple[list[Wheel], list[tuple[str, str]]]:
    """Every wheel the host side needs into ``dest``; returns (wheels, [(requirement, why)])."""
    from packaging.utils import parse_wheel_filename

    folders = [Path(f) for f in find_links]
    own = find_local_wheel("edgelora", metadata.version("edgelora"), target, folders) if folders else None
    if own is None:
        own, own_source = build_edgelora_wheel(dest, download=download), "built from source"
    else:
        own_source = "wheelhouse"
        own = Path(shutil.copy2(own, dest / own.name))
    _, own_version, _, _ = parse_wheel_filename(own.name)
    wheels = [Wheel("edgelora", str(own_version), own, own_source)]
    pins, missing = resolve_pins(wheel_requirements(own), target)
    cache = pip_wheel_cache()
    for name, version in sorted(pins.items()):
        found = find_local_wheel(name, version, target, folders)
        source = "wheelhouse"
        if found is None and cache is not None:
            found, source = find_local_wheel(name, version, target, [cache]), "pip cache"
        if found is not None:
            wheels.append(Wheel(name, version, Path(shutil.copy2(found, dest / found.name)), source))
            continue
        repacked, why = _repack_for(name, target, dest)
        if repacked is not None:
            wheels.append(Wheel(name, version, repacked, "repacked from the installed copy"))
            continue
        if download:
            got, why = download_wheel(name, version, target, dest)
            if got is not None:
                wheels.append(Wheel(name, version, got, "downloaded"))
                continue
        else:
            why += "; not in a wheelhouse or pip's cache, and downloading is off"
        missing.append((f"{name}=={version}", why))
    for w in wheels:
        log(f"  toolkit: {w.path.name} ({w.source})")
    return wheels, missing


# ---- the folder ----------------------------------------------------------------------------------


def requirements_text(wheels: list[Wheel]) -> str:
    lines = ["# edgelora host toolkit: every wheel pinned to its exact version and sha256.",
             "# install.sh runs: pip install --no-index --require-hashes --find-links wheels -r requirements.txt"]
    lines += [f"{w.name}=={w.version} --hash=sha256:{sha256_file(w.path)}" for w in wheels]
    return "\n".join(lines) + "\n"


def readme_text(wheels: list[Wheel], target: Target) -> str:
    rows = "\n".join(f"| {w.path.name} | {w.source} | {human_bytes(w.path.stat().st_size)} |" for w in wheels)
    return f"""# edgelora host toolkit

Installs edgelora's host side (verify, install, list, uninstall) with no network, for
Python {target.python} on {target.platform or 'the platform it was built on'}:

    EDGELORA_TRUST=KEY.pub sh toolkit/install.sh [VENV_DIR]   # default ./edgelora-venv

install.sh refuses, before installing anything: with EDGELORA_TRUST (the publisher's Ed25519
public key), a bundle whose manifest.sig does not verify (OpenSSL); a requirements line
without a sha256; a wheel that is missing or differs from its pinned hash; and (inside a
bundle) a toolkit file that manifest.json does not list with the same sha256. The signed
manifest is what makes these wheels trustworthy.

| wheel | from | size |
|---|---|---|
{rows}
"""


def write_toolkit(out_dir, *, python: str | None = None, platform: str | None = None, find_links=(),
                  download: bool = False, log=print) -> dict:
    """Write the toolkit folder at ``out_dir`` atomically; ToolkitError naming every wheel that no
    source could provide (nothing is written then). Returns {dir, wheels, size_bytes}."""
    if python is not None and not re.fullmatch(r"3\.\d{1,2}", python):
        raise ToolkitError(f"--python {python!r}: expected the host's Python as X.Y, e.g. 3.11")
    if platform is not None and not re.fullmatch(r"[a-z0-9_]+", platform):
        raise ToolkitError(f"--platform {platform!r}: expected a wheel platform tag, e.g. manylinux_2_28_aarch64")
    target = Target(python or f"{sys.version_info[0]}.{sys.version_info[1]}", platform)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging:
        wheel_dir = staging / WHEELS
        wheel_dir.mkdir()
        wheels, missing = collect_wheels(wheel_dir, target, find_links=find_links, download=download, log=log)
        if missing:
            raise ToolkitError(f"toolkit for Python {target.python} {target.platform or '(this platform)'}: "
                               f"{len(missing)} wheel(s) not provided: "
                               + "; ".join(f"{req}: {why}" for req, why in missing))
        (staging / REQUIREMENTS).write_text(requirements_text(wheels), encoding="utf-8", newline="\n")
        shutil.copyfile(_SCRIPT_SOURCE, staging / INSTALL_SCRIPT)
        os.chmod(staging / INSTALL_SCRIPT, 0o755)
        (staging / "README.md").write_text(readme_text(wheels, target), encoding="utf-8", newline="\n")
        os.chmod(staging, 0o755)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return {"dir": str(out_dir), "size_bytes": size,
            "wheels": [{"file": w.path.name, "name": w.name, "version": w.version, "source": w.source}
                       for w in wheels]}


def toolkit_files(folder: Path, prefix: str = TOOLKIT_DIR) -> dict[str, Path]:
    """The bundle entries (``toolkit/...`` -> file) of a toolkit folder."""
    folder = Path(folder)
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p for p in sorted(folder.rglob("*")) if p.is_file()}
