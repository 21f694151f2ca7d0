"""Registers the built-in pipeline stages. Each stage's code lives in its package's ``stage``
module (``edgelora/<package>/stage.py``), one hop from this table."""

from __future__ import annotations

from edgelora import artifacts as A
from edgelora.bundle import stage as bundle
from edgelora.data import stage as data
from edgelora.evaluation import stage as evaluation
from edgelora.gguf import stage as gguf
from edgelora.hookspecs import hookimpl
from edgelora.host import stage as host
from edgelora.merge import stage as merge
from edgelora.modelfile import stage as modelfile
from edgelora.quantize import stage as quantize
from edgelora.registry import Stage
from edgelora.sources import stage as sources
from edgelora.training import stage as training

BUILTIN_STAGES = (
    Stage("fetch-base", sources.fetch_base, (), (A.BASE,), ("base",), cacheable=False,
          description="resolve the pinned base (embedded, local, hf, gguf) and check edgelora.lock"),
    Stage("convert-base", gguf.convert_base, (A.BASE,), (A.BASE_GGUF,), ("export.outtype",),
          description="the untouched base as GGUF: answers the rehearsal prompts, scored before/after"),
    Stage("prepare-data", data.prepare_data, (A.BASE, A.BASE_GGUF), (A.DATASET,), ("data",),
          description="validate chat JSONL, split held-out, dedup, mix in rehearsal, data report"),
    Stage("eval-sets", evaluation.eval_sets_stage, (), (A.EVAL_SETS,), ("eval",), cacheable=False,
          description="check every eval file of [eval] (file:line errors) before training"),
    Stage("train", training.train, (A.BASE, A.DATASET), (A.ADAPTER, A.TRAIN_REPORT), ("train", "data.max_seq_length"),
          description="LoRA on CPU, QLoRA (NF4) on CUDA; best adapter by eval loss"),
    Stage("merge", merge.merge, (A.BASE, A.ADAPTER, A.DATASET), (A.MERGE_REPORT,), ("merge",),
          description="lazy merge view; alpha check of adapter-attached vs merged logits"),
    Stage("convert", gguf.convert, (A.BASE, A.ADAPTER, A.MERGE_REPORT), (A.GGUF, A.CONVERT_REPORT),
          ("export.outtype", "export.min_top1_agreement", "project.name"),
          description="own GGUF writer from the merged view, checked against HF logits"),
    Stage("quantize", quantize.quantize, (A.GGUF, A.BASE, A.ADAPTER, A.DATASET), (A.QUANTIZED, A.QUANT_REPORT),
          ("export.quantize", "export.imatrix", "export.imatrix_compare", "export.calibration",
           "export.calibration_examples", "export.quality_texts", "export.quality_tokens", "export.gate",
           "export.gate_max_kl", "export.gate_min_top1", "export.gate_max_ppl_ratio", "project.name", "data"),
          description="importance matrix, llama.cpp's quantizer per type, quality report vs F16 and gate"),
    Stage("quantize-base", quantize.quantize_base, (A.BASE_GGUF,), (A.BASE_QUANTIZED,), ("export.quantize",),
          description="the untouched base at every requested type, for the before/after score"),
    Stage("evaluate", evaluation.evaluate_stage, (A.QUANTIZED, A.BASE_QUANTIZED, A.DATASET, A.EVAL_SETS), (A.EVAL_REPORT,),
          ("eval.task", "eval.metrics", "eval.fields", "eval.max_tokens", "eval.limit", "eval.heldout",
           "eval.regression", "eval.sets", "export.quantize"),
          description="eval sets on the base and every shipped GGUF (llama-cpp-python, greedy); eval.md"),
    Stage("gate", evaluation.gate_stage, (A.EVAL_REPORT,), (A.GATE_REPORT,), (), cacheable=False,
          description="stop the build when an [eval] gate fails (build --no-gate records and goes on)"),
    Stage("modelfile", modelfile.modelfile, (A.BASE, A.QUANTIZED, A.DATASET), (A.MODELFILE,),
          ("ollama", "data.max_seq_length", "project"),
          description="Modelfile.j2 with a Go TEMPLATE proven equal to the Jinja chat template"),
    Stage("bundle", bundle.bundle, (A.BASE, A.DATASET, A.TRAIN_REPORT, A.MERGE_REPORT, A.CONVERT_REPORT,
                               A.QUANTIZED, A.QUANT_REPORT, A.EVAL_REPORT, A.GATE_REPORT, A.MODELFILE),
          (A.BUNDLE,), ("project", "bundle", "train", "base", "export.targets"), plugin_kinds=("targets",),
          description="manifest.json, SHA256SUMS, README, probes; dist/<name>-<version>/ and .tar"),
    Stage("verify", host.verify, (A.BUNDLE,), (A.VERIFY_REPORT,), (), cacheable=False,
          description="checksums, llama-cpp-python load, probe replay on the finished bundle"),
)


@hookimpl
def edgelora_register_stages(register):
    for stage in BUILTIN_STAGES:
        register(stage)
