"""Ed25519 signatures over the exact bytes of a bundle's manifest.json.

``manifest.sig`` is one short text line, so that a person can check it by hand with OpenSSL
(the bundle README shows how)::

    edgelora-sig-v1 ed25519 <key id: sha256 of the raw 32-byte public key, hex> <signature, hex>

The key id only picks which trusted key to try; trust comes from the signature verifying
under a key the target host already holds (``--trust KEY.pub`` or a folder of ``*.pub``).
Nothing in the manifest is parsed before this check passes.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgelora.errors import SignatureError, VerifyError

SIG_MAGIC = "edgelora-sig-v1"
MAX_SIG_BYTES = 512
MAX_KEY_BYTES = 4096
MAX_TRUSTED_KEYS = 256
_SIG_LINE = re.compile(rf"{SIG_MAGIC} ed25519 ([0-9a-f]{{64}}) ([0-9a-f]{{128}})\n?")


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    path: str
    public_key: object  # cryptography Ed25519PublicKey


def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()


KEY_TYPES = ("ed25519", "ecdsa-p256")


def generate_keypair(private_path, key_type: str = "ed25519") -> dict:
    """Write a private key (PEM, mode 0600) and ``<private>.pub``; never overwrite.

    ``ed25519`` signs manifest.sig ([bundle] signing_key); ``ecdsa-p256`` signs model.sig, the
    OpenSSF model-signing signature ([bundle] model_signing_key), whose verifier takes EC keys only.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if key_type not in KEY_TYPES:
        raise SignatureError(f"key type {key_type!r}: expected one of {', '.join(KEY_TYPES)}")

    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists() or p.is_symlink():
            raise SignatureError(f"{p}: already exists; refusing to overwrite a key")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate() if key_type == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # O_EXCL: a file appearing between the check and the write is not overwritten either.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            os.write(fd, pub)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        private_path.unlink()
        raise
    if key_type != "ed25519":
        from edgelora.bundle.ossf_signature import public_key_hint

        return {"private": str(private_path), "public": str(public_path), "key_id": public_key_hint(key.public_key()),
                "type": key_type}
    return {"private": str(private_path), "public": str(public_path), "key_id": key_id(key.public_key()),
            "type": key_type}


def load_private_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SignatureError(f"{path}: cannot read signing key: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def _load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgelora.util.files import read_regular

    try:
        data = read_regular(path, MAX_KEY_BYTES)  # never blocks on a FIFO, never follows a link
    except ValueError as e:
        raise VerifyError(f"{path}: cannot read trusted key: {e}") from None
    if data is None:
        raise VerifyError(f"{path}: no such trusted key file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise VerifyError(f"{path}: not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError(f"{path}: not an Ed25519 public key")
    return key


def load_trust(path) -> list[TrustedKey]:
    """Trusted public keys from one ``.pub`` file or every ``*.pub`` in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(".pub") and not p.is_dir())
        if not files:
            raise VerifyError(f"{path}: trust folder holds no *.pub key")
        if len(files) > MAX_TRUSTED_KEYS:
            raise VerifyError(f"{path}: more than {MAX_TRUSTED_KEYS} trusted keys")
    elif path.is_file() or path.is_symlink():
        files = [path]  # read_regular refuses a link
    elif path.exists():
        raise VerifyError(f"{path}: cannot read trusted key: not a regular file refused")
    else:
        raise VerifyError(f"{path}: no such trusted key file or folder")
    keys = []
    for f in files:
        k = _load_public_key(f)
        keys.append(TrustedKey(key_id=key_id(k), path=str(f), public_key=k))
    return keys


def sign_manifest(manifest_bytes: bytes, private_key) -> bytes:
    """The manifest.sig contents for these exact bytes."""
    sig = private_key.sign(manifest_bytes)
    return f"{SIG_MAGIC} ed25519 {key_id(private_key.public_key())} {sig.hex()}\n".encode("ascii")


def check_signature(manifest_bytes: bytes, sig_bytes: bytes | None, trust: list[TrustedKey]) -> str:
    """Raise SignatureError unless ``sig_bytes`` is a valid signature by a trusted key; returns
    a one-line description of who signed."""
    from cryptography.exceptions import InvalidSignature

    if sig_bytes is None:
        raise SignatureError("manifest.sig: missing; unsigned bundles are refused when a trust store is given")
    if len(sig_bytes) > MAX_SIG_BYTES:
        raise SignatureError(f"manifest.sig: larger than {MAX_SIG_BYTES} bytes, malformed")
    try:
        m = _SIG_LINE.fullmatch(sig_bytes.decode("ascii"))
    except UnicodeDecodeError:
        m = None
    if not m:
        raise SignatureError(f"manifest.sig: malformed (expected '{SIG_MAGIC} ed25519 <key id> <signature>')")
    kid, sig_hex = m.group(1), m.group(2)
    matching = [k for k in trust if k.key_id == kid]
    if not matching:
        raise SignatureError(f"manifest.sig: untrusted key {kid[:16]}… (not in the trust store)")
    try:
        matching[0].public_key.verify(bytes.fromhex(sig_hex), manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"manifest.sig: signature failure: manifest.json is not the bytes key {kid[:16]}… "
                             "signed") from None
    return f"signed by trusted key {kid[:16]}… ({Path(matching[0].path).name})"
