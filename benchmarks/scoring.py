"""Option scoring speed: ours (`scoring.score_shared`) against MetaICL's naive per-option scoring and
lm-evaluation-harness's `HFLM._loglikelihood_tokens`, on the same token ids.

Three workloads built from the BIG-bench collection (`maml-en-llm data bigbench`), seed 100, the first `--n-test`
test examples of one task each, MetaICL's direct newline prompts (`prompts.scoring_sequences`):

* short: 16-shot arithmetic-1_digit_addition (short questions, 6-7 short options per example);
* long: 8-shot multiemo-medicine_sentence_ru (Russian medical reviews, about 85 SmolLM2 tokens each, 4 options);
* 4shot: 4-shot odd_one_out (short word lists, 5 options).

Each request is one (context, option) pair; all three scorers get exactly these ids and return its summed
log-likelihood. naive = MetaICL's `run_model` scoring, one whole sequence per request and forward pass, logits at
every position, masked cross-entropy (MetaICL also pads every sequence to min(256 k, 1024) tokens; that is left
out, so naive here is faster than MetaICL itself). lm-eval = `HFLM(pretrained=model)` with its
defaults (logits cache on) and the same batch size. Every scorer runs once untimed (warm-up; its log-likelihoods
are compared), then `--repeats` timed rounds, the scorers' order rotating each round so machine load hits them
alike; the median is reported.

    python benchmarks/scoring.py --model smollm2-135m --repeats 3 --json scoring.json > scoring.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

WORKLOADS = [
    {"name": "short", "task": "arithmetic-1_digit_addition", "k": 16,
     "shape": "16-shot, 6-7 short options, short questions"},
    {"name": "long", "task": "multiemo-medicine_sentence_ru", "k": 8,
     "shape": "8-shot, 4 options, texts of about 85 tokens"},
    {"name": "4shot", "task": "odd_one_out", "k": 4, "shape": "4-shot, 5 options, short word lists"},
]
TARGETS = {"short": {"lm_eval": 6.0, "naive": 15.0}, "long": {"lm_eval": 4.0, "naive": 8.0}}
SEED = 100


def build_requests(tokenizer, data_dir, workload: dict, n_test: int, fmt) -> tuple[list[int], list[tuple], int]:
    """The shared prefix, the (context, target) requests and MetaICL's max_length for one workload."""
    from maml_en_llm.prompts import encode_prefix, make_tokenize, scoring_sequences, sequence_cap
    from maml_en_llm.tasks import load_demonstrations, load_test

    tokenize = make_tokenize(tokenizer)
    demos = load_demonstrations(data_dir, workload["task"], SEED, workload["k"])
    tests = load_test(data_dir, workload["task"], SEED, n_test)
    prefix = encode_prefix(tokenize, demos, fmt)
    requests = [s for example in tests for s in scoring_sequences(tokenize, prefix, workload["k"], example, fmt)]
    return prefix, requests, sequence_cap(workload["k"])


def score_ours(model, prefix, requests, pad_id: int, batch_size: int) -> list[float]:
    from maml_en_llm.scoring import score_shared

    losses, _ = score_shared(model, prefix, requests, pad_id, batch_size)
    return [-loss * len(target) for loss, (_, target) in zip(losses, requests)]


def score_naive(model, requests) -> list[float]:
    """One forward pass per request, the whole sequence, logits at every position and a masked cross-entropy:
    MetaICL's `MetaICLModel.run_model`, without its padding of every sequence to max_length (which would multiply
    the tokens run by 1024 / sequence length on top)."""
    device = next(model.parameters()).device
    sums = []
    with torch.no_grad():
        for context, target in requests:
            input_ids = torch.tensor([context + target], device=device)
            logits = model(input_ids=input_ids).logits[0, :-1].float()
            losses = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="none")
            sums.append(-float(losses[len(context) - 1:].sum()))
    return sums


def score_lm_eval(harness, requests) -> list[float]:
    results = harness._loglikelihood_tokens([(("", ""), list(c), list(t)) for c, t in requests], disable_tqdm=True)
    return [loglikelihood for loglikelihood, _ in results]


def max_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None, help="BIG-bench collection (default: the cache)")
    parser.add_argument("--n-test", type=int, default=10, help="test examples per workload")
    parser.add_argument("--batch-size", type=int, default=16, help="ours and lm-eval (eval's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, a descheduled second thread stalls every op)")
    parser.add_argument("--workloads", default=",".join(w["name"] for w in WORKLOADS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from lm_eval.models.huggingface import HFLM

    import lm_eval
    from maml_en_llm.models import load_model_and_tokenizer
    from maml_en_llm.paths import default_data_dir
    from maml_en_llm.prompts import prompt_format
    from maml_en_llm.scoring import pad_id_of, score_shared, unique_tokens

    torch.set_num_threads(args.threads)
    data_dir = args.data_dir or default_data_dir()
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)
    model.eval()
    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    fmt = prompt_format(tokenizer, "direct")
    pad_id = pad_id_of(tokenizer)
    chosen = [w for w in WORKLOADS if w["name"] in args.workloads.split(",")]

    rows = []
    for workload in chosen:
        prefix, requests, max_length = build_requests(tokenizer, data_dir, workload, args.n_test, fmt)
        with torch.inference_mode():
            _, processed = score_shared(model, prefix, requests, pad_id, args.batch_size)
        scorers = {
            "ours": lambda p=prefix, r=requests: score_ours(model, p, r, pad_id, args.batch_size),
            "naive": lambda r=requests: score_naive(model, r),
            "lm_eval": lambda r=requests: score_lm_eval(harness, r),
        }
        loglik = {name: run() for name, run in scorers.items()}  # warm-up, and the values compared
        lengths = [len(t) for _, t in requests]
        per_token = {name: [v / n for v, n in zip(values, lengths)] for name, values in loglik.items()}
        rows.append({**workload, "requests": len(requests), "examples": args.n_test, "max_length": max_length,
                     "tokens": sum(len(c) + len(t) for c, t in requests), "unique_tokens": unique_tokens(requests),
                     "tokens_processed_ours": processed, "metaicl_padded_tokens": len(requests) * max_length,
                     "prefix_tokens": len(prefix), "scorers": scorers, "seconds": {name: [] for name in scorers},
                     "max_loglik_diff": {"ours_vs_naive": max_difference(loglik["ours"], loglik["naive"]),
                                         "ours_vs_lm_eval": max_difference(loglik["ours"], loglik["lm_eval"]),
                                         "naive_vs_lm_eval": max_difference(loglik["naive"], loglik["lm_eval"])},
                     "max_loss_diff_ours_vs_naive": max_difference(per_token["ours"], per_token["naive"])})
        print(f"{workload['name']}: {len(requests)} requests, warm-up done", file=sys.stderr)

    names = ["ours", "naive", "lm_eval"]
    for round_ in range(args.repeats):
        order = names[round_ % 3:] + names[:round_ % 3]
        for row in rows:
            for name in order:
                started = time.perf_counter()
                row["scorers"][name]()
                row["seconds"][name].append(time.perf_counter() - started)
        print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr)

    for row in rows:
        del row["scorers"]
        row["median_s"] = {name: statistics.median(times) for name, times in row["seconds"].items()}
        row["speedup"] = {name: row["median_s"][name] / row["median_s"]["ours"] for name in ("naive", "lm_eval")}
        row["targets"] = TARGETS.get(row["name"], {})
    report = {"model": args.model, "batch_size": args.batch_size,
              "repeats": args.repeats, "n_test": args.n_test, "lm_eval": lm_eval.__version__,
              "torch_threads": torch.get_num_threads(), "workloads": rows}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    print(markdown(report))


def markdown(report: dict) -> str:
    """The tables docs/benchmarks.md shows."""
    lines = ["| workload | task (k) | requests | tokens | unique tokens | ours runs | ours s | lm-eval s | naive s "
             "| x lm-eval | x naive |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["workloads"]:
        s = row["median_s"]
        lines.append(f"| {row['name']}: {row['shape']} | {row['task']} ({row['k']}) | {row['requests']} | {row['tokens']} "
                     f"| {row['unique_tokens']} | {row['tokens_processed_ours']} | {s['ours']:.2f} | {s['lm_eval']:.2f} "
                     f"| {s['naive']:.2f} | {row['speedup']['lm_eval']:.1f} | {row['speedup']['naive']:.1f} |")
    lines += ["", "| workload | max abs log-likelihood difference (nats): ours-naive | ours-lm-eval | naive-lm-eval "
              "| max per-token loss difference ours-naive |", "|---|---|---|---|---|"]
    for row in report["workloads"]:
        d = row["max_loglik_diff"]
        lines.append(f"| {row['name']} | {d['ours_vs_naive']:.1e} | {d['ours_vs_lm_eval']:.1e} "
                     f"| {d['naive_vs_lm_eval']:.1e} | {row['max_loss_diff_ours_vs_naive']:.1e} |")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for row in report["workloads"]:
        for other, target in row["targets"].items():
            measured = row["speedup"][other]
            verdict = "met" if measured >= target else f"missed by {target / measured:.2f}x"
            lines.append(f"| {row['name']}: >= {target:g}x faster than {other.replace('_', '-')} | {measured:.1f}x "
                         f"| {verdict} |")
    ok = all(row["max_loss_diff_ours_vs_naive"] <= 1e-4 for row in report["workloads"])
    lines.append(f"| losses equal naive's within 1e-4 (fp32) | "
                 f"{max(row['max_loss_diff_ours_vs_naive'] for row in report['workloads']):.1e} | "
                 f"{'met' if ok else 'missed'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
