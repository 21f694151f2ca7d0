"""The one frozen context that flows through the stages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from edgelora.config import Config
from edgelora.errors import EdgeloraError
from edgelora.registry import Registry


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Context:
    config: Config
    project_dir: Path
    registry: Registry
    artifacts: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    log: Callable[[str], None] = _print
    console: Any = None  # a rich Console when running under the CLI
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # run flags, e.g. {"gate": False}

    @property
    def work_dir(self) -> Path:
        return self.project_dir / ".edgelora"

    def stage_dir(self, name: str) -> Path:
        d = self.work_dir / "work" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def need(self, name: str) -> Any:
        try:
            return self.artifacts[name]
        except KeyError:
            raise EdgeloraError(f"artifact {name!r} is required but no stage produced it") from None

    def evolve(self, new: Mapping[str, Any]) -> "Context":
        merged = dict(self.artifacts)
        merged.update(new)
        return dataclasses.replace(self, artifacts=MappingProxyType(merged))
