#!/usr/bin/env bash
# Build the offline wheel set for the GPU machine's Unsloth and edgelora runs (bench/RESULTS.md,
# issue 18): download py3.12 manylinux wheels, unzip them into one folder, drop unsloth's studio/
# and every bitsandbytes library but the CUDA 13.0 one, pack with xz (~14 MB).
# Usage: bench/unsloth_wheels.sh OUT.tar.xz   (on the machine: tar -xJf OUT.tar.xz -C /tmp/site)
set -euo pipefail
out=$(realpath -m "${1:-site.tar.xz}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=""
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  plat="$plat --platform ${p}_x86_64"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat -d "$work/whl" \
  bitsandbytes==0.50.2 liger-kernel==0.8.5 unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 'datasets<5' \
  dill multiprocess torchao cut_cross_entropy tyro docstring-parser typeguard shtab pydantic pydantic-core \
  annotated-types typing-inspection json5 nest-asyncio structlog msgspec diffusers importlib_metadata
mkdir "$work/site"
for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$work/site"; done
rm -rf "$work/site/studio" "$work/site/test"
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130.so' -delete
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
tar -cf - -C "$work/site" . | xz -T2 -6 > "$out"
ls -l "$out"
