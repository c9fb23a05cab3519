"""Seconds per meta-step and peak memory of each method, full fine-tuning and LoRA, as ratios to MetaICL.

Every configuration runs in its own fresh process (peak RSS is per process; on CUDA, peak allocated memory), on
the same synthetic episode: `--tasks` tasks, each with one support and one query sequence of `--seq-len` tokens
(MetaICL takes the same sequences as one batch per task, so every method sees the same tokens). Each process
does one warm-up meta-step, then `--steps` timed ones (median reported), each a full outer update including
AdamW, built exactly as `maml-en-llm train` builds its model (`train.build_model`: LoRA, checkpointing, eager
attention for second order).

    python benchmarks/cost.py                          # the standard suite (docs/benchmarks.md), ~25 min on 2 cores
    python benchmarks/cost.py --rows metaicl,maml:shared-adam-copy:lora --seq-len 128 --steps 2

A row is `method[:inner_optimizer][:variant...]` with variants `lora` (lora_rank=16), `gc` (gradient
checkpointing), `j2`/`j4` (inner steps), `len128`/`len512` (sequence length), `bt` (batch_tasks=true: a metaicl
step's tasks in one forward pass). Prints Markdown tables (ratios are to the metaicl row of the same LoRA/length
group); `--json PATH` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SUITE = {
    "methods (full fine-tuning, 256-token sequences, 1 inner step)": [
        "metaicl", "fomaml:shared-adam-copy", "fomaml:sgd", "maml:shared-adam-copy", "maml:shared-adam-chain",
        "maml:sgd", "maml:adam", "reptile:adam"],
    "LoRA (rank 16, all linear layers)": ["metaicl:-:lora", "fomaml:shared-adam-copy:lora",
                                          "maml:shared-adam-copy:lora"],
    "gradient checkpointing": ["metaicl:-:gc", "fomaml:shared-adam-copy:gc", "maml:shared-adam-copy:gc"],
    "inner steps (second order keeps every inner step in the graph)": [
        "maml:shared-adam-copy:j2", "maml:shared-adam-copy:j4", "fomaml:shared-adam-copy:j4"],
    "tokens per step": ["metaicl:-:len128", "maml:shared-adam-copy:len128", "metaicl:-:len512",
                        "maml:shared-adam-copy:len512"],
}


def parse_row(text: str) -> dict:
    parts = text.split(":")
    row = {"row": text, "method": parts[0], "inner": parts[1] if len(parts) > 1 and parts[1] else "-",
           "lora": False, "gc": False, "inner_steps": 1, "seq_len": None, "batch_tasks": False}
    for variant in parts[2:]:
        if variant == "lora":
            row["lora"] = True
        elif variant == "gc":
            row["gc"] = True
        elif variant == "bt":
            row["batch_tasks"] = True
        elif variant.startswith("j"):
            row["inner_steps"] = int(variant[1:])
        elif variant.startswith("len"):
            row["seq_len"] = int(variant[3:])
        else:
            raise SystemExit(f"unknown variant {variant!r} in {text!r}")
    return row


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(row: dict, args) -> dict:
    import torch

    from maml_en_llm.algorithms import InnerOptimizer, ensure_adam_state, task_function
    from maml_en_llm.config import make_config
    from maml_en_llm.episodes import TaskEpisode
    from maml_en_llm.models import pick_device
    from maml_en_llm.precision import autocast
    from maml_en_llm.scoring import pad_id_of
    from maml_en_llm.train import build_model, meta_step

    torch.manual_seed(0)
    device = pick_device(args.device)
    inner_kind = row["inner"] if row["inner"] != "-" else "sgd"
    config = make_config(overrides={"method": row["method"], "inner_optimizer": inner_kind,
                                    "inner_steps": row["inner_steps"], "lora_rank": 16 if row["lora"] else 0,
                                    "gradient_checkpointing": row["gc"], "batch_tasks": row["batch_tasks"]})
    model, tokenizer = build_model(config, args.model, args.dtype, device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-5)
    ensure_adam_state(optimizer)
    inner = InnerOptimizer(inner_kind, 1e-5, shared=optimizer, shared_params=params)
    step_task = task_function(row["method"], inner, row["inner_steps"], config.batch_tasks)
    seq_len = row["seq_len"] or args.seq_len
    g = torch.Generator().manual_seed(0)
    target = 6

    def sequence():
        ids = torch.randint(100, 40000, (seq_len,), generator=g).tolist()
        return ids[:-target], ids[-target:]

    episode = [TaskEpisode(f"t{i}", [sequence()], [sequence()]) for i in range(args.tasks)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else rss_mb()
    times = []
    for i in range(args.steps + 1):
        started = time.perf_counter()
        meta_step(model, params, episode, step_task, optimizer, pad_id_of(tokenizer),
                  shares_moments=inner.writes_outer_state, max_grad_norm=1.0,
                  compute=lambda: autocast(args.dtype, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {**row, "inner_optimizer": inner_kind if row["method"] != "metaicl" else "-",
            "s_per_step": statistics.median(times), "times": times, "peak_mb": peak, "setup_mb": baseline,
            "tokens_per_step": args.tasks * 2 * seq_len, "seq_len": seq_len,
            "trained_params": sum(p.numel() for p in params.values()), "threads": torch.get_num_threads(),
            "device": str(device), "dtype": args.dtype}


def group_key(row: dict) -> tuple:
    return (row["lora"], row["seq_len"])


def table(rows: list[dict], all_rows: list[dict]) -> list[str]:
    lines = ["| row | trained params | s/step | x metaicl | peak MB | x metaicl | peak - setup MB | x metaicl |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in all_rows if b["method"] == "metaicl" and group_key(b) == group_key(r)
                     and not b["gc"]), None)
        ratio = lambda a, b: f"{a / b:.2f}" if b else "-"  # noqa: E731
        extra = r["peak_mb"] - r["setup_mb"]
        base_extra = base["peak_mb"] - base["setup_mb"] if base else None
        lines.append(f"| {r['row']} | {r['trained_params'] / 1e6:.1f}M | {r['s_per_step']:.2f} | "
                     f"{ratio(r['s_per_step'], base['s_per_step'] if base else None)} | {r['peak_mb']:.0f} | "
                     f"{ratio(r['peak_mb'], base['peak_mb'] if base else None)} | {extra:.0f} | "
                     f"{ratio(extra, base_extra)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", default=None, help="comma-separated rows (default: the standard suite)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(parse_row(args.one), args)))
        return
    groups = {"rows": args.rows.split(",")} if args.rows else SUITE
    needed = [r for rows in groups.values() for r in rows]
    for extra in ("metaicl", "metaicl:-:lora", "metaicl:-:len128", "metaicl:-:len512"):  # the ratio bases
        if any(group_key(parse_row(r)) == group_key(parse_row(extra)) for r in needed) and extra not in needed:
            needed.insert(0, extra)
    results = {}
    for row in dict.fromkeys(needed):
        cmd = [sys.executable, __file__, "--one", row, "--model", args.model, "--dtype", args.dtype, "--device",
               args.device, "--seq-len", str(args.seq_len), "--tasks", str(args.tasks), "--steps", str(args.steps)]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{row} failed")
        results[row] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"done {row}: {results[row]['s_per_step']:.2f} s/step, peak {results[row]['peak_mb']:.0f} MB "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    all_rows = list(results.values())
    for title, rows in groups.items():
        print(f"\n{title}:\n")
        print("\n".join(table([results[r] for r in rows], all_rows)))
    if args.json:
        Path(args.json).write_text(json.dumps(all_rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
