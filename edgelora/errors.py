"""One error hierarchy. The library raises; only the CLI formats.

Every message is one line that names the file or field at fault and the reason,
so that ``str(err)`` is what a user reads.
"""

from __future__ import annotations


class EdgeloraError(Exception):
    """Root of every error edgelora raises on purpose.

    ``problems`` (optional) lists several independent problems, one line each; the CLI
    prints one per line, and ``str(err)`` joins them."""

    exit_code = 1

    def __init__(self, *args, problems: list[str] | None = None):
        self.problems = list(problems) if problems else None
        if not args and self.problems:
            args = (self.problems[0] if len(self.problems) == 1
                    else f"{len(self.problems)} problems: " + "; ".join(self.problems),)
        super().__init__(*args)


class UsageError(EdgeloraError):
    """A command was called wrongly (an unknown stage name, a bad option value)."""

    exit_code = 2


class NetworkError(EdgeloraError):
    """The network was needed (only `edgelora fetch` uses it) and failed; names the host."""

    exit_code = 2


class ConfigError(EdgeloraError):
    """edgelora.toml is missing, malformed, or a field is invalid."""


class DataError(EdgeloraError):
    """A dataset file is malformed; the message carries file:line."""


class BaseModelError(EdgeloraError):
    """The base model cannot be found, read, or trusted."""


class LockMismatch(BaseModelError):
    """A base file's sha256 differs from the one pinned in edgelora.lock."""


class UnsafeWeightsError(BaseModelError):
    """Pickle-based weights (.bin/.pt/.pth/.ckpt/.pkl) are refused."""


class NotInCacheError(BaseModelError):
    """Offline and the local Hugging Face cache lacks a file."""


class AdapterMismatch(EdgeloraError):
    """The LoRA adapter does not fit the base model."""


class UnsupportedArchitecture(EdgeloraError):
    """No registered GGUF architecture handles this model."""


class UnknownTokenizer(EdgeloraError):
    """The tokenizer's pre-tokenizer hash is not one llama.cpp knows."""


class ConversionError(EdgeloraError):
    """GGUF conversion failed."""


class FidelityError(EdgeloraError):
    """A numerical check between two pipeline steps failed."""


class QuantizeError(EdgeloraError):
    """llama.cpp's quantizer failed."""


class TrainingError(EdgeloraError):
    """Training could not run or did not produce an adapter."""


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGTERM after saving a checkpoint; ``--resume`` continues it."""


class GateError(EdgeloraError):
    """An [eval] gate failed (score below min, or dropped too far below the base); carries the numbers."""

    exit_code = 3


class ModelfileError(EdgeloraError):
    """A Modelfile cannot be rendered safely."""


class BundleError(EdgeloraError):
    """A bundle cannot be written."""


class VerifyError(EdgeloraError):
    """A bundle failed verification."""


class SignatureError(VerifyError):
    """manifest.sig is missing, malformed, by an untrusted key, or does not match."""


class InstallError(EdgeloraError):
    """A verified bundle could not be installed; the previous version is untouched."""


class DiskFullError(VerifyError, InstallError):
    """Not enough free space for the private copy or the store: "disk full: need X, have Y"."""


class PluginError(EdgeloraError):
    """A plugin failed to load or registered something twice."""


class PlanError(EdgeloraError):
    """Several problems found at once by ``edgelora plan``."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems), problems=problems)
        self.problems = list(problems)
