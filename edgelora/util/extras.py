"""Which optional extra a missing import belongs to, so the CLI can say what to install.

The core install is the air-gapped host side (verify, install, list, uninstall, keygen,
plugins, toolkit). Training, merging, converting and evaluating need ``edgelora[build]``;
when one of those libraries is missing, the command stops with one line naming the extra
instead of a traceback from deep inside a stage.
"""

from __future__ import annotations

# top-level import name -> the extra that installs it
EXTRA_OF_MODULE = {
    "torch": "build",
    "transformers": "build",
    "peft": "build",
    "safetensors": "build",
    "huggingface_hub": "build",
    "rich": "build",
    "matplotlib": "build",
    "sentencepiece": "build",
    "tokenizers": "build",
    "bitsandbytes": "cuda",
    "accelerate": "cuda",
    "liger_kernel": "cuda",
    "pyarrow": "parquet",
}


def missing_extra(error: BaseException) -> str | None:
    """One line naming the extra to install when ``error`` (or what caused it) is the import
    of a module that an edgelora extra provides; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ModuleNotFoundError) and error.name:
            top = error.name.split(".", 1)[0]
            extra = EXTRA_OF_MODULE.get(top)
            if extra:
                return (f"this command needs {top}, which is not installed: "
                        f"pip install 'edgelora[{extra}]'")
        error = error.__cause__ or error.__context__
    return None
