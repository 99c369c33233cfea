#!/usr/bin/env bash
# The real-model verdict: a search over every steering method on a real model's GSM8K val
# split, then the chosen configuration once on test beside the unsteered baseline. The small
# result files (final_results.json, trials.csv, best.yaml, best.json, the per-method figure and
# the command lines) are copied to $RESULTS.
#
#   bash scripts/real_verdict.sh                                   # SmolLM2 on a GPU (minutes)
#   DEVICE=cpu DTYPE=float32 TRIALS=2 VAL=4 TEST=4 NEW_TOKENS=16 bash scripts/real_verdict.sh
#
# Where the study's best trial is the unsteered baseline, `test --ckpt best` refuses (it would
# compare the baseline with itself); the verdict then tests the best steered trial, and says so.
# Environment (defaults): PYTHON (python3), MODEL (smollm2-135m-instruct), CONFIG
# (configs/smollm2.yaml), GSM8K_DIR (../shared/data/gsm8k), DEVICE (gpu), DTYPE (bfloat16),
# TRIALS (20), VAL (200), TEST (1319), TRAIN (256), BATCH (64), NEW_TOKENS (256), STUDY
# (smollm2), ROOT (lightning_logs/verdict), RESULTS (docs/results/smollm2); SEARCH_TIMEOUT
# (seconds after which no new trial starts) and ROUNDS (val shards) when set.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
study="${STUDY:-smollm2}"
root="${ROOT:-lightning_logs/verdict}"
results="${RESULTS:-docs/results/smollm2}"
common=(
    --config "${CONFIG:-configs/smollm2.yaml}"
    --model.model_name_or_path "${MODEL:-smollm2-135m-instruct}"
    --model.dtype "${DTYPE:-bfloat16}"
    --model.generation.max_new_tokens "${NEW_TOKENS:-256}"
    --trainer.accelerator "${DEVICE:-gpu}"
    --data.source "${GSM8K_DIR:-../shared/data/gsm8k}"
    --data.batch_size "${BATCH:-64}"
)
mkdir -p "$results"
search=("$py" -m steerlight.search "${common[@]}" --data.limit_val "${VAL:-200}"
    --data.limit_train "${TRAIN:-256}" --n_trials "${TRIALS:-20}" --study_name "$study"
    --root "$root" ${SEARCH_TIMEOUT:+--timeout "$SEARCH_TIMEOUT"} ${ROUNDS:+--rounds "$ROUNDS"})
printf '%q ' "${search[@]}" >"$results/commands.txt"
echo >>"$results/commands.txt"
"${search[@]}"

test_run() {  # test_run CKPT: the verdict of one checkpoint on TEST questions
    local cmd=("$py" -m steerlight test --ckpt "$1" --study_name "$study" --root "$root"
        --data.limit_test "${TEST:-1319}" --data.batch_size "${BATCH:-64}")
    printf '%q ' "${cmd[@]}" >>"$results/commands.txt"
    echo >>"$results/commands.txt"
    "${cmd[@]}"
}
folder="$root/$study"
steers=$("$py" -c "import json, sys; print(json.load(open(sys.argv[1])).get('steers', True))" \
    "$folder/best.json")
if [ "$steers" = "True" ]; then
    test_run best
else
    echo "the study's best trial is the unsteered baseline: testing its best steered trial"
    test_run "$("$py" -c "import json, sys; print(json.load(open(sys.argv[1]))['checkpoint'])" \
        "$folder/best_steered.json")"
fi
latest=$(find "$root" -name final_results.json -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
cp "$latest" "$folder/trials.csv" "$folder/best.yaml" "$folder/best.json" "$results/"
for f in "$folder/best_steered.json" "$folder/val_acc_by_method.png"; do
    if [ -f "$f" ]; then cp "$f" "$results/"; fi
done
echo "verdict files in $results: $(ls "$results" | tr '\n' ' ')"
