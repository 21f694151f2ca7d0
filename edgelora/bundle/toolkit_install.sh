#!/bin/sh
# edgelora host toolkit: install edgelora's host side (verify, install, list, uninstall) with no
# network, from the wheels beside this script.
#
#   sh toolkit/install.sh [VENV_DIR]     VENV_DIR defaults to ./edgelora-venv
#
# Needs python3 (>= 3.10, with the venv module) of the Python version and platform the toolkit
# was made for. Nothing is installed unless every check passes; on failure VENV_DIR is removed.
# With EDGELORA_TRUST=KEY.pub (the publisher's Ed25519 key, the one `edgelora verify` trusts),
# the bundle's manifest.sig is checked with OpenSSL first, so the wheels are trusted only
# through a signature.
set -eu
TOOLKIT=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
VENV=${1:-./edgelora-venv}
PY=${PYTHON:-python3}
fail() { echo "install.sh: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || fail "$PY not found; install Python 3 with its venv module first"
[ -e "$VENV" ] && fail "$VENV already exists; name a new folder: sh $0 VENV_DIR"

BUNDLE=$(CDPATH='' cd -- "$TOOLKIT/.." && pwd)
if [ -n "${EDGELORA_TRUST:-}" ]; then
  [ -f "$EDGELORA_TRUST" ] || fail "EDGELORA_TRUST=$EDGELORA_TRUST: not a public key file"
  [ -f "$BUNDLE/manifest.sig" ] || fail "manifest.sig: missing, and EDGELORA_TRUST asks for a signed bundle; nothing installed"
  command -v openssl >/dev/null 2>&1 || fail "openssl not found; it checks manifest.sig before anything is installed"
  SIGBIN=$(mktemp)
  "$PY" -c 'import sys; f = open(sys.argv[1]).read().split(); open(sys.argv[2], "wb").write(bytes.fromhex(f[3]))' \
      "$BUNDLE/manifest.sig" "$SIGBIN" 2>/dev/null || { rm -f "$SIGBIN"; fail "manifest.sig: malformed; nothing installed"; }
  if ! openssl pkeyutl -verify -pubin -inkey "$EDGELORA_TRUST" -rawin -in "$BUNDLE/manifest.json" \
      -sigfile "$SIGBIN" >/dev/null 2>&1; then
    rm -f "$SIGBIN"
    fail "manifest.sig: not a signature of manifest.json by $EDGELORA_TRUST; nothing installed"
  fi
  rm -f "$SIGBIN"
fi

# Before anything is installed: every requirement pinned by sha256, every wheel present and equal
# to its pin, no stray wheel, and inside a bundle every toolkit file listed in manifest.json with
# the same sha256 (so manifest.sig covers it).
"$PY" - "$TOOLKIT" <<'CHECK' || exit 1
import hashlib, json, os, re, sys

toolkit = sys.argv[1]
name = os.path.basename(toolkit)


def fail(msg):
    print(f"install.sh: {msg}; nothing installed", file=sys.stderr)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


line_re = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})")
req_path = os.path.join(toolkit, "requirements.txt")
if not os.path.isfile(req_path):
    fail(f"{name}/requirements.txt: missing")
pins = []
with open(req_path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        m = line_re.fullmatch(text)
        if not m:
            fail(f"{name}/requirements.txt:{n}: expected NAME==VERSION --hash=sha256:<64 hex>, got {text[:70]!r}")
        pins.append(m.groups())
wheel_dir = os.path.join(toolkit, "wheels")
if not os.path.isdir(wheel_dir):
    fail(f"{name}/wheels: missing")
present = {}
for entry in sorted(os.listdir(wheel_dir)):
    path = os.path.join(wheel_dir, entry)
    if os.path.islink(path) or not os.path.isfile(path):
        fail(f"{name}/wheels/{entry}: not a regular file")
    present[sha256(path)] = entry
pinned = {digest for _, _, digest in pins}
for req, version, digest in pins:
    if digest not in present:
        fail(f"{name}/wheels: no wheel with the sha256 requirements.txt pins for {req}=={version} (missing or changed)")
for digest, entry in present.items():
    if digest not in pinned:
        fail(f"{name}/wheels/{entry}: not pinned in requirements.txt (changed or extra)")

manifest_path = os.path.join(toolkit, os.pardir, "manifest.json")
if os.path.isfile(manifest_path):
    with open(manifest_path, encoding="utf-8") as f:
        listed = {e["path"]: e["sha256"] for e in json.load(f)["files"]}
    on_disk = set()
    for folder, _, files in os.walk(toolkit):
        for entry in files:
            path = os.path.join(folder, entry)
            arc = os.path.relpath(path, os.path.join(toolkit, os.pardir)).replace(os.sep, "/")
            on_disk.add(arc)
            if arc not in listed:
                fail(f"{arc}: not listed in manifest.json, so the bundle's signature does not cover it")
            if sha256(path) != listed[arc]:
                fail(f"{arc}: sha256 differs from manifest.json")
    absent = sorted(p for p in listed if p.startswith(name + "/") and p not in on_disk)
    if absent:
        fail(f"{absent[0]}: listed in manifest.json but missing")
CHECK

"$PY" -m venv "$VENV" >/dev/null 2>&1 || { rm -rf "$VENV"; fail "$PY -m venv $VENV failed (Debian/Ubuntu: apt install python3-venv)"; }
LOG="$VENV/pip-install.log"
# Only these wheels: no index, no user or site pip configuration, every hash required.
if ! PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --isolated --no-index --require-hashes \
    --only-binary=:all: --no-cache-dir --disable-pip-version-check \
    --find-links "$TOOLKIT/wheels" -r "$TOOLKIT/requirements.txt" >"$LOG" 2>&1; then
  why=$(grep -m1 '^ERROR' "$LOG" || tail -n1 "$LOG")
  rm -rf "$VENV"
  fail "pip refused: $why; nothing installed"
fi
VERSION=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('edgelora'))")
echo "installed edgelora $VERSION into $VENV"
echo "next: $VENV/bin/edgelora verify BUNDLE.tar --trust KEY.pub"
echo "      $VENV/bin/edgelora install BUNDLE.tar --trust KEY.pub"
