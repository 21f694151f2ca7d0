"""Typed project configuration, loaded from ``edgelora.toml``.

Every field carries a help string (``metadata["help"]``); ``edgelora init`` writes
them into the scaffolded file as comments, so the file documents itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from edgelora.data.rehearsal import DEFAULTS as REHEARSAL_DEFAULTS
from edgelora.errors import ConfigError

CONFIG_NAME = "edgelora.toml"


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ProjectConfig:
    name: str = _f("my-model", "Model name: bundle is dist/<name>-<version>/, lower-case letters, digits, '-', '_', '.'.")
    version: str = _f("0.1.0", "Bundle version (semantic version); install refuses to go backwards.")


@dataclass(frozen=True)
class BaseConfig:
    source: str = _f("embedded", "Where the base model comes from: a registered source, built in 'embedded', 'local', 'hf', 'gguf' (`edgelora plugins` lists all).")
    name: str = _f("smollm2-135m-instruct", "For source='embedded': which embedded model.")
    path: str = _f("", "For source='local' (a directory) or 'gguf' (a .gguf file): path, relative to the project.")
    repo: str = _f("", "For source='hf': the Hugging Face repo id, e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct'.")
    revision: str = _f("", "For source='hf': the exact 40-hex commit; branches and tags are refused.")


@dataclass(frozen=True)
class DataConfig:
    train: str | list = _f("data/train.jsonl", "Data file (.jsonl/.json/.parquet), folder, glob, or a list of them: "
                           "chat 'messages', ShareGPT 'conversations', Alpaca, prompt/completion or 'text'.")
    heldout: str = _f("", "Optional held-out JSONL; when empty, eval_fraction of train is held out.")
    eval_fraction: float = _f(0.1, "Share of train held out for eval loss when no held-out file is given.")
    probes: str = _f("", "Optional JSONL of differently phrased conversations, scored like held-out.")
    mix: list = _f([], "General instruction data mixed into training against forgetting: "
                   "[{path = \"data/general.jsonl\", ratio = 0.1}] adds round(ratio * train examples) of it, seeded.")
    rehearsal: dict = _f(dict(REHEARSAL_DEFAULTS), "Forgetting guard for chat fine-tunes: the base answers edgelora's general prompts "
                         "itself (greedy, offline) and round(ratio * train examples) of those conversations are "
                         "mixed in; {ratio = 0} turns it off, max_tokens caps each answer.")
    max_seq_length: int = _f(0, "Tokens per example (0: fit the data: the longest example rounded up to a multiple of "
                             "64, capped by the model's context). Longer examples are truncated.")
    allow_truncation: bool = _f(False, "Build even when more than 5% of examples are truncated or some lose every "
                                "assistant token to truncation (plan and build stop otherwise).")
    seed: int = _f(0, "Seed for the held-out split and shuffling.")
    near_duplicate_threshold: float = _f(0.85, "Drop examples whose word 3-grams overlap an earlier one this much (MinHash Jaccard; 0: off).")


@dataclass(frozen=True)
class TrainConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha; the merge scale is alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = _f(0.0, "LoRA dropout (0: no random masks, the faster step; the usual recipe's is 0.05).")
    target_modules: list = _f(["all-linear"], "Modules to adapt; 'all-linear' means every Linear but lm_head.")
    learning_rate: float = _f(2e-4, "Peak learning rate (cosine schedule with warmup).")
    epochs: int = _f(3, "Passes over the training data (2-4 is the usual advice).")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: no limit).")
    max_seconds: int = _f(0, "Stop training cleanly after this many seconds (0: no limit).")
    batch_size: int = _f(8, "Micro-batch size.")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up the learning rate.")
    eval_every: int = _f(20, "Eval loss every N optimizer steps; the best adapter by eval loss is kept.")
    early_stop: int = _f(3, "Stop once eval loss stayed above its best for this many evals in a row (0: never).")
    packing: bool = _f(True, "Pack examples padding-free into rows of max_seq_length tokens (no cross-example attention).")
    save_every: int = _f(0, "Write a resumable checkpoint every N steps (0: at every eval).")
    recompute_layers: int = _f(-1, "CUDA: decoder layers that recompute activations in backward (-1: all). Fewer is faster, uses more GPU memory.")
    dequant_cache: int = _f(0, "CUDA QLoRA: keep a bf16 copy of this many dequantized base weights (-1: all, 0: none). Faster, +2 bytes/weight.")
    memory_budget_gib: float = _f(0.0, "CUDA QLoRA: GPU memory budget in GiB that recompute_layers and dequant_cache are chosen to fit, measured on the longest micro-batch; 0: automatic, from the GPU memory free at the start less a safety margin (off when either knob is set); -1: off, least memory.")
    seed: int = _f(0, "Training seed.")
    device: str = _f("auto", "'auto' (CUDA if present), 'cuda' or 'cpu'.")
    quantization: str = _f("auto", "'auto' (NF4 QLoRA on CUDA, none on CPU), 'nf4' or 'none'.")
    dtype: str = _f("auto", "Compute dtype: 'auto' (bf16 on CUDA and on CPUs with fast bf16, else float32), 'bfloat16' or 'float32'.")
    lean_nf4: bool = _f(True, "CUDA QLoRA: NF4 weights through a leaner dequantize-and-matmul than bitsandbytes' (same values, less overhead).")


@dataclass(frozen=True)
class MergeConfig:
    max_abs_logit_diff: float = _f(1e-2, "Alpha check: max |logit difference| allowed, adapter-attached vs merged.")
    min_top1_agreement: float = _f(1.0, "Alpha check: minimum greedy top-1 agreement on the probe prompts.")
    base: str = _f("auto", "Base the adapter is merged into: 'bf16' (original weights), 'nf4' (the NF4 round trip "
                   "a QLoRA adapter was trained on) or 'auto' (for QLoRA adapters, whichever merged model is "
                   "closer to the adapter-attached 4-bit model on the probes; both numbers go to the merge report).")


@dataclass(frozen=True)
class ExportConfig:
    outtype: str = _f("f16", "Precision of the converted GGUF before quantization: f16, bf16 or f32.")
    quantize: list = _f(["Q8_0"], "Quantization types to ship, e.g. [\"Q8_0\", \"Q4_0\"]; the first is the Modelfile's.")
    min_top1_agreement: float = _f(0.98, "Conversion check: GGUF vs HF top-1 agreement on probe prompts.")
    imatrix: str = _f("auto", "Importance matrix for the quantizer: 'auto' (computed from calibration data when a "
                      "type below Q8_0 is requested), 'on', 'off', or the path of an imatrix file (.gguf or legacy .dat).")
    imatrix_compare: bool = _f(True, "Also quantize without the importance matrix and ship whichever variant of each "
                               "type is closer to F16 (both appear in the quality report).")
    calibration: str = _f("", "Chat JSONL the importance matrix is computed on (empty: the training data).")
    calibration_examples: int = _f(32, "Conversations of the calibration data used for the importance matrix.")
    quality_texts: int = _f(8, "Held-out conversations the quality report compares each type on (one forward pass each).")
    quality_tokens: int = _f(128, "Tokens of each held-out conversation used by the quality report.")
    gate: str = _f("drop", "Quality gate: 'drop' leaves failing types out of the bundle, 'fail' stops the build, "
                   "'report' only reports. The build fails when no type passes, whatever this says.")
    gate_max_kl: float = _f(0.10, "Gate: highest mean KL divergence (nats) of next-token distributions vs F16.")
    gate_min_top1: float = _f(0.85, "Gate: lowest top-1 agreement with F16.")
    gate_max_ppl_ratio: float = _f(1.10, "Gate: highest perplexity ratio to F16 on the held-out texts.")
    targets: list = _f([], "Export targets to run besides the default ones (ollama), e.g. [\"llamacpp-server\"]; `edgelora plugins` lists them.")
    target_timeout_s: float = _f(600.0, "Each export target runs in its own process and staging folder; one running longer is stopped and fails alone.")


@dataclass(frozen=True)
class OllamaConfig:
    model: str = _f("", "Ollama model name:tag to install as (default: <name>:<version>).")
    system: str = _f("", "Optional SYSTEM prompt written into the Modelfile.")
    num_ctx: int = _f(0, "Context length (0: the training max_seq_length rounded up, at least 2048).")
    temperature: float = _f(-1.0, "Sampling temperature PARAMETER (negative or 0: temperature 0, the greedy decoding the scores were measured with).")
    template: str = _f("", "Path of a Go TEMPLATE file to use instead of the shipped templates/chat/*.tmpl; it must "
                       "render the test conversations exactly like the tokenizer's chat template (text and token ids).")


@dataclass(frozen=True)
class EvalConfig:
    task: str = _f("", "Shorthand kept for old configs: 'json-fields' means metrics = [\"json_fields\"].")
    metrics: list = _f([], "Metrics for the held-out and probe sets: exact, json_fields, contains, regex, rouge_l, "
                       "refusal, checks (empty: json_fields when fields are set, else exact and rouge_l).")
    fields: list = _f([], "For json_fields: the JSON fields compared (the answer must parse as one JSON object).")
    max_tokens: int = _f(64, "Generation budget per scored prompt (items may set their own max_tokens).")
    limit: int = _f(0, "Score at most this many examples per set (0: all).")
    heldout: bool = _f(True, "Score the held-out split ([data] heldout, or the seeded eval_fraction split of train).")
    regression: str = _f("builtin", "Capability-regression set: 'builtin' (shipped with edgelora), a JSONL path, or '' for none.")
    sets: list = _f([], "More eval sets: [{name = \"ood\", path = \"eval/ood.jsonl\", metrics = [\"checks\"], max_tokens = 32}].")
    gates: list = _f([], "Build gates, per set and metric: [{set = \"regression\", metric = \"checks\", "
                     "max_drop_vs_base = 0.1}, {set = \"heldout\", metric = \"json_fields\", min = 0.8}].")


@dataclass(frozen=True)
class BundleConfig:
    dist: str = _f("dist", "Output folder for bundles, relative to the project.")
    probes: int = _f(4, "How many probe conversations to record in the manifest for verify.")
    probe_tokens: int = _f(24, "Greedy tokens recorded per probe.")
    logit_tolerance: float = _f(0.05, "Max |Δlogit| verify accepts on another CPU for the first-token top-k.")
    signing_key: str = _f("", "Ed25519 private key (from `edgelora keygen`) that signs manifest.json; empty: unsigned.")
    model_signing_key: str = _f("", "ECDSA P-256/P-384/P-521 private key (`edgelora keygen KEY --type ecdsa-p256`) "
                                "that adds model.sig, an OpenSSF model-signing signature over every bundle file.")
    toolkit: bool = _f(False, "Put toolkit/ in the bundle: wheels and install.sh for edgelora's host side, "
                       "so an air-gapped host installs edgelora from the bundle itself.")
    toolkit_find_links: list = _f([], "Wheelhouse folders searched first for the toolkit's wheels.")
    toolkit_download: bool = _f(True, "Let the toolkit `pip download` a wheel found nowhere locally (the only "
                                "network use of a build); false: fail instead.")


@dataclass(frozen=True)
class Config:
    project: ProjectConfig = field(default_factory=ProjectConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    root: Path = field(default=Path("."), compare=False)

    @property
    def lines(self) -> dict:
        """(section, key) -> line in edgelora.toml ((section, "") for the header); empty when not loaded from a file."""
        return getattr(self, "_toml_lines", {})

    def section(self, name: str) -> dict:
        return dataclasses.asdict(getattr(self, name))

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self.root / p)


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "root"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _coerce(section: str, key: str, value: Any, typ) -> Any:
    where = f"{CONFIG_NAME}: [{section}] {key}"
    origin = get_origin(typ) or typ
    if origin is types.UnionType:  # str | list: one path or a list of paths
        if isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            return value
        raise ConfigError(f"{where}: expected a string or a non-empty list of strings, got {value!r}")
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    return value


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _section_classes() -> dict:
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name in SECTIONS}


def from_dict(raw: dict, root: Path = Path("."), *, problems: list[str] | None = None,
              lines: dict | None = None) -> Config:
    """A Config from parsed TOML. Every unknown section or key and every wrongly typed value
    is a problem; with ``problems`` given they are appended there (the field keeps its
    default), otherwise they are raised together as one ConfigError."""
    found: list[str] = []
    lines = lines or {}
    classes = _section_classes()
    owner = {sf.name: name for name, cls in classes.items() for sf in dataclasses.fields(cls)}
    sections = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            found.append(f"{CONFIG_NAME}: [{name}] unknown section{_did_you_mean(name, SECTIONS)}"
                         + ("" if _did_you_mean(name, SECTIONS) else f" (sections: {', '.join(SECTIONS)})"))
        elif not isinstance(value, dict):
            found.append(f"{CONFIG_NAME}: [{name}] must be a table")
    for name, cls in classes.items():
        hints = get_type_hints(cls)
        known = {sf.name for sf in dataclasses.fields(cls)}
        values = {}
        table = raw.get(name, {})
        for key, value in (table.items() if isinstance(table, dict) else ()):
            if key not in known:
                hint = _did_you_mean(key, known)
                if not hint and key in owner:
                    hint = f"; '{key}' belongs in [{owner[key]}]"
                found.append(f"{CONFIG_NAME}: [{name}] {key}: unknown field{hint}")
                continue
            try:
                values[key] = _coerce(name, key, value, hints[key])
            except ConfigError as e:
                found.append(str(e))
        sections[name] = cls(**values)
    found = sorted((locate(p, lines) for p in found), key=line_of)  # in file order, as a reader fixes them
    if found and problems is None:
        raise ConfigError(problems=found)
    if problems is not None:
        problems.extend(found)
    cfg = Config(**sections, root=root)
    object.__setattr__(cfg, "_toml_lines", dict(lines))  # not a field: positions are not configuration
    return cfg


_HEADER_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def toml_lines(text: str) -> dict:
    """(section, key) -> 1-based line of each top-level ``key =`` and ``[section]`` header.

    tomllib keeps no positions; this line scan covers what edgelora.toml holds (plain
    tables of keys, values possibly spanning lines)."""
    out: dict = {}
    section = ""
    depth = 0  # open [ / { of a value spanning lines: its lines hold no keys of the table
    for n, line in enumerate(text.splitlines(), start=1):
        if depth == 0:
            m = _HEADER_RE.match(line)
            if m:
                section = m.group(1)
                out.setdefault((section, ""), n)
                continue
            m = _KEY_RE.match(line)
            if m:
                out.setdefault((section, m.group(1)), n)
        code = re.sub(r'"(\\.|[^"\\])*"|\'[^\']*\'|#.*$', "", line)
        depth = max(0, depth + code.count("[") + code.count("{") - code.count("]") - code.count("}"))
    return out


_WHERE_RE = re.compile(rf"^{re.escape(CONFIG_NAME)}: \[([A-Za-z0-9_.-]+)\] ?([A-Za-z0-9_]*)")


def line_of(problem: str) -> int:
    m = re.match(rf"{re.escape(CONFIG_NAME)}:(\d+):", problem)
    return int(m.group(1)) if m else 1 << 30


def locate(problem: str, lines: dict) -> str:
    """``edgelora.toml: [train] r ...`` -> ``edgelora.toml:12: [train] r ...`` when the key
    (else its section header) is in the file."""
    m = _WHERE_RE.match(problem)
    if not m:
        return problem
    line = lines.get((m.group(1), m.group(2))) or lines.get((m.group(1), ""))
    if line is None:
        return problem
    return f"{CONFIG_NAME}:{line}:" + problem[len(CONFIG_NAME) + 1:]


def load(project_dir: str | Path, *, problems: list[str] | None = None) -> Config:
    """Read edgelora.toml. Unknown keys and wrong types: see :func:`from_dict`."""
    root = Path(project_dir)
    path = root / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run `edgelora init {root}` to create one)")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    return from_dict(raw, root=root.resolve(), problems=problems, lines=toml_lines(text))


def problems(cfg: Config) -> list[str]:
    """Every field-level problem at once (``plan`` reports them together)."""
    out = []
    w = CONFIG_NAME
    if not NAME_RE.match(cfg.project.name):
        out.append(f"{w}: [project] name {cfg.project.name!r} must match {NAME_RE.pattern}")
    if not re.match(r"^\d+\.\d+\.\d+([.+-][0-9A-Za-z.-]+)?$", cfg.project.version):
        out.append(f"{w}: [project] version {cfg.project.version!r} is not a semantic version like 1.2.3")
    # [base] fields are checked by the registered source (plan: Source.check)
    t = cfg.train
    if t.r <= 0 or t.alpha <= 0:
        out.append(f"{w}: [train] r and alpha must be positive")
    if not (0 <= t.dropout < 1):
        out.append(f"{w}: [train] dropout must be in [0, 1)")
    if t.learning_rate <= 0:
        out.append(f"{w}: [train] learning_rate must be positive")
    if t.batch_size <= 0 or t.grad_accum <= 0:
        out.append(f"{w}: [train] batch_size and grad_accum must be positive")
    if t.early_stop < 0 or t.save_every < 0:
        out.append(f"{w}: [train] early_stop and save_every must be 0 or positive")
    if t.recompute_layers < -1 or t.dequant_cache < -1:
        out.append(f"{w}: [train] recompute_layers and dequant_cache must be -1 (all) or a count >= 0")
    if t.memory_budget_gib < 0 and t.memory_budget_gib != -1:
        out.append(f"{w}: [train] memory_budget_gib must be 0 (automatic), -1 (off) or a positive number of GiB")
    elif t.memory_budget_gib > 0 and (t.recompute_layers != -1 or t.dequant_cache != 0):
        out.append(f"{w}: [train] memory_budget_gib chooses recompute_layers and dequant_cache itself; "
                   "set either the budget or those two")
    if t.device not in ("auto", "cpu", "cuda"):
        out.append(f"{w}: [train] device {t.device!r} must be auto, cpu or cuda")
    if t.quantization not in ("auto", "nf4", "none"):
        out.append(f"{w}: [train] quantization {t.quantization!r} must be auto, nf4 or none")
    if cfg.merge.base not in ("auto", "bf16", "nf4"):
        out.append(f"{w}: [merge] base {cfg.merge.base!r} must be auto, bf16 or nf4")
    if not (0 < cfg.data.eval_fraction < 1) and not cfg.data.heldout:
        out.append(f"{w}: [data] eval_fraction must be in (0, 1)")
    if cfg.data.max_seq_length != 0 and cfg.data.max_seq_length < 16:
        out.append(f"{w}: [data] max_seq_length must be 0 (fit the data) or at least 16")
    if cfg.export.outtype not in ("f16", "bf16", "f32"):
        out.append(f"{w}: [export] outtype {cfg.export.outtype!r} must be f16, bf16 or f32")
    if not cfg.export.quantize:
        out.append(f"{w}: [export] quantize must list at least one type")
    if cfg.export.gate not in ("drop", "fail", "report"):
        out.append(f"{w}: [export] gate {cfg.export.gate!r} must be drop, fail or report")
    if cfg.export.quality_texts < 1 or cfg.export.quality_tokens < 2 or cfg.export.calibration_examples < 1:
        out.append(f"{w}: [export] quality_texts, quality_tokens and calibration_examples must be positive")
    if not all(isinstance(t, str) and t for t in cfg.export.targets):
        out.append(f"{w}: [export] targets must be a list of target names")
    if not cfg.export.target_timeout_s > 0:
        out.append(f"{w}: [export] target_timeout_s must be positive")
    from edgelora.evaluation.sets import config_problems as eval_problems
    from edgelora.data.guards import mix_problems

    out.extend(eval_problems(cfg))
    out.extend(mix_problems(cfg.data.mix))
    from edgelora.data.rehearsal import rehearsal_problems

    out.extend(rehearsal_problems(cfg.data.rehearsal))
    return [locate(p, cfg.lines) for p in out]


def render_template(cfg: Config | None = None) -> str:
    """An edgelora.toml with every field and its help as a comment."""
    cfg = cfg or Config()
    lines = ["# edgelora project. Every field is documented; delete what you do not change.", ""]
    for f in dataclasses.fields(Config):
        if f.name not in SECTIONS:
            continue
        section = getattr(cfg, f.name)
        lines.append(f"[{f.name}]")
        for sf in dataclasses.fields(section):
            lines.append(f"# {sf.metadata['help']}")
            lines.append(f"{sf.name} = {_toml_value(getattr(section, sf.name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # inline table, e.g. an [eval] gates entry
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))
