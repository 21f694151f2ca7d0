"""Training data in the formats people have: chat, Alpaca, prompt/completion, plain text.

Files: JSON Lines (``.jsonl``), a JSON array (``.json``), Parquet (``.parquet``, needs
pyarrow), a folder of them (read in name order), a glob, or a list of those. Every record
is normalised to one of two shapes, and tagged with the file it came from (``source``):

- ``{"messages": [{"role", "content"}, ...], "source"}`` for chat, ShareGPT
  (``conversations`` of ``from``/``value`` with human/gpt/system), Alpaca
  (instruction / optional input / output, optional system) and prompt/completion
  (strings, or lists of messages as TRL writes them);
- ``{"text": str, "source"}`` for plain text (trained on every token).

All records are checked; problems are gathered and raised as one DataError whose
problems each start with ``file:line:`` (JSON Lines and JSON arrays) or ``file:row N:``
(Parquet).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from edgelora.data.chat import example_problem, raise_problems
from edgelora.errors import DataError
from edgelora.util.files import jsonl_records

SUFFIXES = (".jsonl", ".json", ".parquet")
FORMATS_HINT = "'messages', 'conversations', 'instruction'+'output', 'prompt'+'completion' or 'text'"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
GLOB_CHARS = "*?["


def expand_paths(spec, resolve=Path) -> list[Path]:
    """The paths a ``[data] train`` value names: a string or a list of strings, each a file,
    a folder or a glob (``data/*.jsonl``, ``data/**/*.json``), resolved with ``resolve``.
    A glob matching nothing is an error naming it."""
    out: list[Path] = []
    for item in [spec] if isinstance(spec, (str, os.PathLike)) else list(spec):
        path = resolve(item)
        if any(c in str(item) for c in GLOB_CHARS):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"{path}: [data] glob matches no file")
            out += [m for m in matches if m not in out]
        elif path not in out:
            out.append(path)
    return out


def data_files(path: str | os.PathLike) -> list[Path]:
    """The data files a path names: itself, or the supported files of a folder in name order."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise DataError(f"{p}: unsupported data file type (expected {', '.join(SUFFIXES)})")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{p}: folder holds no {', '.join(SUFFIXES)} files")
        return files
    raise DataError(f"{p}: no such file or folder")


def _text(value, name: str) -> str | None:
    """A problem with a required non-empty string field, or None."""
    if not isinstance(value, str):
        return f"'{name}' is {type(value).__name__}, expected a string"
    if not value.strip():
        return f"'{name}' is empty"
    return None


def _sharegpt_messages(turns) -> tuple[list | None, str | None]:
    if not isinstance(turns, list) or not turns:
        return None, "'conversations' must be a non-empty list"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return None, f"conversations[{i}] is {type(turn).__name__}, expected an object with from and value"
        speaker, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
        if speaker not in SHAREGPT_ROLES:
            return None, (f"conversations[{i}] has from={speaker!r} (expected human, gpt or system)")
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    return messages, None


def normalize_record(record) -> tuple[dict | None, str | None]:
    """(example, None) for a valid record of any known format, else (None, problem)."""
    if not isinstance(record, dict):
        return None, f"record is a JSON {type(record).__name__}, expected an object with {FORMATS_HINT}"
    if "conversations" in record and "messages" not in record:  # ShareGPT
        messages, problem = _sharegpt_messages(record["conversations"])
        return (None, problem) if problem else normalize_record({"messages": messages})
    if "messages" in record:
        problem = example_problem(record)
        if problem:
            return None, problem
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}, None
    if "instruction" in record or "output" in record:
        for name in ("instruction", "output"):
            if name not in record:
                return None, f"Alpaca record has no '{name}'"
            problem = _text(record[name], name)
            if problem:
                return None, problem
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            return None, f"'input' is {type(extra).__name__}, expected a string"
        messages = []
        if isinstance(record.get("system"), str) and record["system"].strip():
            messages.append({"role": "system", "content": record["system"]})
        user = record["instruction"] + ("\n\n" + extra if extra.strip() else "")
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
        return {"messages": messages}, None
    if "prompt" in record or "completion" in record:
        for name in ("prompt", "completion"):
            if name not in record:
                return None, f"prompt/completion record has no '{name}'"
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational form
            return normalize_record({"messages": prompt + completion})
        for name, value in (("prompt", prompt), ("completion", completion)):
            problem = _text(value, name)
            if problem:
                return None, problem
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}, None
    if "text" in record:
        problem = _text(record["text"], "text")
        return (None, problem) if problem else ({"text": record["text"]}, None)
    return None, f"no known format: expected {FORMATS_HINT}"


def _json_array_records(file: Path):
    """Records of a top-level JSON array, each with the line it starts on."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        yield 1, None, f"not UTF-8 ({e.reason} at byte {e.start})"
        return
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        line = text.count("\n", 0, i) + 1
        yield line, None, "expected a JSON array of records (use .jsonl for one record per line)"
        return
    i = _skip_ws(text, i + 1)
    if i < len(text) and text[i] == "]":
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield e.lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"
            return
        yield line, record, None
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < len(text) and text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        yield line, None, "invalid JSON (expected ',' or ']' after a record)"
        return


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _parquet_records(file: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{file}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{file}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for row, record in enumerate(table.to_pylist(), start=1):
        yield row, record, None


def load_examples(path: str | os.PathLike | list) -> list[dict]:
    """Load, validate and normalise every record under ``path``, or under each of a list of
    paths (see the module docstring)."""
    roots = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    files = []
    for root in roots:
        files += [f for f in data_files(root) if f not in files]
    problems: list[str] = []
    examples: list[dict] = []
    for file in files:
        source = file.name
        suffix = file.suffix.lower()
        if suffix == ".parquet":
            records, where = _parquet_records(file), "row "
        elif suffix == ".json":
            records, where = _json_array_records(file), ""
        else:
            # bad lines go straight into problems, as file:line: reason
            records, where = ((ln, rec, None) for ln, rec in jsonl_records(file, problems)), ""
        found = 0
        for pos, record, problem in records:
            if problem is None:
                example, problem = normalize_record(record)
            if problem:
                problems.append(f"{file}:{where}{pos}: {problem}")
                continue
            example["source"] = source
            examples.append(example)
            found += 1
        if found == 0 and not any(p.startswith(f"{file}:") for p in problems):
            problems.append(f"{file}: holds no examples")
    if problems:
        raise_problems(problems)
    return examples
