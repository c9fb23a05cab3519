"""What `compare` reports: per-row summaries with 95% CIs, paired tests with the smallest detectable difference,
the Markdown table and the plots. Pure functions over the report dict (plots write PNG files).

Blocks (the evaluations of a row): `icl` (k-shot in context), `adapted` (after --adapt-steps), `adapt_gain`
(adapted - icl, cell by cell), `zero_shot` (k=0), `icl_gain` (icl - zero_shot, cell by cell), `random` (random
demonstration labels), `label_gain` (icl - random, cell by cell: what the gold labels add) and `symbols` (label
words renamed to arbitrary words). Subsets: all test tasks, and the split's unseen-domain tasks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .metrics import mean_ci95, paired_test, result_cells, seed_test
from .tasks import Split

BASE = "none"  # the base model, evaluated without training
SUBSETS = ("all", "unseen_domain")
BLOCKS = ("icl", "adapted", "adapt_gain", "zero_shot", "icl_gain", "random", "label_gain", "symbols")
GAIN_TITLES = {"icl_gain": "points (ICL - 0-shot)", "adapt_gain": "points (adapted - ICL)",  # differences
               "label_gain": "points (ICL - random-label ICL)"}
SUBSET_TITLES = {"all": "all", "unseen_domain": "unseen domain"}
BLOCK_TITLES = {"icl": "ICL", "adapted": "adapted", "adapt_gain": "adapted - ICL", "zero_shot": "0-shot",
                "icl_gain": "ICL gain", "random": "random-label ICL", "label_gain": "ICL - random",
                "symbols": "symbol ICL"}


def block_summary(block: dict, tasks: list[str], seeds: list[int]) -> dict | None:
    """"mean (worst)" over seeds of the task-average, and the 95% CI over the task x seed cells."""
    if not tasks:
        return None
    per_seed = {str(s): sum(block["tasks"][t]["per_seed"][str(s)] for t in tasks) / len(tasks) for s in seeds}
    cells = [block["tasks"][t]["per_seed"][str(s)] for t in tasks for s in seeds]
    mean, low, high = mean_ci95(cells)
    return {"mean": sum(per_seed.values()) / len(per_seed), "worst": min(per_seed.values()),
            "per_seed_average": per_seed, "ci95": [low, high], "n_cells": len(cells), "n_tasks": len(tasks)}


def add_block_summaries(entry: dict, subsets: dict, seeds: list[int]) -> None:
    """entry[block] = {subset: block_summary} for each block in entry["eval"], None for the other blocks."""
    for block in BLOCKS:
        entry[block] = ({subset: block_summary(entry["eval"][block], tasks, seeds) for subset, tasks in subsets.items()}
                        if block in entry["eval"] else None)


def _cellwise(blocks: list[dict], combine) -> dict:
    """An evaluation block whose every (task, seed) cell is `combine` of the blocks' cells."""
    tasks = {}
    for task, entry in blocks[0]["tasks"].items():
        per_seed = {seed: combine(*(b["tasks"][task]["per_seed"][seed] for b in blocks)) for seed in entry["per_seed"]}
        tasks[task] = {"per_seed": per_seed, "mean": sum(per_seed.values()) / len(per_seed),
                       "worst": min(per_seed.values())}
    return {"tasks": tasks}


def difference_block(a: dict, b: dict) -> dict:
    """Cell by cell a - b as an evaluation block."""
    return _cellwise([a, b], lambda x, y: x - y)


DIFFERENCES = {"adapt_gain": ("adapted", "icl"),  # what adaptation adds
               "icl_gain": ("icl", "zero_shot"),  # what the demonstrations add
               "label_gain": ("icl", "random")}  # what their gold labels add over random ones (Min et al., 2022)


def add_differences(blocks: dict) -> None:
    """blocks[name] = blocks[a] - blocks[b], cell by cell, for each of DIFFERENCES whose two blocks a row has."""
    for name, (a, b) in DIFFERENCES.items():
        if a in blocks and b in blocks:
            blocks[name] = difference_block(blocks[a], blocks[b])


POOLED_LABEL = "seed mean"  # with --sweep seed: the trained rows averaged cell by cell


def mean_block(blocks: list[dict]) -> dict:
    """Cell by cell mean of evaluation blocks over the same tasks and seeds."""
    return _cellwise(blocks, lambda *values: sum(values) / len(values))


def pooled_row(members: list[dict], label: str, subsets: dict, seeds: list[int]) -> dict | None:
    """One row standing for a recipe trained with several training seeds (`members`, one trained row per seed):
    their evaluations averaged cell by cell (a model's score with the training seed's luck averaged out), each
    member's mean per block and subset (`seed_means`, for the tests across training seeds), and the spread of
    those means over all test tasks (`seed_spread`). None with fewer than two members."""
    import statistics

    if len(members) < 2:
        return None
    blocks = [b for b in BLOCKS if all(b in row["eval"] for row in members)]
    entry = {"label": label, "method": members[0]["method"], "sweep_value": "mean", "recipe": None,
             "pooled": [row["label"] for row in members],
             "train": {key: round(statistics.fmean(row["train"][key] for row in members)) for key in ("steps", "tokens")},
             "eval_files": {}, "eval_wall_seconds": sum(row["eval_wall_seconds"] for row in members),
             "eval": {b: mean_block([row["eval"][b] for row in members]) for b in blocks}, "validation": []}
    add_block_summaries(entry, subsets, seeds)
    entry["seed_means"] = {block: {subset: [row[block][subset]["mean"] for row in members]
                                   for subset in subsets if all(row[block][subset] for row in members)}
                           for block in blocks}
    entry["seed_spread"] = {block: {"means": means["all"], "sd": statistics.stdev(means["all"])}
                            for block, means in entry["seed_means"].items() if "all" in means}
    return entry


def detectable_difference(differences: list[float], power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at 0.05 detects with this power, given the
    spread of these differences: (t_0.975 + t_power) * sd / sqrt(n)."""
    import numpy as np
    from scipy import stats

    n = len(differences)
    if n < 3:
        return None
    sd = float(np.std(differences, ddof=1))
    return float((stats.t.ppf(0.975, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def _cells(block: dict, tasks: list[str]) -> dict:
    return {cell: value for cell, value in result_cells(block).items() if cell[0] in tasks}


def task_means(cells: dict) -> dict:
    """{task: mean over its seeds} of {(task, seed): value} cells."""
    sums: dict[str, list[float]] = {}
    for (task, _), value in cells.items():
        sums.setdefault(task, []).append(value)
    return {task: sum(values) / len(values) for task, values in sums.items()}


def cell_and_task_tests(cells_a: dict, cells_b: dict) -> dict:
    """`paired_test` of a - b over their common (task, seed) cells, with the smallest difference it detects at 80%
    power (`mde_80`), and the same over task means (`by_task`: p_value_t, ci95, n, mde_80)."""
    result = paired_test(cells_a, cells_b)
    common = sorted(set(cells_a) & set(cells_b))
    result["mde_80"] = detectable_difference([cells_a[c] - cells_b[c] for c in common])
    # one pair per task: the seeds of a task share its test examples, so its cells are not independent
    means_a, means_b = task_means(cells_a), task_means(cells_b)
    by_task = paired_test(means_a, means_b)
    result["by_task"] = {"p_value_t": by_task["p_value_t"], "ci95": by_task["ci95"], "n": by_task["n"],
                         "mde_80": detectable_difference([means_a[t] - means_b[t]
                                                          for t in sorted(set(means_a) & set(means_b))])}
    return result


def _pairs(rows: list[dict], sweep: bool) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """Which rows the paired tests compare, and the headline pair. Without a sweep: MAML-en-LLM (maml, else fomaml,
    else the first trained method) against every other row, MetaICL first (the headline), then every other trained
    method against the base model; with --train-seeds these are the methods' seed-mean rows, and the single-seed
    rows are not tested. With a sweep: every value against the first, except a sweep of training seeds with a
    `none` row: the seed mean, then each seed, against none."""
    by_label = {row["label"]: row for row in rows}
    if sweep and POOLED_LABEL in by_label and BASE in by_label:
        return [(label, BASE) for label in [POOLED_LABEL] + by_label[POOLED_LABEL]["pooled"]], None
    if sweep:
        trained = [row["label"] for row in rows if row["method"] != BASE and row["label"] != POOLED_LABEL]
        return [(label, trained[0]) for label in trained[1:]], None
    labels = [row["label"] for row in rows if not row.get("seed_of")]
    reference = next((m for m in ("maml", "fomaml") if m in labels), next((m for m in labels if m != BASE), None))
    others = sorted((m for m in labels if m != reference), key=lambda m: m != "metaicl")
    headline = (reference, "metaicl") if reference in ("maml", "fomaml") and "metaicl" in labels else None
    if reference is None:
        return [], headline
    against_base = [(other, BASE) for other in others if other != BASE] if BASE in labels else []
    return [(reference, other) for other in others] + against_base, headline


def _seed_level(row_a: dict, row_b: dict, block: str, subset: str) -> dict | None:
    """The test across training seeds of two rows when both can give one (`seed_test`): a pooled row against
    another pooled row or against the untrained base model. None otherwise (a row trained once has no spread)."""
    means_a = (row_a.get("seed_means") or {}).get(block, {}).get(subset)
    if not means_a:
        return None
    if row_b["method"] == BASE:
        other = row_b[block][subset]["mean"]
    else:
        other = (row_b.get("seed_means") or {}).get(block, {}).get(subset)
        if not other:
            return None
    return seed_test(means_a, other)


def paired_tests(rows: list[dict], split: Split, sweep: bool) -> tuple[list[dict], dict | None]:
    """Paired tests over task x seed cells and over task means, for the pairs `_pairs` picks. When both rows have
    several training seeds (or one is the base model), also the test across training seeds; the verdict then needs
    both the task-level and the seed-level test significant."""
    by_label = {row["label"]: row for row in rows}
    pairs, headline = _pairs(rows, sweep)
    tasks = {"all": list(split.test), "unseen_domain": list(split.unseen_domain_test)}
    tests, headline_test = [], None
    for a, b in pairs:
        for block in BLOCKS:
            if by_label[a].get(block) is None or by_label[b].get(block) is None:
                continue
            for subset in SUBSETS:
                if not tasks[subset]:
                    continue
                result = cell_and_task_tests(_cells(by_label[a]["eval"][block], tasks[subset]),
                                             _cells(by_label[b]["eval"][block], tasks[subset]))
                by_task = result["by_task"]
                # the verdict is the task-level test; the cells (seeds) decide only when there is a single task
                level = "tasks" if by_task["n"] >= 2 else "cells"
                p = by_task["p_value_t"] if level == "tasks" else result["p_value_t"]
                significant = bool(p < 0.05) if math.isfinite(p) else None
                by_seed = _seed_level(by_label[a], by_label[b], block, subset)
                if by_seed is not None:  # a different training seed must not undo it either
                    result["by_training_seed"] = by_seed
                    level += " and training seeds"
                    seed_p = by_seed["p_value"]
                    significant = None if significant is None or not math.isfinite(seed_p) else (
                        significant and seed_p < 0.05)
                test = {"a": a, "b": b, "block": block, "subset": subset, **result, "verdict_level": level,
                        "significant_at_0.05": significant}
                tests.append(test)
                if (a, b) == headline and block == "icl" and subset == "all":
                    headline_test = test
    return tests, headline_test


# ---------------------------------------------------------------- outputs


def _cell_text(summary: dict | None) -> str:
    return "-" if summary is None else f"{summary['mean']:.1f} ({summary['worst']:.1f})"


def _ci_text(summary: dict | None) -> str:
    if summary is None:
        return "-"
    low, high = summary["ci95"]
    return "-" if low is None or not math.isfinite(low) else f"[{low:.1f}, {high:.1f}]"


def _test_text(test: dict) -> str:
    """One line: the cell-level difference, CI and tests, then the task-level test, the test across training seeds
    when there is one, then the verdict (task level when there are two or more tasks, and training seeds too when
    tested)."""
    fmt = lambda p: "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"  # noqa: E731
    ci = lambda low, high: (  # noqa: E731
        "n/a" if low is None or not math.isfinite(low) else f"[{low:+.2f}, {high:+.2f}]")
    mde = lambda value: "" if value is None else f", detectable with 80% power {value:.2f}"  # noqa: E731
    by_task = test.get("by_task") or {}
    text = (f"{test['a']} - {test['b']} ({BLOCK_TITLES[test['block']]}, {SUBSET_TITLES[test['subset']]}): "
            f"mean diff {test['mean_diff']:+.2f}; over {test['n']} cells: 95% CI {ci(*test['ci95'])}, "
            f"paired t p={fmt(test['p_value_t'])}, Wilcoxon p={fmt(test['p_value_wilcoxon'])}{mde(test.get('mde_80'))}")
    if by_task.get("n", 0) >= 2:
        text += (f"; over {by_task['n']} task means: 95% CI {ci(*by_task['ci95'])}, "
                 f"p={fmt(by_task['p_value_t'])}{mde(by_task.get('mde_80'))}")
    by_seed = test.get("by_training_seed")
    if by_seed:
        against = f"{by_seed['n_b']} training seeds" if by_seed["n_b"] else "the untrained model"
        text += (f"; over {by_seed['n_a']} training seeds against {against}: 95% CI {ci(*by_seed['ci95'])}, "
                 f"p={fmt(by_seed['p_value'])}{mde(by_seed.get('mde'))}")
    level = test.get("verdict_level", "cells").replace("tasks", "task level").replace("cells", "cell level")
    verdict = ("not testable (fewer than 2 cells)" if test["significant_at_0.05"] is None else
               f"significant at 0.05 ({level})" if test["significant_at_0.05"] else
               f"not significant at 0.05 ({level})")
    return f"{text}: {verdict}"


def _row_name(report: dict, row: dict) -> str:
    """A row's first cell: the swept value with --sweep, else its label; a seed-mean row says over how many."""
    if report["sweep"] and row["method"] != BASE:
        return row["sweep_value"]
    return f"{row['label']} (mean of {len(row['pooled'])} seeds)" if row.get("pooled") else row["label"]


def format_markdown(report: dict) -> str:
    blocks = [b for b in BLOCKS if any(row.get(b) for row in report["rows"])]
    columns = [(b, s) for b in blocks for s in SUBSETS]
    first = report["sweep"]["field"] if report["sweep"] else "method"
    budget = report["budget"]
    budget_line = {"tokens": f"equal training tokens: {budget.get('tokens')} per method (meta-steps derived per "
                             "method)",
                   "seconds": f"equal wall-clock: {budget.get('seconds'):g} s of meta-steps per method (meta-steps "
                              "planned from each method's timed seconds per training token)"
                   if budget.get("seconds") else "",
                   "steps": f"equal meta-steps: {budget.get('steps')} per method (from {budget['source']})"
                   }[budget["equalised"]]
    s = report["eval"]
    lines = [f"# compare: {report['model']} on {report['split']['name']}", "",
             f"- budget: {budget_line}",
             f"- evaluation: k={s['k']}, {s['prompt']}, seeds {', '.join(map(str, s['seeds']))}, "
             f"max test {s['max_test'] or 'all'}" + (f", adapted: {s['adapt_steps']} steps {s['adapt_optimizer']} "
                                                     f"lr {s['adapt_lr']:g}" if s["adapt_steps"] else ""),
             f"- test tasks: {len(report['split']['test'])} ({len(report['split']['unseen_domain_test'])} unseen "
             "domain); cell = mean (worst) over seeds of the task-average, in percent", "",
             "| " + " | ".join([first, "steps", "tokens", "train s"]
                               + [f"{SUBSET_TITLES[sub]} {BLOCK_TITLES[b]}" for b, sub in columns]) + " |",
             "|" + "---|" * (4 + len(columns))]
    for row in report["rows"]:
        train = row.get("train") or {}
        name = _row_name(report, row)
        seconds = train.get("wall_seconds") or train.get("step_seconds")
        lines.append("| " + " | ".join([name, str(train.get("steps", 0)), str(train.get("tokens", 0)),
                                        f"{seconds:.0f}" if seconds else "-"]
                                       + [_cell_text((row.get(b) or {}).get(sub)) for b, sub in columns]) + " |")
    lines += ["", "95% confidence intervals of the mean over task x seed cells:", "",
              "| " + " | ".join([first] + [f"{SUBSET_TITLES[sub]} {BLOCK_TITLES[b]}" for b, sub in columns]) + " |",
              "|" + "---|" * (1 + len(columns))]
    for row in report["rows"]:
        name = _row_name(report, row)
        lines.append("| " + " | ".join([name] + [_ci_text((row.get(b) or {}).get(sub)) for b, sub in columns]) + " |")
    tests = [t for t in report["paired_tests"] if t["subset"] == "all" or t["n"] >= 2]
    if tests:
        lines += ["", "Paired tests (difference a - b) over task x seed cells and over task means; the verdict is "
                  "the task-level test (cells only when there is one task):", ""]
        lines += [f"- {_test_text(t)}" for t in tests]
    for pooled in (row for row in report["rows"] if row.get("seed_spread")):
        spread = "; ".join(f"{SUBSET_TITLES['all']} {BLOCK_TITLES[b]} " + ", ".join(f"{m:.1f}" for m in v["means"])
                           + f" (SD {v['sd']:.2f})" for b, v in pooled["seed_spread"].items())
        of, name = ("", "mean") if report["sweep"] else (f" of {pooled['label']}", _row_name(report, pooled))
        lines += ["", f"Across the {len(pooled['pooled'])} training seeds{of}: {spread}. The `{name}` row averages "
                  "their cells. Two rows trained once each differ by about 1.4 x this SD from their training seeds "
                  "alone."]
    if report["headline"]:
        lines += ["", f"**MAML-en-LLM vs MetaICL:** {_test_text(report['headline'])}"]
    return "\n".join(lines) + "\n"


def _save_png(fig, path: Path) -> None:
    """Write a figure atomically (a temporary file in the same folder, then a rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot(report: dict, path: Path) -> None:
    """compare.png: bars per method (all / unseen domain) with 95% CI error bars, ICL and adapted side by side;
    with a sweep, the metric over the field's values with CI bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    blocks = [b for b in BLOCKS if any(row.get(b) for row in rows)]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.2), squeeze=False)
    for ax, block in zip(axes[0], blocks):
        if report["sweep"]:
            swept = [row for row in rows if row["method"] != BASE]
            xs = list(range(len(swept)))
            for subset, style in zip(SUBSETS, ("-o", "--s")):
                summaries = [(row.get(block) or {}).get(subset) for row in swept]
                if any(s is None for s in summaries):
                    continue
                means = [s["mean"] for s in summaries]
                lows = [s["ci95"][0] if s["ci95"][0] is not None else s["mean"] for s in summaries]
                highs = [s["ci95"][1] if s["ci95"][1] is not None else s["mean"] for s in summaries]
                line, = ax.plot(xs, means, style, label=SUBSET_TITLES[subset])
                ax.fill_between(xs, lows, highs, alpha=0.2, color=line.get_color())
                base = next((row for row in rows if row["method"] == BASE), None)
                if base and (base.get(block) or {}).get(subset):
                    ax.axhline(base[block][subset]["mean"], color=line.get_color(), linestyle=":", linewidth=1,
                               label=f"base model ({SUBSET_TITLES[subset]})")
            ax.set_xticks(xs, [row["sweep_value"] for row in swept])
            ax.set_xlabel(f"{report['sweep']['field']} ({swept[0]['method']})")
        else:  # one bar per method; with --train-seeds a method's bar is its seed mean, each seed a dot on it
            shown = [row for row in rows if not row.get("seed_of")]
            width = 0.8 / max(len(shown), 1)
            first_pooled = next((row for row in shown if row.get("seed_means")), None)
            for i, row in enumerate(shown):
                means, errors, xs = [], [[], []], []
                for j, subset in enumerate(SUBSETS):
                    summary = (row.get(block) or {}).get(subset)
                    if summary is None:
                        continue
                    low, high = summary["ci95"]
                    xs.append(j - 0.4 + width * (i + 0.5))
                    means.append(summary["mean"])
                    errors[0].append(summary["mean"] - low if low is not None else 0.0)
                    errors[1].append(high - summary["mean"] if high is not None else 0.0)
                ax.bar(xs, means, width, yerr=errors, capsize=3, label=_row_name(report, row))
                seed_means = (row.get("seed_means") or {}).get(block, {})
                dots = [(x, m) for x, subset in zip(xs, [s for s in SUBSETS if (row.get(block) or {}).get(s)])
                        for m in seed_means.get(subset, [])]
                if dots:
                    ax.scatter(*zip(*dots), s=12, color="black", zorder=3,
                               label="one training seed" if row is first_pooled else None)
            ax.set_xticks(range(len(SUBSETS)), [SUBSET_TITLES[s] for s in SUBSETS])
        ax.set_title(f"{BLOCK_TITLES[block]} (k={report['eval']['k']}), 95% CI over task x seed cells")
        ax.set_ylabel(GAIN_TITLES.get(block, "Macro-F1 / accuracy (%)"))
        if block not in GAIN_TITLES:
            ax.set_ylim(bottom=0)  # a t-interval can reach below 0; the metric cannot
        else:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['model']} on {report['split']['name']}", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)


def plot_curves(report: dict, path: Path) -> None:
    """curves.png: each trained row's in-training validation (validation.jsonl) against training tokens: in-context
    score, zero-shot score, and the ICL gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for row in report["rows"]:
        curve = row.get("validation") or []
        if not curve:
            continue
        tokens = [point["total_tokens"] for point in curve]
        for ax, key in zip(axes, ("icl", "zero_shot", "icl_gain")):
            ax.plot(tokens, [point[key] for point in curve], "-o", markersize=3, label=row["label"])
    for ax, title in zip(axes, ("in context (dev)", "zero-shot (dev)", "ICL gain (dev)")):
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("Macro-F1 / accuracy (%)")
    fig.suptitle(f"in-training validation: {report['model']} on {report['split']['name']}", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)
