"""Loss curves of training runs (metrics.jsonl) in one PNG, plus a Markdown summary table on stdout.

    python scripts/plot_losses.py runs/results/train/* --out docs/img/loss_curves.png
"""

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    print("| run | steps | tokens | first loss | last-5 mean loss | median s/step | total train s |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in records]
        losses = [r["loss"] for r in records]
        ax.plot(steps, losses, label=run.name, marker=".")
        seconds = [r["seconds"] for r in records]
        print(f"| {run.name} | {len(records)} | {records[-1]['total_tokens']} | {losses[0]:.3f} | "
              f"{statistics.mean(losses[-5:]):.3f} | {statistics.median(seconds):.2f} | {sum(seconds):.0f} |")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("training loss (query loss for maml/fomaml)")
    ax.legend()
    ax.grid(alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
