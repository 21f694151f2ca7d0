#!/usr/bin/env bash
# Run on the GPU machine from the repo root: installs carried wheels, runs the GPU tests
# and the training benchmark, logs under $OUT (or ./gpu-out). Usage: bench/gpu_session.sh PHASE...
# Phases: setup tests bench1b varlen1b bench8b budget8b
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
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
  esac
done
