#!/usr/bin/env bash
# The real CPU runs behind docs/results.md and docs/training.md, in the order they were run.
# Needs `make setup`, `maml-en-llm data bigbench` (default location) and ../shared/data/classic.
# Writes runs/results/ (git-ignored); each step logs its wall time to runs/results/times.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1
OUT=runs/results
mkdir -p "$OUT"
timed() { local name=$1; shift; local t0=$(date +%s); "$@" > "$OUT/$name.log" 2>&1; echo "$name $(( $(date +%s) - t0 )) s: $*" >> "$OUT/times.txt"; }

# 1. one short training run per method (loss curves), BIG-bench bb_demo (short prompts), cpu-demo recipe, 20 steps
for method in metaicl ict multitask0 fomaml maml reptile; do
  timed "train-$method" maml-en-llm train --method "$method" --config cpu-demo --split bb_demo \
    --out "$OUT/train/$method" steps=20 checkpoint_every=0
done
python scripts/plot_losses.py "$OUT"/train/* --out docs/img/loss_curves.png > "$OUT/loss_summary.md"

# 2. equal-budget comparisons: none / MetaICL / MAML-en-LLM, in context and after 2 adaptation steps
# (bb_hr_to_lr's training tasks have long inputs: ~3,500 tokens per meta-step at k=4, 22 s per MetaICL step on
#  this CPU, so it runs at k=2 and 20 steps)
COMMON=(--methods none,metaicl,maml --config cpu-demo --seeds 100,13,21 --max-test 20 --adapt-steps 2)
timed compare-tweets_to_reviews maml-en-llm compare --data-dir ../shared/data/classic --split tweets_to_reviews \
  "${COMMON[@]}" --steps 40 --k 4 --out "$OUT/tweets_to_reviews"
timed compare-bb_demo maml-en-llm compare --split bb_demo "${COMMON[@]}" --steps 40 --k 4 --out "$OUT/bb_demo"
timed compare-bb_hr_to_lr maml-en-llm compare --split bb_hr_to_lr "${COMMON[@]}" --steps 20 --k 2 --out "$OUT/bb_hr_to_lr"
echo done >> "$OUT/times.txt"
