"""Seconds per meta-step and peak memory of each method at equal tokens (issue: training cost targets).

Every configuration runs in its own fresh process (peak RSS is per process), on the same synthetic episode:
`--tasks` tasks, each with one support and one query sequence of `--seq-len` tokens (MetaICL sees the same
sequences as one batch per task). Each process does one warm-up meta-step, then `--steps` timed ones
(median reported), each a full outer update including AdamW.

    python benchmarks/cost.py --model smollm2-135m --seq-len 256 --tasks 2 --steps 3

Prints a Markdown table; `--json PATH` also writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = [
    ("metaicl", "-"), ("fomaml", "shared-adam-copy"), ("fomaml", "sgd"),
    ("maml", "shared-adam-copy"), ("maml", "shared-adam-chain"), ("maml", "sgd"), ("maml", "adam"), ("reptile", "adam"),
]


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(args) -> dict:
    import torch

    from maml_en_llm.algorithms import InnerOptimizer, ensure_adam_state, task_function
    from maml_en_llm.episodes import TaskEpisode
    from maml_en_llm.models import load_model_and_tokenizer
    from maml_en_llm.train import meta_step

    torch.manual_seed(0)
    second_order = args.one == "maml"
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype,
                                                attn_implementation="eager" if second_order else None)
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-5)
    ensure_adam_state(optimizer)
    inner_kind = args.inner if args.inner != "-" else "sgd"
    inner = InnerOptimizer(inner_kind, 1e-5, shared=optimizer, shared_params=params)
    step_task = task_function(args.one, inner, 1)
    g = torch.Generator().manual_seed(0)
    target = 6

    def seq():
        ids = torch.randint(100, 40000, (args.seq_len,), generator=g).tolist()
        return ids[:-target], ids[-target:]

    episode = [TaskEpisode(f"t{i}", [seq()], [seq()]) for i in range(args.tasks)]
    shares = args.one in ("maml", "fomaml", "reptile") and inner_kind == "shared-adam-chain"
    baseline = rss_mb()
    times = []
    for i in range(args.steps + 1):
        started = time.perf_counter()
        meta_step(model, params, episode, step_task, optimizer, tokenizer.pad_token_id, shares_moments=shares,
                  max_grad_norm=1.0)
        if i:
            times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": args.one, "inner_optimizer": args.inner, "s_per_step": statistics.median(times),
            "times": times, "peak_rss_mb": peak, "rss_after_setup_mb": baseline,
            "tokens_per_step": args.tasks * 2 * args.seq_len, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--configs", default=",".join(f"{m}:{i}" for m, i in CONFIGS),
                        help="comma-separated method:inner_optimizer")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inner", default="-", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    for item in args.configs.split(","):
        method, inner = item.split(":")
        cmd = [sys.executable, __file__, "--one", method, "--inner", inner, "--model", args.model, "--dtype", args.dtype,
               "--seq-len", str(args.seq_len), "--tasks", str(args.tasks), "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{item} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {item}: {rows[-1]['s_per_step']:.2f} s/step, peak {rows[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    base = next(r for r in rows if r["method"] == "metaicl")
    print("| method | inner optimizer | s/step | x metaicl | peak RSS MB | x metaicl | peak - setup MB | x metaicl |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra, base_extra = r["peak_rss_mb"] - r["rss_after_setup_mb"], base["peak_rss_mb"] - base["rss_after_setup_mb"]
        print(f"| {r['method']} | {r['inner_optimizer']} | {r['s_per_step']:.2f} | {r['s_per_step'] / base['s_per_step']:.2f} "
              f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {extra:.0f} | {extra / base_extra:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
