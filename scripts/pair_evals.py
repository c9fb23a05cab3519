"""Tests of trained models against the untrained one from evaluation files alone, as `compare` reports them.

    .venv/bin/python scripts/pair_evals.py --base-icl NONE_ICL.json --base-zero-shot NONE_0SHOT.json \
        --icl SEED1_ICL.json SEED2_ICL.json ... --zero-shot SEED1_0SHOT.json SEED2_0SHOT.json ...
    .venv/bin/python scripts/pair_evals.py --adapted --base-icl NONE_ADAPTED.json --icl SEED1_ADAPTED.json ...

For rows whose evaluations were made apart (on two machines, say), when no single `compare` folder holds them all.
Each file is an `eval` results.json or a `compare` evals/*.json; `--icl` and `--zero-shot` list one file per
training seed, in the same order. Prints, for ICL, 0-shot and ICL gain (ICL - 0-shot, cell by cell): the untrained
mean, each seed's mean and their SD, then the seed mean - untrained over task x seed cells, over task means and
across training seeds (given two or more), with the smallest difference each detects with 80% power: the tests
of compare.md. The base may be a trained row too (one run of another method, say); the across-seeds test then
treats that run as fixed, so it leaves out the base's own seed noise.
`--per-task` adds a table of each task's means (over its seeds, and for the trained rows over training seeds too).
Without the zero-shot files only the first test runs. `--adapted` runs it on the adapted scores instead (the
`adapted` block of evaluations made with --adapt-steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from statistics import fmean as mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maml_en_llm.compare_report import cell_and_task_tests, task_means  # noqa: E402
from maml_en_llm.metrics import result_cells, seed_test  # noqa: E402


def load_cells(path: str, block: str | None = None) -> dict:
    """The task x seed cells of an eval or compare file: its in-context scores, or with block="adapted" its
    adapted ones."""
    body = json.loads(Path(path).read_text())
    body = body.get("result", body)
    if block is not None:
        if not isinstance(body.get(block), dict):
            raise SystemExit(f"error: {path}: no {block!r} scores; evaluate with --adapt-steps N to get them")
        body = body[block]
    return result_cells(body)


def gain(icl: dict, zero_shot: dict) -> dict:
    return {cell: icl[cell] - zero_shot[cell] for cell in icl}


def report(name: str, base: dict, seeds: list[dict]) -> list[str]:
    cells = sorted(base)
    if any(sorted(s) != cells for s in seeds):
        raise SystemExit(f"error: {name}: the files do not hold the same task x seed cells; evaluate them alike")
    seed_mean_cells = {c: mean(s[c] for s in seeds) for c in cells}
    per_seed = [mean(s.values()) for s in seeds]
    lines = [f"## {name}", f"untrained {mean(base.values()):.2f}; trained, mean of {len(seeds)} seeds "
             f"{mean(per_seed):.2f}; per seed {' / '.join(f'{m:.2f}' for m in per_seed)}"
             + (f" (SD {statistics.stdev(per_seed):.2f})" if len(per_seed) > 1 else "")]
    by_cell = cell_and_task_tests(seed_mean_cells, base)
    by_task = by_cell["by_task"]

    def ci(result: dict) -> str:
        low, high = result["ci95"]
        return f"[{low:+.2f}, {high:+.2f}]"

    def mde(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines += [f"seed mean - untrained {by_cell['mean_diff']:+.2f}",
              f"  over {by_cell['n']} cells: 95% CI {ci(by_cell)}, p = {by_cell['p_value_t']:.3g}, "
              f"MDE {mde(by_cell['mde_80'])}",
              f"  over {by_task['n']} task means: 95% CI {ci(by_task)}, p = {by_task['p_value_t']:.3g}, "
              f"MDE {mde(by_task['mde_80'])}"]
    if len(per_seed) > 1:  # one training seed has no spread to test against
        by_seed = seed_test(per_seed, mean(base.values()))
        lines.append(f"  across {len(per_seed)} training seeds: 95% CI {ci(by_seed)}, p = {by_seed['p_value']:.3g}, "
                     f"MDE {mde(by_seed['mde'])}")
    return lines


def per_task_table(base_icl: dict, base_zero: dict, icl: list[dict], zero: list[dict]) -> list[str]:
    """Markdown: each task's untrained and trained (mean over training seeds) ICL, 0-shot and ICL gain."""
    def trained(runs: list[dict]) -> dict[str, float]:
        by_run = [task_means(run) for run in runs]
        return {task: mean(m[task] for m in by_run) for task in by_run[0]}

    columns = [task_means(base_icl), trained(icl), task_means(base_zero), trained(zero)]
    lines = ["| task | untrained ICL | trained ICL | untrained 0-shot | trained 0-shot | untrained gain | trained gain |",
             "|---|---|---|---|---|---|---|"]
    for task in sorted(columns[0]):
        a, b, c, d = (column[task] for column in columns)
        lines.append(f"| {task} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {a - c:+.1f} | {b - d:+.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-icl", required=True)
    parser.add_argument("--base-zero-shot", help="optional: without it (and --zero-shot) only the ICL test runs")
    parser.add_argument("--icl", nargs="+", required=True, help="one file per training seed")
    parser.add_argument("--zero-shot", nargs="+", help="one file per training seed, same order")
    parser.add_argument("--per-task", action="store_true", help="also a table of each task's means")
    parser.add_argument("--adapted", action="store_true",
                        help="test the --icl files' adapted scores (made with --adapt-steps) instead")
    args = parser.parse_args(argv)
    if args.adapted and (args.base_zero_shot or args.zero_shot or args.per_task):
        parser.error("--adapted tests the adapted scores on their own; drop --base-zero-shot, --zero-shot and "
                     "--per-task")
    if (args.base_zero_shot is None) != (args.zero_shot is None):
        parser.error("give both --base-zero-shot and --zero-shot, or neither (then only the first test runs)")
    if args.zero_shot is not None and len(args.icl) != len(args.zero_shot):
        parser.error("--icl and --zero-shot need one file per training seed each")
    if args.per_task and args.zero_shot is None:
        parser.error("--per-task needs the zero-shot files")
    block = "adapted" if args.adapted else None
    base_icl, icl = load_cells(args.base_icl, block), [load_cells(f, block) for f in args.icl]
    out = report(block or "ICL", base_icl, icl)
    if args.zero_shot is None:
        print("\n".join(out))
        return 0
    base_zero, zero = load_cells(args.base_zero_shot), [load_cells(f) for f in args.zero_shot]
    out += report("0-shot", base_zero, zero)
    out += report("ICL gain", gain(base_icl, base_zero), [gain(a, b) for a, b in zip(icl, zero)])
    if args.per_task:
        out += ["## per task"] + per_task_table(base_icl, base_zero, icl, zero)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
