#!/usr/bin/env bash
# Run on the GPU machine from the repo root: installs carried wheels, runs the GPU tests
# and the training benchmark, logs under $OUT (or ./gpu-out). Usage: bench/gpu_session.sh PHASE...
# Phases: setup tests bench1b varlen1b bench8b budget8b; against Unsloth (issue 18): site fasttests u1b u1bvar u8b u8bvar
# (site: unpack the carried wheel set site.tar.xz, made by bench/unsloth_wheels.sh, into /tmp/site;
# fasttests: SmolLM2 tokenizer files in ./tok, from edgelora.testing.make_tokenizer).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export UNSLOTH_DISABLE_STATISTICS=1
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
PY=${PY:-python3}
FILTER='warning\|Loading weights\|it/s\]\|s/it\]\|Backend impl\|^ *[0-9]*%|'
B="bench/bench_train.py --repeats ${REPEATS:-2}"
for phase in "$@"; do
  echo "=== $phase $(date -u +%T)"
  case $phase in
    setup)
      $PY -m pip install -q --no-deps .whl/bitsandbytes-*.whl .whl/liger_kernel-*.whl 2>&1 | tail -3
      $PY -c 'import torch,transformers,peft,bitsandbytes,liger_kernel,accelerate;print(torch.__version__,transformers.__version__,peft.__version__,bitsandbytes.__version__,accelerate.__version__,torch.cuda.get_device_name(),torch.cuda.device_count())' ;;
    tests)
      EDGELORA_TOKENIZER_DIR=$PWD/.gpu-tok timeout 150 $PY -m pytest -q -x -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -30 | tee "$OUT/gpu_tests.log" ;;
    bench1b)
      timeout 420 $PY bench/bench_train.py --shape 1b --data fixed --batch 4 --steps 30 --warmup 5 --repeats ${REPEATS:-1} --out "$OUT/bench_1b_fixed.json" 2>&1 | grep -v Warning | tee "$OUT/bench_1b_fixed.log" ;;
    varlen1b)
      timeout 200 $PY bench/bench_train.py --shape 1b --data varlen --batch 16 --steps 30 --warmup 5 --repeats ${REPEATS:-1} --out "$OUT/bench_1b_varlen.json" 2>&1 | grep -v Warning | tee "$OUT/bench_1b_varlen.log" ;;
    explore)
      timeout 300 $PY bench/bench_train.py --shape 1b --data fixed --batch 4 --steps 20 --warmup 5 --profile --variants ${VARIANTS:-peer,ours,ours-r8,ours-r0,ours-d0} --out "$OUT/explore_1b.json" 2>&1 | grep -v -i "warning\|Loading weights\|it/s\]" | tee "$OUT/explore_1b.log" ;;
    final1b)
      timeout 330 $PY bench/bench_train.py --shape 1b --data fixed --batch 4 --steps 30 --warmup 5 --repeats 2 --variants peer,ours,ours-c,ours-c-r4 --out "$OUT/final_1b_fixed.json" 2>&1 | grep -v -i "warning\|Loading weights\|it/s\]\|Backend impl" | tee "$OUT/final_1b_fixed.log" ;;
    finalvar)
      timeout 200 $PY bench/bench_train.py --shape 1b --data varlen --batch 16 --steps 30 --warmup 5 --repeats 1 --variants peer,ours,ours-c-r4 --out "$OUT/final_1b_varlen.json" 2>&1 | grep -v -i "warning\|Loading weights\|it/s\]\|Backend impl" | tee "$OUT/final_1b_varlen.log" ;;
    bench8b)
      timeout 540 $PY bench/bench_train.py --shape 8b --data fixed --batch 2 --steps 15 --warmup 4 --repeats 1 --variants ${VARIANTS:-peer,ours,ours-c} --out "$OUT/bench_8b_fixed.json" 2>&1 | grep -v -i "warning\|Loading weights\|it/s\]\|Backend impl" | tee "$OUT/bench_8b_fixed.log" ;;
    budget8b)  # 8B within the peer's memory: explicit setting and automatic choice (bench/RESULTS.md)
      timeout 330 $PY bench/bench_train.py --shape 8b --data fixed --batch 2 --steps 15 --warmup 4 --repeats 2 --variants ${VARIANTS:-peer,ours-r24-c128,ours-m16.44} --out "$OUT/budget_8b_fixed.json" 2>&1 | grep -v -i "warning\|Loading weights\|it/s\]\|s/it\]\|Backend impl" | tee "$OUT/budget_8b_fixed.log" ;;
    site)
      mkdir -p /tmp/site && tar -xJf site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
      $PY -c 'import torch,transformers,peft,bitsandbytes,liger_kernel,unsloth,trl;print(torch.__version__,transformers.__version__,peft.__version__,bitsandbytes.__version__,unsloth.__version__,trl.__version__,torch.cuda.get_device_name())' 2>&1 | tail -3 ;;
    fasttests)
      EDGELORA_TOKENIZER_DIR=$PWD/tok timeout ${T:-90} $PY -m pytest -q -x -m gpu tests/gpu/test_train_fast.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.log" ;;
    u1b)
      timeout 280 $PY $B --shape 1b --data fixed --batch 4 --steps 20 --warmup 5 --time-limit 230 --variants ${VARIANTS:-unsloth,ours,ours-mU} --out "$OUT/u1b_fixed.json" 2>&1 | grep -v -i "$FILTER" | tee "$OUT/u1b_fixed.log" ;;
    u1bvar)
      timeout 180 $PY $B --shape 1b --data varlen --batch 16 --steps 20 --warmup 5 --time-limit 120 --variants ${VARIANTS:-unsloth,ours,ours-mU} --out "$OUT/u1b_varlen.json" 2>&1 | grep -v -i "$FILTER" | tee "$OUT/u1b_varlen.log" ;;
    u8b)
      timeout 270 $PY $B --shape 8b --data fixed --batch 2 --steps 12 --warmup 4 --time-limit 220 --variants ${VARIANTS:-unsloth,ours,ours-mU} --out "$OUT/u8b_fixed.json" 2>&1 | grep -v -i "$FILTER" | tee "$OUT/u8b_fixed.log" ;;
    u8bvar)
      timeout 190 $PY $B --shape 8b --data varlen --batch 16 --steps 12 --warmup 4 --time-limit 120 --variants ${VARIANTS:-unsloth,ours,ours-mU} --out "$OUT/u8b_varlen.json" 2>&1 | grep -v -i "$FILTER" | tee "$OUT/u8b_varlen.log" ;;
  esac
done
