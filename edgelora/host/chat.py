"""Talk to a built model before shipping it: a .gguf, or a bundle (folder or .tar).

The prompt is rendered with the chat template inside the GGUF (the one the Modelfile's Go
TEMPLATE was proven equal to) and generation stops at the model's end-of-generation tokens
and at the bundle Modelfile's ``PARAMETER stop`` strings, as Ollama would. A bundle's SYSTEM
prompt is used unless one is given. A .tar bundle is verified (files, signature if trusted,
GGUF header) into a temporary folder first; nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edgelora.errors import UsageError, VerifyError


@dataclass
class ChatModel:
    gguf: Path
    stops: list[str] = field(default_factory=list)
    system: str | None = None
    parameters: dict = field(default_factory=dict)


def _from_bundle_dir(root: Path) -> ChatModel:
    from edgelora.host.modelfile_parse import parse_modelfile

    modelfiles = sorted(root.rglob("Modelfile"), key=lambda p: len(p.parts))
    if not modelfiles:
        ggufs = sorted(root.rglob("*.gguf"))
        if not ggufs:
            raise VerifyError(f"{root}: no Modelfile and no .gguf in this bundle folder")
        return ChatModel(gguf=ggufs[0])
    mf = modelfiles[0]
    parsed = parse_modelfile(mf.read_text(encoding="utf-8"), where=str(mf))
    gguf = (mf.parent / parsed.from_path).resolve()
    if not gguf.is_file():
        raise VerifyError(f"{mf}: FROM {parsed.from_path} is not a file in the bundle")
    params = dict(parsed.parameters)
    stops = params.pop("stop", [])
    return ChatModel(gguf=gguf, stops=list(stops) if isinstance(stops, list) else [stops],
                     system=parsed.system, parameters=params)


@contextlib.contextmanager
def open_model(path: str | Path, *, trust=None) -> Iterator[ChatModel]:
    """The GGUF (and a bundle's stops, SYSTEM and parameters) that ``path`` names."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        yield ChatModel(gguf=path)
    elif path.is_dir():
        yield _from_bundle_dir(path)
    elif path.is_file() and path.suffix == ".tar":
        from edgelora.host.verify import first_failure, verify_bundle

        with tempfile.TemporaryDirectory(prefix="edgelora-chat-") as tmp:
            report = verify_bundle(path, run_probes=False, trust=trust, extract_to=Path(tmp) / "bundle")
            if not report["ok"]:
                raise VerifyError(f"{path}: does not verify: {first_failure(report)}")
            yield _from_bundle_dir(Path(report["root"]))
    else:
        raise UsageError(f"{path}: expected a .gguf file, a bundle folder or a bundle .tar")


class ChatSession:
    """One loaded model and the conversation so far."""

    def __init__(self, model: ChatModel, *, system: str | None = None, n_ctx: int | None = None,
                 temperature: float | None = None, seed: int = 0):
        from edgelora.runtime.llama import open_llama

        self.model = model
        n_ctx = n_ctx or int(model.parameters.get("num_ctx", 4096))  # the Modelfile's, as Ollama would
        self.llm = open_llama(model.gguf, n_ctx=n_ctx, seed=seed)
        system = system if system is not None else model.system
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.temperature = temperature if temperature is not None else float(model.parameters.get("temperature", 0.0))

    def close(self) -> None:
        self.llm.close()

    def reply(self, text: str, *, max_tokens: int = 512) -> Iterator[str]:
        """Stream the answer to ``text``; the answer joins the conversation when complete."""
        from edgelora.runtime.llama import render_prompt, tokenize_prompt

        self.messages.append({"role": "user", "content": text})
        ids = tokenize_prompt(self.llm, render_prompt(self.llm, self.messages))
        room = self.llm.n_ctx() - len(ids)
        if room < 8:
            self.messages.pop()
            raise UsageError(f"the conversation ({len(ids)} tokens) fills the context ({self.llm.n_ctx()}); "
                             "start a new chat or raise --ctx")
        parts = []
        for chunk in self.llm.create_completion(ids, max_tokens=min(max_tokens, room), stop=self.model.stops or None,
                                                temperature=self.temperature, stream=True):
            piece = chunk["choices"][0]["text"]
            parts.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(parts)})
