#!/usr/bin/env bash
# The one-GPU check, under 8 minutes on one H100, offline, from a clone (the package need not be installed):
#   1. the device-aware tests on CUDA (lm, scoring, the meta-gradient math, a short train of every method);
#   2. LoRA MetaICL meta-steps of a SmolLM2-135M-shaped model under torch.profiler, the tasks one forward pass
#      each and then batched into one (batch_tasks=true): which operators take the CPU's and the GPU's time, and
#      how busy the GPU is (benchmarks/gpu_step.py --profile);
#   3. meta-step throughput of metaicl, fomaml and maml, full and LoRA, bf16, on a SmolLM2-135M-shaped and a
#      1B Llama-shaped model built from configs with random weights (benchmarks/gpu_step.py);
#   4. the rest of the test suite, in the time left if over a minute (train() picks CUDA when it sees it).
#
#   bash scripts/gpu_check.sh                     # results in $OUT (default ./gpu_check)
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh # the same plumbing on CPU with a tiny model (a minute or two)
#
# $OUT/env.txt            versions and device
# $OUT/pytest_cuda.txt    step 1       $OUT/pytest_rest.txt   step 4
# $OUT/profile.txt        step 2, operator tables
# $OUT/gpu_step.json      step 3, one object per row (steps/s, tokens/s, peak GPU memory, MFU, FLOP counts)
# $OUT/gpu_step.md        step 3 as a table    $OUT/gpu_step.log   steps 2-3, errors
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check}"
PY="${PYTHON:-python}"
BUDGET="${BUDGET:-470}"  # seconds for the whole check
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=0
left() { echo $(( BUDGET - SECONDS - ${1:-0} > 30 ? BUDGET - SECONDS - ${1:-0} : 30 )); }
DEVICE=cuda
BENCH=(--models smollm2-135m,llama-1b --dtype bfloat16 --steps 3)
PROFILE=(--models smollm2-135m --dtype bfloat16)
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu
    BENCH=(--models tiny --device cpu --dtype float32 --steps 1 --k 1 --example-chars 30 --tasks-per-step 2)
    PROFILE=(--models tiny --device cpu --dtype float32 --k 1 --example-chars 30 --tasks-per-step 2)
fi

"$PY" - > "$OUT/env.txt" <<'PYEOF'
import importlib
import torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
      torch.cuda.get_device_name(0) if cuda else "NO CUDA DEVICE", "|", torch.cuda.device_count(), "GPU(s)")
for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "yaml", "tqdm", "scipy",
             "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
        print(name, "MISSING")
PYEOF
cat "$OUT/env.txt"
if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device"; exit 2; }
fi
has_pytest=1
"$PY" -c "import pytest" 2>/dev/null || has_pytest=0

echo "== 1. device-aware tests on $DEVICE"
if [ "$has_pytest" = 1 ]; then
    MAML_EN_LLM_TEST_DEVICE=$DEVICE timeout 180 "$PY" -m pytest -q -m device -p no:cacheprovider \
        --continue-on-collection-errors tests > "$OUT/pytest_cuda.txt" 2>&1 || failed=1
    tail -n 25 "$OUT/pytest_cuda.txt"
else
    echo "pytest is not installed here: tests skipped" | tee "$OUT/pytest_cuda.txt"
fi

echo "== 2. where a meta-step's time goes: two profiled rows (${SECONDS}s used)"
: > "$OUT/profile.txt"; : > "$OUT/gpu_step.log"
for batched in false true; do  # the step's tasks one forward pass each, then all in one (batch_tasks)
    timeout "$(left 240)" "$PY" benchmarks/gpu_step.py "${PROFILE[@]}" --methods metaicl --variants lora --steps 2 \
        --set batch_tasks=$batched --profile "$OUT/profile.txt" > /dev/null 2>> "$OUT/gpu_step.log" || failed=1
done
grep -h '^## ' "$OUT/profile.txt" || echo "no profile; see $OUT/gpu_step.log"

echo "== 3. throughput (${SECONDS}s used)"
timeout "$(left 60)" "$PY" benchmarks/gpu_step.py "${BENCH[@]}" --methods metaicl,fomaml,maml --variants full,lora \
    --row-timeout 120 --json "$OUT/gpu_step.json" > /dev/null 2>> "$OUT/gpu_step.log" || failed=1
if [ -s "$OUT/gpu_step.json" ]; then
    "$PY" benchmarks/gpu_step.py --table "$OUT/gpu_step.json" | tee "$OUT/gpu_step.md"
else
    echo "no rows measured; see $OUT/gpu_step.log"; tail -n 20 "$OUT/gpu_step.log"
fi

echo "== 4. the rest of the suite (${SECONDS}s used)"
if [ "$has_pytest" = 1 ] && [ "$DEVICE" = cuda ] && [ $(( BUDGET - SECONDS )) -gt 60 ]; then
    timeout "$(left)" "$PY" -m pytest -q -m "not device" -p no:cacheprovider --continue-on-collection-errors tests \
        > "$OUT/pytest_rest.txt" 2>&1 || failed=1
    tail -n 25 "$OUT/pytest_rest.txt"
fi
echo "== done in ${SECONDS}s; $([ "$failed" = 0 ] && echo 'all passed' || echo 'SOMETHING FAILED: see above')"
exit "$failed"
