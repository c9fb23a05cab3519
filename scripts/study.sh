#!/usr/bin/env bash
# The runs behind docs/results.md, one command per table. Needs `make setup` and `maml-en-llm data bigbench`
# (default location). Each torch process uses one thread, so two commands can share a 2-core machine; run them
# from the repository root. Every command resumes where it stopped if run again (finished runs and evaluations
# are reused from its --out folder).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-runs/study}
EVAL=(--k 4 --seeds 100,13,21,42,87 --max-test 100)

gpu_ft_random_seeds() {  # TOKENS OUT: section 5c's command
  env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/social.json \
    --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics zero-shot --budget "tokens=$1" \
    "${EVAL[@]}" --device cuda --dtype bfloat16 --batch-size 32 --out "$2" --train-seeds 100,13,21,42,87 \
    --jobs 5 lora_rank=0 lr=1e-4 train_labels=random batch_tasks=true checkpoint_every=0
}

gpu_ft_symbols_seeds() {  # K SPLIT JOBS BATCH DIAGNOSTICS OUT: section 5d's commands
  env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split "$2" \
    --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics "$5" --budget tokens=1000000 \
    --k "$1" --seeds 100,13,21,42,87 --max-test 100 --device cuda --dtype bfloat16 --batch-size "$4" --out "$6" \
    --train-seeds 100,13,21,42,87 --jobs "$3" lora_rank=0 lr=1e-4 train_labels=symbols batch_tasks=true \
    checkpoint_every=0
}

case "${1:-}" in
  # Table 1: no meta-training vs MetaICL vs first-order vs second-order MAML-en-LLM, equal training tokens
  methods)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,fomaml,maml --diagnostics zero-shot,random --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/social" ;;
  # Table 1b: the same recipe and budget on a second BIG-bench setting (no meta-training vs MetaICL)
  logic)
    maml-en-llm compare --split study/splits/logic.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics none --budget tokens=100000 "${EVAL[@]}" --out "$OUT/logic" ;;
  # Table 2: the two shared-moment variants of MAML-en-LLM, same budget
  moments)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods maml --sweep inner_optimizer=shared-adam-copy,shared-adam-chain --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/maml-moments" ;;
  # Table 1c: equal wall-clock instead of equal tokens: each method trains floor(900 s / its timed seconds per
  # meta-step) steps (900 s is what MetaICL's 100k tokens took on the study machine)
  wallclock)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,fomaml,maml --diagnostics none --budget seconds=900 "${EVAL[@]}" --out "$OUT/wallclock" ;;
  # Table 1d: the models of Table 1, also fine-tuned on each seed's 4 demonstrations (one Adam step at 1e-4)
  adapted)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,maml --diagnostics none --budget tokens=100000 --adapt-steps 1 --adapt-lr 1e-4 \
      "${EVAL[@]}" --out "$OUT/adapted" ;;
  # Table 1d': the adaptation setting chosen on dev examples (adapt-search), applied to the models of Table 1
  adapted-dev)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,maml --diagnostics none --budget tokens=100000 --adapt-steps 1 --adapt-lr 3e-6 \
      --adapt-optimizer adam "${EVAL[@]}" --out "$OUT/adapted-dev" ;;
  # Section 4: adaptation settings for the untrained model, scored on each seed's 16 dev examples (not the test
  # set) in context and after adaptation; adapted-dev uses the best of them
  adapt-search)
    for setting in "1 1e-5 adam" "1 3e-6 adam" "1 1e-1 sgd" "1 1 sgd" "4 3e-6 adam"; do
      read -r steps lr optimizer <<< "$setting"
      [ -f "$OUT/adapt-dev/$optimizer-$lr-s$steps/results.json" ] && continue
      maml-en-llm eval --split study/splits/social.json --k 4 --seeds 100,13,21,42,87 --examples dev \
        --adapt-steps "$steps" --adapt-lr "$lr" --adapt-optimizer "$optimizer" --out "$OUT/adapt-dev/$optimizer-$lr-s$steps"
    done ;;
  # Section 4: the untrained model and Table 1's MetaICL model scored with the noisy channel (needs `methods` first)
  channel)
    maml-en-llm eval --split study/splits/social.json --prompt channel "${EVAL[@]}" --out "$OUT/channel/none"
    maml-en-llm eval --model "$OUT/social/runs/metaicl-f19fcb85/final" --split study/splits/social.json \
      --prompt channel "${EVAL[@]}" --out "$OUT/channel/metaicl" ;;
  # Table 1e: limited meta-training data: each training task keeps its first 10 examples (the fewest that split
  # into a disjoint support and query part at k=4)
  limited)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,maml --diagnostics none --budget tokens=100000 "${EVAL[@]}" --out "$OUT/limited" \
      max_examples_per_task=10 ;;
  # Section 4: MetaICL trained and scored with the noisy channel (compare --prompt sets both directions)
  channel-train)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --prompt channel --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/channel-train" ;;
  # Section 4: MetaICL at a 4x higher LoRA learning rate (the lr=5e-4 row is Table 1's run, identical by its hash)
  lr)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --sweep lr=5e-4,2e-3 --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/lr" ;;
  # Section 4: MetaICL trained on demonstrations whose label words are arbitrary symbols, scored with gold labels
  # and with symbol labels
  symbols-train)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot,symbols --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/symbols-train" train_labels=symbols ;;
  # Section 4: MetaICL trained on demonstrations with random labels (Min et al., 2022), scored with gold labels
  random-train)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/random-train" train_labels=random ;;
  # Section 4, 3x the budget: gold-label MetaICL (section 1's recipe) and random-label MetaICL at 300k tokens
  gold-300k)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=300000 "${EVAL[@]}" --out "$OUT/gold-300k" ;;
  random-300k)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=300000 "${EVAL[@]}" \
      --out "$OUT/random-300k" train_labels=random ;;
  # Section 4: MetaICL with LoRA at a learning rate below section 1's (1e-4 instead of 5e-4)
  lr-low)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" --out "$OUT/lr-low" \
      lr=1e-4 ;;
  # Section 4: MetaICL with full fine-tuning (no LoRA) at 1e-4, a LoRA-like rate for full fine-tuning
  full-ft)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" --out "$OUT/full-ft" \
      lora_rank=0 lr=1e-4 ;;
  # Section 4: full fine-tuning at 1e-4 with random demonstration labels, and at 3e-4 with gold labels
  full-ft-random)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/full-ft-random" lora_rank=0 lr=1e-4 train_labels=random ;;
  full-ft-3e-4)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/full-ft-3e-4" lora_rank=0 lr=3e-4 ;;
  # Section 4: random labels under full fine-tuning at three times the budget
  full-ft-random-300k)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=300000 "${EVAL[@]}" \
      --out "$OUT/full-ft-random-300k" lora_rank=0 lr=1e-4 train_labels=random ;;
  # Section 4b: training seeds. MetaICL trained with seeds 100 (the default: the runs above), 13 and 21, each against
  # the untrained model, with their cell-by-cell mean: full fine-tuning at 1e-4, gold and random labels, and
  # section 1's LoRA recipe
  full-ft-seeds)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/full-ft-seeds" --sweep seed=100,13,21 lora_rank=0 lr=1e-4 ;;
  full-ft-random-seeds)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/full-ft-random-seeds" --sweep seed=100,13 lora_rank=0 lr=1e-4 train_labels=random ;;
  lora-seeds)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/lora-seeds" --sweep seed=100,13 ;;
  # Section 4b: random-label full fine-tuning at 300k tokens (section 4's best row) with a second training seed
  full-ft-random-300k-seeds)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics zero-shot --budget tokens=300000 "${EVAL[@]}" \
      --out "$OUT/full-ft-random-300k-seeds" --sweep seed=100,13 lora_rank=0 lr=1e-4 train_labels=random ;;
  # Section 1f: table 1's headline (maml vs metaicl, LoRA recipe) with every method trained with five seeds
  lora-train-seeds)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,maml --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/lora-train-seeds" --train-seeds 100,13,21,42,87 ;;
  # Section 1e: second-order MAML-en-LLM with the inner steps' Adam epsilon raised to 1e-4 (training.md, the
  # first meta-step under LoRA); the outer AdamW keeps 1e-8
  inner-eps)
    maml-en-llm compare --split study/splits/social.json --config study/recipes/lora-k4.yaml \
      --methods none,maml --diagnostics none --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/inner-eps" inner_adam_eps=1e-4 ;;
  # Section 5: on one GPU, MetaICL with 4 support + 4 query instances per task and a 170 s budget (on an H200 the
  # timed probe made it 76 steps, 755k tokens; --budget steps=76 repeats those steps on any GPU), bf16; torch keeps
  # its threads
  gpu)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/social.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics zero-shot --budget seconds=170 \
      "${EVAL[@]}" --device cuda --dtype bfloat16 --batch-size 32 --out "$OUT/gpu" \
      support_size=4 query_size=4 checkpoint_every=0 ;;
  # Section 5b: on one GPU, random-label MetaICL with 16 tasks x (2 support + 2 query) instances per meta-step in
  # one padded batch (batch_tasks=true) and a 290 s budget (on an H200: 507 steps, 10.4M tokens; --budget steps=507
  # repeats those steps on any GPU), bf16
  gpu-random)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/social.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics zero-shot --budget seconds=290 \
      "${EVAL[@]}" --device cuda --dtype bfloat16 --batch-size 32 --out "$OUT/gpu-random" \
      train_labels=random tasks_per_step=16 support_size=2 query_size=2 batch_tasks=true checkpoint_every=0 ;;
  # Section 5c: on one GPU, section 4b's random-label full fine-tuning (lr 1e-4) with five training seeds, at 300k
  # and at 1M tokens, the five seeds trained and evaluated at once (--jobs 5: about 66 GiB of GPU memory), bf16
  gpu-ft-random-300k-seeds)
    gpu_ft_random_seeds 300000 "$OUT/gpu-ft-random-300k-seeds" ;;
  gpu-ft-random-1m-seeds)
    gpu_ft_random_seeds 1000000 "$OUT/gpu-ft-random-1m-seeds" ;;
  # Section 5d: symbol-label MetaICL (full fine-tuning, 1M tokens, five training seeds) on a GPU, k = 4 and k = 16
  gpu-ft-symbols-1m-seeds)
    gpu_ft_symbols_seeds 4 study/splits/social.json 6 32 zero-shot,symbols "$OUT/gpu-ft-symbols-1m-seeds" ;;
  gpu-ft-symbols-k16-1m-seeds)
    gpu_ft_symbols_seeds 16 study/splits/social-k16.json 4 16 zero-shot "$OUT/gpu-ft-symbols-k16-1m-seeds" ;;
  # Section 5d: the untrained model at k = 16 and zero-shot, on the CPU (float32)
  k16-none)
    maml-en-llm eval --split study/splits/social-k16.json --k 16 --seeds 100,13,21,42,87 --max-test 100 \
      --out "$OUT/k16-none/icl"
    maml-en-llm eval --split study/splits/social-k16.json --k 0 --seeds 100,13,21,42,87 --max-test 100 \
      --out "$OUT/k16-none/zero-shot" ;;
  # Section 6: the untrained model on every built-in test task's dev examples, k = 4 and zero-shot
  survey)
    for k in 4 0; do
      maml-en-llm eval --split study/splits/survey.json --k "$k" --seeds 100,13,21,42,87 --examples dev \
        --out "$OUT/survey/k$k"
    done ;;
  # Section 6: section 1's MetaICL recipe on the headroom split (one training seed; the two rows in parallel)
  headroom)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics zero-shot --budget tokens=100000 \
      "${EVAL[@]}" --jobs 2 --out "$OUT/headroom" ;;
  # Section 6: the same recipe with four more training seeds (tested against `headroom`'s rows by pair_evals.py)
  headroom-seeds)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods metaicl --diagnostics zero-shot --budget tokens=100000 \
      "${EVAL[@]}" --train-seeds 13,21,42,87 --jobs 2 --out "$OUT/headroom-seeds" ;;
  # Section 6: first- and second-order MAML-en-LLM against MetaICL on headroom at section 1's recipe (reuses
  # `headroom`'s rows); one training at a time (second-order MAML's peaks at 16.6 GiB), evaluations beside it
  headroom-methods)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl,fomaml,maml --diagnostics zero-shot,random \
      --budget tokens=100000 "${EVAL[@]}" --jobs 2 --train-jobs 1 --out "$OUT/headroom" ;;
  # Section 6: second-order MAML-en-LLM with training seeds 13 and 21 too, against MetaICL's seeds 100, 13 and 21
  # (copy runs/study/headroom's and headroom-seeds' runs and evals into the --out folder to reuse them)
  headroom-maml-seeds)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl,maml --diagnostics zero-shot \
      --budget tokens=100000 "${EVAL[@]}" --train-seeds 100,13,21 --jobs 2 --train-jobs 1 \
      --out "$OUT/headroom-maml-seeds" ;;
  # Section 6: all four rows with three training seeds on headroom, random-label demonstrations too (copy the
  # runs and evals of headroom-methods and headroom-maml-seeds into the --out folder to reuse them)
  headroom-all-seeds)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl,fomaml,maml --diagnostics zero-shot,random \
      --budget tokens=100000 "${EVAL[@]}" --train-seeds 100,13,21 --jobs 2 --train-jobs 1 \
      --out "$OUT/headroom-all-seeds" ;;
  # Section 6: the two shared-moment variants of second-order MAML-en-LLM on headroom (copy is headroom-methods'
  # maml run: copy it into the --out folder to reuse it)
  headroom-moments)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods maml --sweep inner_optimizer=shared-adam-copy,shared-adam-chain \
      --diagnostics zero-shot --budget tokens=100000 "${EVAL[@]}" --jobs 2 --train-jobs 1 \
      --out "$OUT/headroom-moments" ;;
  # Section 6: shared-adam-chain with training seeds 13 and 21 too (copy headroom-moments' chain run and evals, and
  # headroom-all-seeds' untrained evals, into the --out folder to reuse them)
  headroom-chain-seeds)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,maml --diagnostics zero-shot,random \
      --budget tokens=100000 "${EVAL[@]}" --train-seeds 100,13,21 --jobs 2 --train-jobs 1 \
      --out "$OUT/headroom-chain-seeds" inner_optimizer=shared-adam-chain ;;
  # Section 6: copy-maml (the default shared-adam-copy) at half the recipe's learning rate, inner and outer: does a
  # shorter step alone give chain's score? (copy the untrained row's evals into the --out folder to reuse them)
  headroom-copy-half-lr)
    maml-en-llm compare --split study/splits/headroom.json --config study/recipes/lora-k4.yaml \
      --methods none,maml --diagnostics none --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/headroom-copy-half-lr" lr=2.5e-4 inner_lr=2.5e-4 ;;
  # Section 6: MetaICL at half the recipe's learning rate, the same check for the baseline
  headroom-metaicl-half-lr)
    maml-en-llm compare --split study/splits/headroom.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl --diagnostics none --budget tokens=100000 "${EVAL[@]}" \
      --out "$OUT/headroom-metaicl-half-lr" lr=2.5e-4 ;;
  # Section 6: headroom-moments' chain run (copy it into the --out folder) adapted as headroom-adapted-dev
  headroom-chain-adapted)
    maml-en-llm compare --split study/splits/headroom.json --config study/recipes/lora-k4.yaml \
      --methods none,maml --diagnostics none --budget tokens=100000 --adapt-steps 1 --adapt-lr 3e-6 \
      --adapt-optimizer adam "${EVAL[@]}" --out "$OUT/headroom-chain-adapted" inner_optimizer=shared-adam-chain ;;
  # Section 6: shared-adam-chain at headroom-wallclock's 1,000 s
  headroom-chain-wallclock)
    maml-en-llm compare --split study/splits/headroom.json --config study/recipes/lora-k4.yaml \
      --methods none,maml --diagnostics none --budget seconds=1000 "${EVAL[@]}" \
      --out "$OUT/headroom-chain-wallclock" inner_optimizer=shared-adam-chain ;;
  # Section 6: headroom's models of headroom-methods (copy runs/study/headroom/runs into the --out folder to reuse
  # them), also fine-tuned on each seed's 4 demonstrations: section 1c's dev-chosen setting (one Adam step at 3e-6)
  headroom-adapted-dev)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --config study/recipes/lora-k4.yaml --methods none,metaicl,fomaml,maml --diagnostics none \
      --budget tokens=100000 --adapt-steps 1 --adapt-lr 3e-6 --adapt-optimizer adam "${EVAL[@]}" --jobs 2 \
      --out "$OUT/headroom-adapted-dev" ;;
  # Section 6: equal wall-clock on headroom, 1,000 s each (about MetaICL's 100k tokens there); --budget seconds
  # times each method alone, so one worker
  headroom-wallclock)
    maml-en-llm compare --split study/splits/headroom.json --config study/recipes/lora-k4.yaml \
      --methods none,metaicl,maml --diagnostics none --budget seconds=1000 "${EVAL[@]}" \
      --out "$OUT/headroom-wallclock" ;;
  # Section 6: the untrained model with channel scoring on headroom's dev examples (direct: the survey above)
  headroom-channel-dev)
    for k in 4 0; do
      maml-en-llm eval --split study/splits/headroom.json --k "$k" --seeds 100,13,21,42,87 --examples dev \
        --prompt channel --out "$OUT/headroom-dev/channel-k$k"
    done ;;
  # Section 6: gemma3-270m (base) on headroom's dev examples, direct (the default model: the survey above)
  headroom-gemma-dev)
    for k in 4 0; do
      maml-en-llm eval --split study/splits/headroom.json --model gemma3-270m --k "$k" --seeds 100,13,21,42,87 \
        --examples dev --out "$OUT/headroom-dev/gemma-k$k"
    done ;;
  # Section 6: section 1's MetaICL recipe on headroom with gemma3-270m (base) as the model of both rows
  headroom-gemma)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --model gemma3-270m --config study/recipes/lora-k4.yaml --methods none,metaicl --diagnostics zero-shot \
      --budget tokens=100000 "${EVAL[@]}" --jobs 2 --out "$OUT/headroom-gemma" ;;
  # Section 6: the same with training seed 13 (tested against headroom-gemma's rows by pair_evals.py)
  headroom-gemma-seed13)
    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS maml-en-llm compare --split study/splits/headroom.json \
      --model gemma3-270m --config study/recipes/lora-k4.yaml --methods metaicl --diagnostics zero-shot \
      --budget tokens=100000 "${EVAL[@]}" --jobs 2 --out "$OUT/headroom-gemma-seed13" seed=13 ;;
  # Table 3: exploratory MetaICL runs with in-training validation (LABELS: gold, random or symbols;
  # PROMPT: direct or channel); the learning curve is RUN/validation.jsonl
  explore)
    maml-en-llm train --method metaicl --split study/splits/social.json \
      --out "$OUT/explore/${PROMPT:-direct}-${LABELS:-gold}" --logger none steps=200 k=4 prompt="${PROMPT:-direct}" \
      lora_rank=16 lr=5e-4 warmup_steps=10 tasks_per_step=4 support_size=1 query_size=1 \
      train_labels="${LABELS:-gold}" eval_every=25 eval_max_test=16 checkpoint_every=25 ;;
  *) echo "usage: scripts/study.sh methods|logic|moments|wallclock|adapted|adapt-search|adapted-dev|limited|channel|channel-train|lr|symbols-train|random-train|gold-300k|random-300k|lr-low|full-ft|full-ft-random|full-ft-3e-4|full-ft-random-300k|full-ft-seeds|full-ft-random-seeds|lora-seeds|full-ft-random-300k-seeds|lora-train-seeds|inner-eps|gpu|gpu-random|gpu-ft-random-300k-seeds|gpu-ft-random-1m-seeds|gpu-ft-symbols-1m-seeds|gpu-ft-symbols-k16-1m-seeds|k16-none|survey|headroom|headroom-seeds|headroom-methods|headroom-maml-seeds|headroom-all-seeds|headroom-moments|headroom-chain-seeds|headroom-copy-half-lr|headroom-metaicl-half-lr|headroom-adapted-dev|headroom-chain-adapted|headroom-wallclock|headroom-chain-wallclock|headroom-channel-dev|headroom-gemma-dev|headroom-gemma|headroom-gemma-seed13|explore   (OUT=folder, default runs/study)" >&2; exit 2 ;;
esac
