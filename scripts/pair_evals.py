"""Tests of trained models against a base row (the untrained model, or another method) from evaluation files alone,
as `compare` reports them.

    .venv/bin/python scripts/pair_evals.py --base-icl NONE_ICL.json --base-zero-shot NONE_0SHOT.json \
        --icl SEED1_ICL.json SEED2_ICL.json ... --zero-shot SEED1_0SHOT.json SEED2_0SHOT.json ...
    .venv/bin/python scripts/pair_evals.py --adapted [--per-task] --base-icl NONE_ADAPTED.json \
        --icl SEED1_ADAPTED.json ...

For rows whose evaluations were made apart (on two machines, say), when no single `compare` folder holds them all.
Each file is an `eval` results.json or a `compare` evals/*.json; `--icl` and `--zero-shot` list one file per
training seed, in the same order, and so do `--base-icl` and `--base-zero-shot` when the base row was trained with
several seeds too. Prints, for ICL, 0-shot and ICL gain (ICL - 0-shot, cell by cell): the base mean, each seed's
mean and their SD, then the seed mean - base mean over task x seed cells, over task means and across training
seeds (given two or more), with the smallest difference each detects with 80% power: the tests of compare.md.
Across training seeds the test is Welch's when the base has several seeds, else a one-sample test against the
base's mean, which treats a trained base as fixed and so leaves out its own seed noise.
`--base-random` and `--random` (files made with random demonstration labels, one per training seed) add the same
tests for random-label ICL and for ICL - random (cell by cell: what the gold labels add over random ones).
`--per-task` adds a table of each task's means (over its seeds, and over training seeds too).
Without the zero-shot files only the first test runs. `--adapted` runs it on the adapted scores instead (the
`adapted` block of evaluations made with --adapt-steps), then tests what adaptation adds within each row
(adapted - ICL, cell by cell, over the row's training seeds) and whether it adds more to the trained row than to
the base; its `--per-task` table gives each task's adapted, ICL and adapted - ICL.
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


# The evaluations a row is also tested on beside its in-context one, given as --X and --base-X files: (X's dest,
# its title, the title of ICL minus it, cell by cell)
ALSO = (("zero_shot", "0-shot", "ICL gain"), ("random", "random-label ICL", "ICL - random"))


def load_cells(path: str, block: str | None = None) -> dict | tuple[dict, dict]:
    """The task x seed cells of an eval or compare file: its in-context scores, or with block="adapted" both its
    in-context and its adapted ones (one read of the file)."""
    body = json.loads(Path(path).read_text())
    body = body.get("result", body)
    if block is None:
        return result_cells(body)
    if not isinstance(body.get(block), dict):
        raise SystemExit(f"error: {path}: no {block!r} scores; evaluate with --adapt-steps N to get them")
    return result_cells(body), result_cells(body[block])


def load_adapted(files: list[str]) -> tuple[list[dict], list[dict]]:
    """Each file's in-context cells, and each file's adapted cells."""
    pairs = [load_cells(f, "adapted") for f in files]
    return [icl for icl, _ in pairs], [adapted for _, adapted in pairs]


def gain(a: dict, b: dict) -> dict:
    """Cell by cell a - b: the ICL gain (ICL - 0-shot), or what adaptation adds (adapted - ICL)."""
    return {cell: a[cell] - b[cell] for cell in a}


def gains(a: list[dict], b: list[dict]) -> list[dict]:
    return [gain(x, y) for x, y in zip(a, b)]


def ci(result: dict) -> str:
    low, high = result["ci95"]
    return f"[{low:+.2f}, {high:+.2f}]"


def mde(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def check_cells(name: str, runs: list[dict]) -> None:
    cells = sorted(runs[0])
    if any(sorted(run) != cells for run in runs[1:]):
        raise SystemExit(f"error: {name}: the files do not hold the same task x seed cells; evaluate them alike")


def seed_means(runs: list[dict]) -> tuple[dict, list[float]]:
    """The runs' (training seeds') mean cell by cell, and each run's mean over its cells."""
    return {c: mean(run[c] for run in runs) for c in runs[0]}, [mean(run.values()) for run in runs]


def described(label: str, per_seed: list[float]) -> str:
    if len(per_seed) == 1:
        return f"{label} {per_seed[0]:.2f}"
    return (f"{label}, mean of {len(per_seed)} seeds {mean(per_seed):.2f}; per seed "
            f"{' / '.join(f'{m:.2f}' for m in per_seed)} (SD {statistics.stdev(per_seed):.2f})")


def test_lines(label: str, by_cell: dict, per_seed: list[float], against: float | list[float]) -> list[str]:
    """compare.md's tests: over task x seed cells and over task means (`by_cell`, from cell_and_task_tests), then,
    given two or more training seeds, their means (`per_seed`) against `against`: another row's seed means
    (Welch), or one number (a one-sample test)."""
    by_task = by_cell["by_task"]
    lines = [f"{label} {by_cell['mean_diff']:+.2f}",
             f"  over {by_cell['n']} cells: 95% CI {ci(by_cell)}, p = {by_cell['p_value_t']:.3g}, "
             f"MDE {mde(by_cell['mde_80'])}",
             f"  over {by_task['n']} task means: 95% CI {ci(by_task)}, p = {by_task['p_value_t']:.3g}, "
             f"MDE {mde(by_task['mde_80'])}"]
    if len(per_seed) > 1:  # one training seed has no spread to test against
        by_seed = seed_test(per_seed, against)
        kind = " (Welch)" if isinstance(against, list) else ""
        lines.append(f"  across {len(per_seed)} training seeds{kind}: 95% CI {ci(by_seed)}, "
                     f"p = {by_seed['p_value']:.3g}, MDE {mde(by_seed['mde'])}")
    return lines


def report(name: str, base: list[dict], seeds: list[dict], title: str | None = None) -> list[str]:
    """The trained runs' seed mean against the base runs' (one file for the untrained model)."""
    check_cells(name, base + seeds)
    (base_cells, base_per_seed), (cells, per_seed) = seed_means(base), seed_means(seeds)
    against = base_per_seed if len(base_per_seed) > 1 else base_per_seed[0]
    return ([f"## {title or name}", f"{described('base', base_per_seed)}; {described('trained', per_seed)}"]
            + test_lines("seed mean - base", cell_and_task_tests(cells, base_cells), per_seed, against))


def within_row(name: str, adapted: list[dict], icl: list[dict]) -> list[str]:
    """What adaptation adds to one row: its adapted cells against its own in-context cells (over its training
    seeds' means), and each training seed's mean gain against zero."""
    check_cells(name, adapted + icl)
    (mean_adapted, _), (mean_icl, _) = seed_means(adapted), seed_means(icl)
    per_seed = [mean(g.values()) for g in gains(adapted, icl)]
    return ([f"## adaptation gain (adapted - ICL), {name}",
             f"ICL {mean(mean_icl.values()):.2f}; adapted {mean(mean_adapted.values()):.2f}"
             + (f"; gain per seed {' / '.join(f'{m:+.2f}' for m in per_seed)}" if len(per_seed) > 1 else "")]
            + test_lines("adapted - ICL", cell_and_task_tests(mean_adapted, mean_icl), per_seed, 0.0))


def per_task_table(base_x: list[dict], base_y: list[dict], x: list[dict], y: list[dict],
                   names: tuple[str, str] = ("ICL", "0-shot"), digits: int = 1) -> list[str]:
    """Markdown: each task's base and trained scores of two kinds, x and y (ICL and 0-shot, or adapted and ICL),
    and x - y (the ICL gain, or what adaptation adds), each a mean over the task's seeds and the training seeds."""
    def over_runs(runs: list[dict]) -> dict[str, float]:
        by_run = [task_means(run) for run in runs]
        return {task: mean(m[task] for m in by_run) for task in by_run[0]}

    columns = [over_runs(base_x), over_runs(x), over_runs(base_y), over_runs(y)]
    nx, ny = names
    lines = [f"| task | base {nx} | trained {nx} | base {ny} | trained {ny} | base {nx} - {ny} "
             f"| trained {nx} - {ny} |", "|---|---|---|---|---|---|---|"]
    for task in sorted(columns[0]):
        a, b, c, d = (column[task] for column in columns)
        lines.append(f"| {task} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {a - c:+.{digits}f} | {b - d:+.{digits}f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-icl", nargs="+", required=True, help="one file per training seed of the base row")
    parser.add_argument("--base-zero-shot", nargs="+",
                        help="optional, same order: without it (and --zero-shot) only the ICL test runs")
    parser.add_argument("--icl", nargs="+", required=True, help="one file per training seed")
    parser.add_argument("--zero-shot", nargs="+", help="one file per training seed, same order")
    parser.add_argument("--base-random", nargs="+",
                        help="optional, same order: the base row's files made with random demonstration labels")
    parser.add_argument("--random", nargs="+", help="one random-label file per training seed, same order")
    parser.add_argument("--per-task", action="store_true", help="also a table of each task's means")
    parser.add_argument("--adapted", action="store_true",
                        help="test the --icl files' adapted scores (made with --adapt-steps) instead, and what "
                             "adaptation adds within each row")
    args = parser.parse_args(argv)
    if args.adapted and (args.base_zero_shot or args.zero_shot or args.base_random or args.random):
        parser.error("--adapted tests the adapted scores against the in-context ones; drop --base-zero-shot, "
                     "--zero-shot, --base-random and --random")
    for dest, _, _ in ALSO:
        kind, base, trained = dest.replace("_", "-"), getattr(args, f"base_{dest}"), getattr(args, dest)
        if (base is None) != (trained is None):
            parser.error(f"give both --base-{kind} and --{kind}, or neither")
        if trained is not None and len(args.icl) != len(trained):
            parser.error(f"--icl and --{kind} need one file per training seed each")
        if base is not None and len(args.base_icl) != len(base):
            parser.error(f"--base-icl and --base-{kind} need one file per training seed each")
    if args.per_task and args.zero_shot is None and not args.adapted:
        parser.error("--per-task needs the zero-shot files (or --adapted)")
    if args.adapted:
        (base_icl, base_adapted), (icl, adapted) = load_adapted(args.base_icl), load_adapted(args.icl)
        out = report("adapted", base_adapted, adapted)
        for label, row_adapted, row_icl in (("base", base_adapted, base_icl), ("trained", adapted, icl)):
            out += within_row(label, row_adapted, row_icl)
        out += report("adaptation gain", gains(base_adapted, base_icl), gains(adapted, icl),
                      "adaptation gain, trained - base")
        if args.per_task:
            out += ["## per task"] + per_task_table(base_adapted, base_icl, adapted, icl, ("adapted", "ICL"), 2)
        print("\n".join(out))
        return 0
    base_icl, icl = [load_cells(f) for f in args.base_icl], [load_cells(f) for f in args.icl]
    out, also = report("ICL", base_icl, icl), {}
    for dest, title, gain_title in ALSO:
        if getattr(args, dest) is None:
            continue
        base_x, x = also[dest] = ([load_cells(f) for f in getattr(args, f"base_{dest}")],
                                  [load_cells(f) for f in getattr(args, dest)])
        out += report(title, base_x, x) + report(gain_title, gains(base_icl, base_x), gains(icl, x))
    if args.per_task:
        base_zero, zero = also["zero_shot"]
        out += ["## per task"] + per_task_table(base_icl, base_zero, icl, zero)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
