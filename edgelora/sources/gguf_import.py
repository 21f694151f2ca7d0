"""GGUF import: dequantize a GGUF into a float32 safetensors base folder, once, cached.

transformers' GGUF reader rebuilds the model and a fast tokenizer from the GGUF's metadata.
The rebuilt tokenizer is not always the one the model was trained with: the GGUF only names
its pre-tokenizer (``tokenizer.ggml.pre``) and transformers may fall back to plain ByteLevel,
which merges digit runs that SmolLM2 splits one digit at a time. For pre-tokenizer names
whose HF equivalent is known we write that equivalent into tokenizer.json, and every import
is then checked against llama.cpp's own tokenization of the original GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgelora.errors import BaseModelError, LockMismatch
from edgelora.util.files import atomic_dir, atomic_write_json
from edgelora.util.hashing import sha256_file

MARKER = "edgelora-import.json"
IMPORTER_VERSION = 1  # bump when the produced files change, so caches are rebuilt

_BYTELEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# llama.cpp pre-tokenizer name -> HF pre_tokenizer. "smollm" (like starcoder/refact) first
# isolates every \p{N} character, then applies the GPT-2 regex: HF's Digits(individual) + ByteLevel.
KNOWN_PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTELEVEL]},
    "starcoder": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTELEVEL]},
    "refact": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _BYTELEVEL]},
    "gpt2": _BYTELEVEL,
}

# Strings on which the HF tokenizer must agree with llama.cpp: digits, whitespace runs,
# punctuation, emoji, CJK, accents, and the chat-template's special tokens.
PROBE_TEXTS = [
    "12345",
    "a  7",          # plain ByteLevel gives [Ġ, Ġ, 7]; SmolLM2 (and llama.cpp) give [ĠĠ, 7]
    "x\n\n5",
    "    1234",
    "½ and ²",
    "Order 66 shipped on 2024-11-05 for $1,299.99",
    "Hello world",
    " leading space and  double  spaces\n\nnew\tlines   ",
    "emoji 🤗🚀 and café, naïve, Größe",
    "中文字符 and 日本語",
    "x=3.14159; y=-42e10 // 0x1F",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def read_gguf_meta(path: str | Path, keys: tuple[str, ...]) -> dict:
    """Selected scalar/string metadata from a GGUF (hash-checked or trusted input only)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for k in keys:
        field = reader.get_field(k)
        if field is None:
            continue
        try:
            out[k] = field.contents()
        except Exception:  # noqa: BLE001 - an unreadable optional key is simply absent
            continue
    return out


def import_gguf(gguf_path: str | Path, dest_dir: str | Path, *, expected_sha256: str | None = None,
               verify_tokenizer: bool = True) -> dict:
    """Dequantize ``gguf_path`` into ``dest_dir`` (float32 safetensors + config + tokenizer).

    Reuses ``dest_dir`` when its marker records the same GGUF sha256 and importer version.
    With ``expected_sha256`` a different file is refused before anything parses it.
    Returns {"source": "gguf", "revision": <gguf sha256>, "path", "files", "gguf", "tokenizer"}.
    """
    gguf_path = Path(gguf_path)
    dest_dir = Path(dest_dir)
    if not gguf_path.is_file():
        raise BaseModelError(f"{gguf_path}: GGUF file not found")
    digest = sha256_file(gguf_path)
    if expected_sha256 and digest != expected_sha256:
        raise LockMismatch(f"{gguf_path}: sha256 expected {expected_sha256}, got {digest}")

    cached = _reuse(dest_dir, digest)
    if cached is not None:
        cached["gguf"] = str(gguf_path)
        return cached

    with atomic_dir(dest_dir) as staging:
        tok_report = _convert(gguf_path, staging)
        if verify_tokenizer:
            tok_report["mismatches"] = compare_with_llama_cpp(gguf_path, staging)
            if tok_report["mismatches"]:
                first = tok_report["mismatches"][0]
                raise BaseModelError(
                    f"{gguf_path}: imported tokenizer differs from llama.cpp's on {first['text']!r} "
                    f"(hf {first['hf']}, llama.cpp {first['llama_cpp']}); "
                    f"pre-tokenizer {tok_report.get('pre')!r} needs a mapping")
        files = _hash_dir(staging)
        marker = {"importer_version": IMPORTER_VERSION, "gguf_sha256": digest,
                  "gguf_name": gguf_path.name, "files": files, "tokenizer": tok_report}
        atomic_write_json(staging / MARKER, marker)
        for p in staging.iterdir():  # staging is created private (0700/0600); the base is not secret
            p.chmod(0o644)
        staging.chmod(0o755)
    return {"source": "gguf", "revision": digest, "path": str(dest_dir), "files": files,
            "gguf": str(gguf_path), "tokenizer": tok_report}


def _hash_dir(root: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(root.iterdir())
            if p.is_file() and p.name != MARKER}


def _reuse(dest_dir: Path, digest: str) -> dict | None:
    marker_path = dest_dir / MARKER
    if not marker_path.is_file():
        return None
    try:
        marker = json.loads(marker_path.read_text())
    except ValueError:
        return None
    if marker.get("gguf_sha256") != digest or marker.get("importer_version") != IMPORTER_VERSION:
        return None
    files = _hash_dir(dest_dir)
    if files != marker.get("files"):
        return None  # edited or damaged: rebuild rather than trust it
    return {"source": "gguf", "revision": digest, "path": str(dest_dir), "files": files,
            "tokenizer": marker.get("tokenizer", {}), "reused": True}


def _convert(gguf_path: Path, out: Path) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = read_gguf_meta(gguf_path, ("tokenizer.ggml.pre", "tokenizer.ggml.model",
                                      "tokenizer.chat_template", "general.architecture"))
    src_dir, name = str(gguf_path.parent), gguf_path.name
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    try:
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, local_files_only=True,
                                                     **dtype_kw)
        tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise BaseModelError(f"{gguf_path}: transformers cannot import this GGUF ({e})") from None
    _save_plain(model, out)
    del model
    return _save_tokenizer(tok, meta, out, int(_cfg_of(out).get("max_position_embeddings") or 8192))


def _save_tokenizer(tok, meta: dict, out: Path, max_length: int) -> dict:
    tok.model_max_length = max_length
    tok.save_pretrained(out)
    report = {"pre": meta.get("tokenizer.ggml.pre"), "model": meta.get("tokenizer.ggml.model"),
              "fixups": []}
    report["fixups"] += fix_pre_tokenizer(out / "tokenizer.json", report["pre"])
    report["fixups"] += fix_chat_template(out, meta.get("tokenizer.chat_template"))
    return report


def import_tokenizer(gguf_path: str | Path, out: str | Path) -> dict:
    """Only the tokenizer files import_gguf would write (no weights are read): ``plan``
    tokenizes the data with it before a fetch. Returns the tokenizer report."""
    from transformers import AutoTokenizer

    from edgelora.gguf.reader import read_metadata

    gguf_path, out = Path(gguf_path), Path(out)
    meta = read_metadata(gguf_path).kv
    ctx_len = meta.get(f"{meta.get('general.architecture')}.context_length")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise BaseModelError(f"{gguf_path}: transformers cannot read this GGUF's tokenizer ({e})") from None
    return _save_tokenizer(tok, meta, out, int(ctx_len or 8192))


def _save_plain(model, out: Path) -> None:
    """Save the dequantized weights as an ordinary float32 checkpoint.

    transformers marks a GGUF-loaded model as quantized ("gguf") and refuses to save it,
    although its tensors are plain float32 by now; so the weights move into a model built
    from the same config minus the quantization marker (meta init: no second copy).
    """
    import torch
    from transformers import AutoModelForCausalLM

    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.rms_norm_eps = _short_float32(getattr(cfg, "rms_norm_eps", None))
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    plain.tie_weights()
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise BaseModelError(f"GGUF import: tensors missing {missing[:3]} or unexpected {unexpected[:3]}")
    plain.save_pretrained(out)
    if getattr(plain, "generation_config", None) is not None:
        plain.generation_config.save_pretrained(out)
    for name in ("config.json", "generation_config.json"):
        _drop_library_version(out / name)


def _drop_library_version(path: Path) -> None:
    """transformers stamps its own version into the JSON it saves; edgelora.lock pins these
    files, so the stamp would turn every transformers upgrade into a lock mismatch."""
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.pop("transformers_version", None) is not None:
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _short_float32(x):
    """GGUF stores floats as float32: 1e-5 comes back as 9.999999747e-06. Restore the
    shortest decimal that rounds to the same float32, which is what the original config said."""
    if not isinstance(x, float):
        return x
    import numpy as np

    return float(repr(np.float32(x)).removeprefix("np.float32(").removesuffix(")"))


def _cfg_of(out: Path) -> dict:
    p = out / "config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def fix_pre_tokenizer(tok_json: Path, pre: str | None) -> list[str]:
    want = KNOWN_PRE_TOKENIZERS.get(pre or "")
    if want is None or not tok_json.is_file():
        return []
    data = json.loads(tok_json.read_text(encoding="utf-8"))
    fixes = []
    if data.get("pre_tokenizer") != want:
        fixes.append(f"pre_tokenizer {_describe(data.get('pre_tokenizer'))} -> {_describe(want)} "
                     f"(tokenizer.ggml.pre={pre})")
        data["pre_tokenizer"] = want
    # A byte-level BPE has no normalizer and needs no byte fallback; transformers' llama
    # converter may carry SentencePiece-style settings over.
    if data.get("normalizer") is not None:
        fixes.append(f"normalizer {_describe(data['normalizer'])} -> none")
        data["normalizer"] = None
    model = data.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        fixes.append("BPE byte_fallback true -> false")
        model["byte_fallback"] = False
    if fixes:
        tok_json.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return fixes


def _describe(pt) -> str:
    if not isinstance(pt, dict):
        return "none"
    if pt.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_describe(p) for p in pt.get("pretokenizers", [])) + "]"
    return str(pt.get("type"))


def fix_chat_template(out: Path, template: str | None) -> list[str]:
    """Keep the chat template in tokenizer_config.json, the one place every reader looks."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    jinja = out / "chat_template.jinja"
    fixes = []
    changed = False
    current = cfg.get("chat_template")
    if current is None and jinja.is_file():
        current = jinja.read_text(encoding="utf-8")
    if current is None and template:
        current = template
        fixes.append("chat_template copied from the GGUF")
    # transformers 5 saves its load kwargs too; a saved local_files_only is noise at best.
    for junk in ("is_local", "local_files_only"):
        if junk in cfg:
            del cfg[junk]
            changed = True
    if current is not None and cfg.get("chat_template") != current:
        cfg["chat_template"] = current
        changed = True
    if changed:
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    if jinja.is_file():
        jinja.unlink()  # one copy only: newer transformers prefer the .jinja file when present
    return fixes


def compare_with_llama_cpp(gguf_path: str | Path, hf_dir: str | Path,
                           texts: list[str] | None = None) -> list[dict]:
    """Tokenize ``texts`` with the HF tokenizer in ``hf_dir`` and with llama.cpp on the GGUF.

    Returns the disagreements (empty when both tokenize identically). Special tokens are
    parsed on both sides; no BOS is added on either side.
    """
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        out = []
        for text in texts or PROBE_TEXTS:
            hf = tok.encode(text, add_special_tokens=False)
            lc = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(hf) != list(lc):
                out.append({"text": text, "hf": list(hf), "llama_cpp": list(lc)})
        return out
    finally:
        if hasattr(llm, "close"):
            llm.close()
