"""Artifact names passed between stages, in one place (like gguf-py's ``Keys``)."""

BASE = "base"                    # {"path", "files", "source", "revision"}
DATASET = "dataset"              # {"train", "eval", "probes", "sha256", "report"}
ADAPTER = "adapter"              # path to a PEFT adapter directory
TRAIN_REPORT = "train_report"
MERGE_REPORT = "merge_report"
GGUF = "gguf"                    # path to the fine-tune at export.outtype
CONVERT_REPORT = "convert_report"
BASE_GGUF = "base_gguf"          # path to the untouched base at export.outtype (for before/after)
QUANTIZED = "quantized"          # {QUANT_TYPE: path}
BASE_QUANTIZED = "base_quantized"  # {QUANT_TYPE: path} of the untouched base, for the before/after score
QUANT_REPORT = "quant_report"
EVAL_SETS = "eval_sets"          # {set name: absolute path of its JSONL}
EVAL_REPORT = "eval_report"      # compact scores per set/model/metric, gates, {"files": eval.json, eval.md}
GATE_REPORT = "gate_report"      # {"enforced", "ok", "results", "files": eval.json, eval.md with gates}
MODELFILE = "modelfile"          # {"text", "template", "stops"}
BUNDLE = "bundle"                # {"dir", "tar"}
VERIFY_REPORT = "verify_report"

PATH_ARTIFACTS = {ADAPTER, GGUF, BASE_GGUF}
