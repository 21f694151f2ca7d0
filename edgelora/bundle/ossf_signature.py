"""``model.sig``: an OpenSSF model-signing signature (https://github.com/sigstore/model-transparency)
over every file of a bundle folder, so a security team can check the bundle with that
project's own verifier and a public key, offline, without running edgelora's code::

    model_signing verify key --signature BUNDLE_DIR/model.sig --public_key KEY.pub BUNDLE_DIR

The format (model-signing 1.x, "key" method): a Sigstore bundle v0.3 JSON holding a DSSE
envelope whose payload is an in-toto v1 statement with predicate type
``https://model_signing/signature/v1.0``: one resource per file (relative path, sha256), the
subject digest being sha256 over those digests in order. The DSSE pre-authentication encoding
is signed with ECDSA over an EC key on P-256/P-384/P-521 (SHA-256/384/512): the curves that
project accepts for keys; it does not accept Ed25519, which manifest.sig uses. It needs only
``cryptography``; model-signing itself (sigstore, tuf, pydantic, ...) is not a dependency.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from edgelora.util.hashing import sha256_file
from edgelora.errors import SignatureError

MODEL_SIGNATURE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# the model-signing verifier skips these by default; a bundle has none of them
IGNORED = [MODEL_SIGNATURE, ".git", ".gitattributes", ".github", ".gitignore"]
_CURVE_HASH = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}


def load_ec_private_key(path):
    """An unencrypted PEM EC private key on a curve model-signing accepts; SignatureError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise SignatureError(f"{path}: cannot read model-signing key: {e.strerror}") from e
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in _CURVE_HASH:
        raise SignatureError(f"{path}: model-signing needs an ECDSA key on P-256, P-384 or P-521 "
                             "(edgelora keygen KEY --type ecdsa-p256)")
    return key


def _hash_algorithm(public_key):
    from cryptography.hazmat.primitives import hashes

    return getattr(hashes, _CURVE_HASH[public_key.curve.name])()


def public_key_hint(public_key) -> str:
    """model-signing's key hint: sha256 of the PEM SubjectPublicKeyInfo bytes."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature is over."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def folder_resources(folder: Path) -> list[dict]:
    """One {name, algorithm, digest} per regular file under ``folder`` but the ignored names,
    sorted by name; links are refused (model-signing refuses them too)."""
    resources = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        dirnames[:] = sorted(d for d in dirnames if not (rel_dir == Path(".") and d in IGNORED))
        for entry in filenames:
            path = Path(dirpath) / entry
            rel = (rel_dir / entry).as_posix()
            if rel in IGNORED:
                continue
            if path.is_symlink() or not path.is_file():
                raise SignatureError(f"{path}: not a regular file; model.sig covers regular files only")
            resources.append({"name": rel, "algorithm": "sha256", "digest": sha256_file(path)})
    return sorted(resources, key=lambda r: r["name"])


def statement(folder: Path, model_name: str) -> dict:
    resources = folder_resources(folder)
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                              "ignore_paths": IGNORED},
            "resources": resources,
        },
    }


def sign_folder(folder, private_key, *, model_name: str) -> bytes:
    """The model.sig bytes for every file now under ``folder`` (write it there afterwards)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement(Path(folder), model_name), indent=2, sort_keys=True).encode("utf-8")
    sig = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(_hash_algorithm(private_key.public_key())))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": public_key_hint(private_key.public_key())},
                                 "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode("ascii"), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(sig).decode("ascii"), "keyid": ""}]},
    }
    return (json.dumps(bundle, separators=(",", ":")) + "\n").encode("utf-8")
