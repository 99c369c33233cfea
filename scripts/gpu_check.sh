#!/usr/bin/env bash
# The GPU checks of the performance issue in one run, for a session lent a GPU (about 10
# minutes on one H200): the bench at the shape of configs/gsm8k.yaml's 1.1B Llama in bf16, then
# the real-size rehearsal with 64 val questions and 256 new tokens. Results go to $OUT (or
# ./gpu-results): bench.json/.md, bench.growth.png and rehearsal.json.
set -euo pipefail
out="${OUT:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python scripts/bench --parts hook,activations,dac --device cuda --dtype bfloat16 \
    --hidden 2048 --layers 22 --heads 32 --kv-heads 4 --batch 32 --new-tokens 128 \
    --out "$out/bench.json"
python scripts/rehearse.py --device cuda --val 64 --max-new-tokens 256 --out "$out/rehearsal.json"
