"""Eval sets: what is scored, read from the project's data, eval JSONL files and the shipped
regression set, every line checked with a file:line error.

One line of an eval file is a conversation plus what a right answer looks like::

    {"messages": [{"role": "user", "content": "What is 7 + 5? Answer with the number only."}],
     "expected": "12", "regex": "^\\D*12\\D*$", "category": "arithmetic", "max_tokens": 8}

``messages`` may end with the assistant's reference answer instead of ``expected``. The
other keys are constraints the ``checks`` metric tests (and ``contains``/``regex``/``refusal``
read): ``contains`` (all, case-insensitive), ``contains_any``, ``not_contains``, ``regex``
(all must match, Python syntax), ``words`` (exact word count), ``max_words``, ``json_keys``
(the answer is a JSON object with exactly these keys), ``refuse`` (true: must decline).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgelora.errors import ConfigError, DataError
from edgelora.util.files import jsonl_records, read_jsonl
from edgelora.evaluation.metrics import METRICS

REGRESSION_NAME = "regression"
BUILTIN_REGRESSION = Path(__file__).with_name("regression.jsonl")
DEFAULT_REGRESSION_TOKENS = 48
SHOWN_PROBLEMS = 5

_STR_LIST_KEYS = ("contains", "contains_any", "not_contains", "regex", "json_keys")
_INT_KEYS = ("words", "max_words", "max_tokens")
ITEM_KEYS = {"messages", "expected", "refuse", "category", "id", *_STR_LIST_KEYS, *_INT_KEYS}


@dataclass(frozen=True)
class EvalSet:
    name: str
    items: tuple = ()                 # normalised items (see ``parse_item``)
    metrics: tuple = ()
    max_tokens: int = 64
    fields: tuple = ()                # for json_fields: the keys compared
    source: str = ""                  # where the items came from, for the report
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- one line


def _str_list(value, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"'{key}' must be a non-empty string or list of non-empty strings")
    return value


def parse_item(record) -> dict:
    """A normalised item from one decoded JSON line; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"line is a JSON {type(record).__name__}, expected an object with 'messages'")
    unknown = sorted(set(record) - ITEM_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} (known: {', '.join(sorted(ITEM_KEYS))})")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{\"role\": system|user|assistant, \"content\": string}}")
    reference = None
    if messages[-1]["role"] == "assistant":
        reference = messages[-1]["content"]
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message (optionally followed by the reference answer)")
    item: dict = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    expected = record.get("expected", reference)
    if expected is not None and not isinstance(expected, (str, dict)):
        raise ValueError("'expected' must be a string or a JSON object")
    if isinstance(expected, dict):
        item["expected_json"] = expected
        item["reference"] = json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
    elif isinstance(expected, str):
        item["reference"] = expected
        try:
            obj = json.loads(expected)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            item["expected_json"] = obj
    for key in _STR_LIST_KEYS:
        if key in record:
            item[key] = _str_list(record[key], key)
    if "regex" in item:
        compiled = []
        for pattern in item["regex"]:
            try:
                compiled.append(re.compile(pattern))
            except re.error as e:
                raise ValueError(f"'regex' {pattern!r} does not compile: {e}") from None
        item["regex_compiled"] = compiled
    for key in _INT_KEYS:
        if key in record:
            v = record[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 4096:
                raise ValueError(f"'{key}' must be a positive integer, got {v!r}")
            item[key] = v
    if "refuse" in record:
        if not isinstance(record["refuse"], bool):
            raise ValueError(f"'refuse' must be true or false, got {record['refuse']!r}")
        item["refuse"] = record["refuse"]
    for key in ("category", "id"):
        if key in record:
            if not isinstance(record[key], str):
                raise ValueError(f"'{key}' must be a string")
            item[key] = record[key]
    return item


def load_eval_file(path) -> list[dict]:
    """Every line of an eval JSONL file as an item; all problems raised together as file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: eval file not found")
    problems, items = [], []
    for lineno, record in jsonl_records(path, problems):
        try:
            items.append(parse_item(record) | {"line": lineno})
        except ValueError as e:
            problems.append(f"{path}:{lineno}: {e}")
    if not items and not problems:
        problems.append(f"{path}: holds no eval items")
    if problems:
        more = len(problems) - SHOWN_PROBLEMS
        raise DataError("; ".join(problems[:SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else ""))
    return items


# --------------------------------------------------------------------------- from the config


def data_metrics(ev) -> list[str]:
    """Metrics for the held-out and probe sets: [eval] metrics, else from the legacy task field."""
    if ev.metrics:
        return list(ev.metrics)
    if ev.task == "json-fields" or ev.fields:
        return ["json_fields"]
    return ["exact", "rouge_l"]


def _extra_set_specs(ev) -> list[dict]:
    return [dict(s) for s in ev.sets]


def config_problems(cfg) -> list[str]:
    """Field-level problems of [eval] (sets, metrics, gates), for ``plan``."""
    w = "edgelora.toml: [eval]"
    ev = cfg.eval
    out = []
    if ev.task not in ("", "json-fields"):
        out.append(f"{w} task {ev.task!r} must be '' or 'json-fields'")
    if ev.task == "json-fields" and not ev.fields:
        out.append(f"{w} fields must list the JSON fields to compare")
    bad = [m for m in ev.metrics if m not in METRICS]
    if bad:
        out.append(f"{w} metrics {bad} unknown (known: {', '.join(METRICS)})")
    if ev.max_tokens <= 0:
        out.append(f"{w} max_tokens must be positive")
    names = {"heldout", "probes", REGRESSION_NAME}
    for i, spec in enumerate(ev.sets):
        where = f"{w} sets[{i}]"
        if not isinstance(spec, dict):
            out.append(f"{where} must be a table {{name, path, metrics, fields, max_tokens}}")
            continue
        unknown = sorted(set(spec) - {"name", "path", "metrics", "fields", "max_tokens"})
        if unknown:
            out.append(f"{where} unknown key(s) {unknown}")
        name, path = spec.get("name"), spec.get("path")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name or ""):
            out.append(f"{where} name must be letters, digits, '_', '.', '-'")
        elif name in names:
            out.append(f"{where} name {name!r} is used twice (heldout, probes, regression are built in)")
        else:
            names.add(name)
        if not isinstance(path, str) or not path:
            out.append(f"{where} path must name a JSONL file")
        metrics = spec.get("metrics", ["checks"])
        if not isinstance(metrics, list) or any(m not in METRICS for m in metrics):
            out.append(f"{where} metrics {metrics!r}: each must be one of {', '.join(METRICS)}")
        mt = spec.get("max_tokens", ev.max_tokens)
        if isinstance(mt, bool) or not isinstance(mt, int) or mt <= 0:
            out.append(f"{where} max_tokens must be a positive integer")
    from edgelora.evaluation.gates import gate_problems

    out.extend(gate_problems(ev, names))
    return out


def build_sets(cfg, dataset: dict | None, only: list[str] | None = None) -> list[EvalSet]:
    """The project's eval sets, in report order: heldout, probes, each [eval] sets entry, regression.

    ``dataset`` is the prepare-data artifact (held-out and probe files as split by the seed).
    """
    ev = cfg.eval
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(problems[0])
    wanted = set(only) if only else None
    sets: list[EvalSet] = []

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    metrics = tuple(data_metrics(ev))
    fields = tuple(ev.fields)
    if dataset:
        for name in ("heldout", "probes"):
            if name == "heldout" and not ev.heldout:
                continue
            path = dataset.get(name)
            if not path or not want(name):
                continue
            # Data rows may carry more than messages (e.g. their source); the answer is the reference.
            items = [parse_item({"messages": r["messages"]}) for r in read_jsonl(path)]
            if items:
                sets.append(EvalSet(name, tuple(_limit(items, ev.limit)), metrics, ev.max_tokens, fields,
                                    source=f"[data] {name}"))
    for spec in _extra_set_specs(ev):
        if not want(spec["name"]):
            continue
        items = load_eval_file(cfg.resolve(spec["path"]))
        sets.append(EvalSet(spec["name"], tuple(_limit(items, ev.limit)), tuple(spec.get("metrics", ["checks"])),
                            spec.get("max_tokens", ev.max_tokens), tuple(spec.get("fields", ev.fields)),
                            source=spec["path"]))
    reg = regression_path(cfg)
    if reg is not None and want(REGRESSION_NAME):
        items = load_eval_file(reg)
        sets.append(EvalSet(REGRESSION_NAME, tuple(_limit(items, ev.limit)), ("checks",),
                            DEFAULT_REGRESSION_TOKENS, (),
                            source="edgelora built-in" if reg == BUILTIN_REGRESSION else str(reg)))
    if wanted:
        missing = sorted(wanted - {s.name for s in sets})
        if missing:
            known = ", ".join(s.name for s in build_sets(cfg, dataset)) or "none"
            raise ConfigError(f"edgelora.toml: [eval] no eval set named {missing[0]!r} (configured: {known})")
    return sets


def set_names(cfg) -> list[str]:
    """Names of the sets the config declares, in report order (the data sets may turn out empty)."""
    ev = cfg.eval
    names = (["heldout"] if ev.heldout else []) + (["probes"] if cfg.data.probes else [])
    names += [s["name"] for s in ev.sets if isinstance(s, dict) and "name" in s]
    return names + ([REGRESSION_NAME] if ev.regression else [])


def regression_path(cfg) -> Path | None:
    spec = cfg.eval.regression
    if not spec:
        return None
    if spec == "builtin":
        return BUILTIN_REGRESSION
    return cfg.resolve(spec)


def eval_files(cfg) -> dict[str, str]:
    """Every eval file the config names (for the stage cache and for ``plan``)."""
    files = {s["name"]: str(cfg.resolve(s["path"]).resolve()) for s in cfg.eval.sets
             if isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("name"), str)}
    reg = regression_path(cfg)
    if reg is not None:
        files[REGRESSION_NAME] = str(reg.resolve())
    return files


def _limit(items: list, n: int) -> list:
    return items[:n] if n else items


def check_eval_files(cfg) -> None:
    """Load every eval file [eval] names; raises DataError with file:line (for ``plan``)."""
    if any(p.startswith("edgelora.toml: [eval] sets") for p in config_problems(cfg)):
        return  # already reported as a config problem
    for path in eval_files(cfg).values():
        load_eval_file(path)
