"""edgelora export target ``hf-merged``: the fine-tune as merged safetensors + config +
tokenizer in ``hf-merged/``, for vLLM, TGI or plain transformers users.

Written from edgelora's lazy merge view (:class:`edgelora.merge.MergedView`), tensor by
tensor: the base is read through memory maps, ``W + scale·B·A`` is formed for one tensor
at a time and written straight into the safetensors file, so memory does not grow with
the model. Tensors keep the base's dtype; shards are about 2 GB, with an index when there
is more than one, as transformers writes them.
"""

from __future__ import annotations

from pathlib import Path

from edgelora.hookspecs import hookimpl
from edgelora.registry import Target

__version__ = "0.1.0"
NAME = "hf-merged"
FOLDER = "hf-merged"


def serving_notes(name: str, version: str) -> str:
    return f"""# {name} {version}: merged Hugging Face model

The LoRA fine-tune merged into its base (safetensors, config, tokenizer, chat template).
Check the files first: `sha256sum -c SHA256SUMS` in the bundle folder.

    vllm serve ./{FOLDER} --served-model-name {name}
    docker run --gpus all -v "$PWD/{FOLDER}:/model" ghcr.io/huggingface/text-generation-inference --model-id /model
    python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('./{FOLDER}')"
"""


def export(ctx, staging: Path) -> dict[str, Path]:
    from edgelora.merge.view import MergedView
    from edgelora.merge.alpha_check import materialize

    base = ctx.need("base")["path"]
    adapter = ctx.need("adapter")
    out = staging / FOLDER
    with MergedView(base, adapter) as view:
        report = materialize(view, out)
    notes = out / "SERVING.md"
    notes.write_text(serving_notes(ctx.config.project.name, ctx.config.project.version), encoding="utf-8")
    ctx.log(f"{FOLDER}/: {report['tensors']} tensors ({report['merged_tensors']} merged), "
            f"{report['bytes'] / 2**20:.1f} MiB in {len(report['shards'])} shard(s)")
    return {f"{FOLDER}/{p.name}": p for p in sorted(out.iterdir()) if p.is_file()}


@hookimpl
def edgelora_register_targets(register):
    register(Target(NAME, export, description="merged safetensors + tokenizer for vLLM/TGI (streamed from the merge view)"))
