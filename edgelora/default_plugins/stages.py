"""Registers the built-in pipeline stages (their code lives in stages_*.py)."""

from __future__ import annotations

from .. import artifacts as A
from ..hookspecs import hookimpl
from ..registry import Stage
from . import stages_export as X
from . import stages_prepare as P

BUILTIN_STAGES = (
    Stage("fetch-base", P.fetch_base, (), (A.BASE,), ("base",), cacheable=False,
          description="resolve the pinned base (embedded, local, hf, gguf) and check edgelora.lock"),
    Stage("prepare-data", P.prepare_data, (A.BASE,), (A.DATASET,), ("data",),
          description="validate chat JSONL, split held-out, dedup, data report"),
    Stage("eval-sets", X.eval_sets, (), (A.EVAL_SETS,), ("eval",), cacheable=False,
          description="check every eval file of [eval] (file:line errors) before training"),
    Stage("train", P.train, (A.BASE, A.DATASET), (A.ADAPTER, A.TRAIN_REPORT), ("train", "data.max_seq_length"),
          description="LoRA on CPU, QLoRA (NF4) on CUDA; best adapter by eval loss"),
    Stage("merge", P.merge, (A.BASE, A.ADAPTER, A.DATASET), (A.MERGE_REPORT,), ("merge",),
          description="lazy merge view; alpha check of adapter-attached vs merged logits"),
    Stage("convert", X.convert, (A.BASE, A.ADAPTER, A.MERGE_REPORT), (A.GGUF, A.CONVERT_REPORT),
          ("export.outtype", "export.min_top1_agreement", "project.name"),
          description="own GGUF writer from the merged view, checked against HF logits"),
    Stage("convert-base", X.convert_base, (A.BASE,), (A.BASE_GGUF,), ("export.outtype",),
          description="the untouched base as GGUF, for the before/after score"),
    Stage("quantize", X.quantize, (A.GGUF, A.BASE, A.ADAPTER, A.DATASET), (A.QUANTIZED, A.QUANT_REPORT),
          ("export.quantize", "export.imatrix", "export.imatrix_compare", "export.calibration",
           "export.calibration_examples", "export.quality_texts", "export.quality_tokens", "export.gate",
           "export.gate_max_kl", "export.gate_min_top1", "export.gate_max_ppl_ratio", "project.name", "data"),
          description="importance matrix, llama.cpp's quantizer per type, quality report vs F16 and gate"),
    Stage("evaluate", X.evaluate, (A.QUANTIZED, A.BASE_GGUF, A.DATASET, A.EVAL_SETS), (A.EVAL_REPORT,),
          ("eval.task", "eval.metrics", "eval.fields", "eval.max_tokens", "eval.limit", "eval.heldout",
           "eval.regression", "eval.sets", "export.quantize"),
          description="eval sets on the base and every shipped GGUF (llama-cpp-python, greedy); eval.md"),
    Stage("gate", X.gate, (A.EVAL_REPORT,), (A.GATE_REPORT,), (), cacheable=False,
          description="stop the build when an [eval] gate fails (build --no-gate records and goes on)"),
    Stage("modelfile", X.modelfile, (A.BASE, A.QUANTIZED), (A.MODELFILE,),
          ("ollama", "data.max_seq_length", "project"),
          description="Modelfile.j2 with a Go TEMPLATE proven equal to the Jinja chat template"),
    Stage("bundle", X.bundle, (A.BASE, A.DATASET, A.TRAIN_REPORT, A.MERGE_REPORT, A.CONVERT_REPORT,
                               A.QUANTIZED, A.QUANT_REPORT, A.EVAL_REPORT, A.GATE_REPORT, A.MODELFILE),
          (A.BUNDLE,), ("project", "bundle", "train", "base", "export.targets"), plugin_kinds=("targets",),
          description="manifest.json, SHA256SUMS, README, probes; dist/<name>-<version>/ and .tar"),
    Stage("verify", X.verify, (A.BUNDLE,), (A.VERIFY_REPORT,), (), cacheable=False,
          description="checksums, llama-cpp-python load, probe replay on the finished bundle"),
)


@hookimpl
def edgelora_register_stages(register):
    for stage in BUILTIN_STAGES:
        register(stage)
