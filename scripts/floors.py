"""What a model that ignores its input scores on a split's test tasks, on the examples `eval` scores.

    .venv/bin/python scripts/floors.py --split study/splits/social.json --seeds 100,13,21,42,87 --max-test 100
    .venv/bin/python scripts/floors.py --split S --examples dev --icl K4/results.json --zero-shot K0/results.json

Per task, averaged over the seeds: a classification task's best constant prediction (the label that, predicted
for every example, gives the highest Macro-F1), a multi-choice task's chance accuracy (the mean of 1 / number of
options). A model at or below this floor on a task shows nothing there that demonstrations could improve.
With `--icl` (and `--zero-shot`), `eval` results of the same examples are set beside the floors: each task's
score, its margin over the floor and its ICL gain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maml_en_llm.metrics import task_metric  # noqa: E402
from maml_en_llm.paths import default_data_dir  # noqa: E402
from maml_en_llm.tasks import load_split, load_task_meta, load_test  # noqa: E402


def floor(task_type: str, examples) -> float:
    """The score of the best input-blind answer on these examples, in percent."""
    golds = [example.output for example in examples]
    if task_type == "classification":
        labels = sorted({option for example in examples for option in example.options})
        return max(task_metric(task_type, [label] * len(examples), golds) for label in labels)
    return 100.0 * sum(1.0 / len(example.options) for example in examples) / len(examples)


def floors(data_dir: Path, split_spec: str, seeds: list[int], max_test: int | None,
           examples_file: str = "test") -> dict[str, tuple[str, float]]:
    """{task: (task type, floor averaged over seeds)} for the split's test tasks (their dev files with
    examples_file="dev")."""
    split = load_split(split_spec, data_dir)
    out = {}
    for task in split.test:
        per_seed = []
        for seed in seeds:
            examples = load_test(data_dir, task, seed, max_test, examples=examples_file)
            task_type = load_task_meta(data_dir, task, examples).task_type
            per_seed.append(floor(task_type, examples))
        out[task] = (task_type, sum(per_seed) / len(per_seed))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: the `data bigbench` collection")
    parser.add_argument("--seeds", default="100,13,21,42,87")
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--examples", choices=["test", "dev"], default="test", help="as eval --examples")
    parser.add_argument("--icl", help="an eval results.json of the same examples (k > 0)")
    parser.add_argument("--zero-shot", help="an eval results.json of the same examples at k = 0")
    args = parser.parse_args(argv)
    result = floors(args.data_dir or default_data_dir(), args.split, [int(s) for s in args.seeds.split(",")],
                    args.max_test, args.examples)
    icl, zero = task_means(args.icl), task_means(args.zero_shot)
    print("task\ttype\tfloor" + ("\tICL\tICL - floor" if icl else "") + ("\t0-shot\tICL gain" if icl and zero else ""))
    for task, (task_type, value) in result.items():
        line = f"{task}\t{task_type}\t{value:.1f}"
        if icl:
            line += f"\t{icl[task]:.1f}\t{icl[task] - value:+.1f}"
        if icl and zero:
            line += f"\t{zero[task]:.1f}\t{icl[task] - zero[task]:+.1f}"
        print(line)
    print(f"average\t\t{sum(v for _, v in result.values()) / len(result):.1f}"
          + (f"\t{sum(icl[t] for t in result) / len(result):.1f}" if icl else ""))
    return 0


def task_means(path: str | None) -> dict[str, float]:
    """{task: mean over seeds} of an eval results.json (or a compare evals/*.json); {} without a path."""
    if not path:
        return {}
    body = json.loads(Path(path).read_text())
    return {task: entry["mean"] for task, entry in body.get("result", body)["tasks"].items()}


if __name__ == "__main__":
    sys.exit(main())
