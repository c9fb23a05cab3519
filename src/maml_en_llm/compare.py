"""`maml-en-llm compare`: train several methods from one base model on one budget, evaluate all, tabulate, plot.

    DIR/runs/<method>-<hash8>/      one training run each (train.py's layout); the hash covers the model, data
                                    dir, split, dtype, the resolved recipe and the method
    DIR/evals/<name>-<hash8>.json   one evaluation each; the hash covers the model (or run) and every eval setting
    DIR/compare.json                everything: config, budget, per method/task/seed numbers, CIs, tests, times
    DIR/compare.md                  the paper-style table, "mean (worst)" per cell, and the paired tests
    DIR/compare.png                 bars with 95% CIs (a line plot over the field values with --sweep)

Every input is checked before anything is written (compare_plan.py). Finished runs and cached evaluations are
reused, a partial run resumes from its last checkpoint, so re-running a killed compare continues where it stopped
and re-running a finished one trains and evaluates nothing. docs/compare.md explains budgets, caching and the statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

from .compare_plan import PROBE_STEPS, Plan, Row, plan_compare, steps_for_seconds
from .compare_report import (BASE, POOLED_LABEL, add_block_summaries, add_differences, format_markdown,
                             paired_tests, plot, plot_curves, pooled_row)
from .errors import UserError
from .evaluate import evaluate_model
from .models import release_memory
from .paths import atomic_write_text
from .provenance import provenance
from .train import train


def _clean(value):
    """NaN/inf -> None, recursively, so compare.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------- training and evaluation (cached)


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def probe_steps(plan: Plan, row: Row, run_dir: Path) -> int:
    """Meta-steps that fit the seconds budget, from this recipe's seconds per training token (timed once and kept
    in RUN/probe.json, so a resumed or re-run compare trains the same number of steps) applied to the run's own
    episodes: an episode's cost follows its length, which varies several-fold from step to step."""
    from .models import load_tokenizer
    from .train import seconds_per_step

    path = run_dir / "probe.json"
    if path.exists():
        probe = json.loads(path.read_text())
    else:
        print(f"== timing {row.label}: {PROBE_STEPS} meta-steps after a warm-up, for the seconds budget", flush=True)
        probe = seconds_per_step(row.config, model_name=plan.model, data_dir=plan.data_dir, split=plan.split_spec,
                                 device=plan.device, dtype=plan.dtype, steps=PROBE_STEPS)
        atomic_write_text(path, json.dumps(probe) + "\n")
    if "seconds_per_token" not in probe:  # a probe.json written before the per-token plan: keep its run's steps
        return max(1, int(plan.budget["seconds"] // probe["median"]))
    return steps_for_seconds(row.config, row.tasks, load_tokenizer(plan.model), plan.budget["seconds"],
                             probe["seconds_per_token"])


def _run_finished(plan: Plan, row: Row) -> bool:
    return (plan.out / "runs" / row.run_name / "final" / "config.json").exists()


def train_row(plan: Plan, row: Row, position: str, progress: bool = True) -> dict:
    """Train (or resume, or reuse) one row's run; return steps, tokens and times read back from the run.
    `progress`: show the training bar (off in --jobs workers, whose bars would interleave)."""
    run_dir = plan.out / "runs" / row.run_name
    timing_path = run_dir / "compare_timing.json"
    if _run_finished(plan, row):
        print(f"== training {row.label} ({position}): done already, reusing {run_dir}", flush=True)
    else:
        if plan.budget["equalised"] == "seconds":
            row.config = dataclasses.replace(row.config, steps=probe_steps(plan, row, run_dir))
        state = "resuming" if (run_dir / "config.yaml").exists() else "training"
        print(f"== {state} {row.label} ({position}): {row.config.steps} meta-steps into {run_dir}", flush=True)
        started = time.perf_counter()
        train(row.config, model_name=plan.model, data_dir=plan.data_dir, split=plan.split_spec, out_dir=run_dir,
              resume=True, device=plan.device, dtype=plan.dtype, command=plan.command,
              progress=progress, allow_train_test_overlap=plan.allow_train_test_overlap, tasks=row.tasks)
        seconds = time.perf_counter() - started
        release_memory()  # the next row trains, or the evaluations run, in this process
        before = json.loads(timing_path.read_text())["wall_seconds"] if timing_path.exists() else 0.0
        atomic_write_text(timing_path, json.dumps({"wall_seconds": round(before + seconds, 2)}) + "\n")
    metrics = _read_metrics(run_dir)
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    probe = run_dir / "probe.json"
    return {"run": str(Path("runs") / row.run_name), "steps": metrics[-1]["step"] if metrics else 0,
            "tokens": metrics[-1]["total_tokens"] if metrics else 0,
            "step_seconds": round(sum(m["seconds"] for m in metrics), 2),
            "wall_seconds": timing.get("wall_seconds"),
            "probe_seconds_per_token": (json.loads(probe.read_text()).get("seconds_per_token")
                                        if probe.exists() else None)}


def _cached_eval(plan: Plan, row: Row, variant: str) -> dict | None:
    key, name = row.evals[variant]
    path = plan.out / "evals" / f"{name}.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: evaluate (again)
    return cached if cached.get("key") == key else None


def evaluate_row(plan: Plan, row: Row, variant: str, position: str, progress: bool = True) -> dict:
    """One of the row's evaluations (`icl`: in context and, with --adapt-steps, adapted; or a diagnostic), from
    its cache or computed and cached. `progress`: show the evaluation bar."""
    key, name = row.evals[variant]
    path = plan.out / "evals" / f"{name}.json"
    label = row.label if variant == "icl" else f"{row.label} ({variant.replace('_', '-')})"
    cached = _cached_eval(plan, row, variant)
    if cached is not None:
        print(f"== evaluating {label} ({position}): cached in {path}", flush=True)
        return cached
    from .eval_journal import model_fingerprint
    from .models import load_model_and_tokenizer, pick_device

    source = str(plan.out / "runs" / row.run_name / "final") if row.run_name else plan.model
    print(f"== evaluating {label} ({position}): {source}", flush=True)
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(source, dtype=plan.dtype, device=pick_device(plan.device))
    model.eval()
    journal = path.with_suffix(".partial.jsonl")  # a killed compare resumes mid-evaluation (eval_journal.py)
    result = evaluate_model(model, tokenizer, data_dir=plan.data_dir, split=plan.split, k=key["k"],
                            seeds=key["seeds"], method=key["prompt"], max_test=key["max_test"],
                            batch_size=key["batch_size"], adapt_steps=key["adapt_steps"],
                            adapt_lr=key["adapt_lr"] or 1e-5, adapt_optimizer=key["adapt_optimizer"] or "adam",
                            demo_labels=key["demo_labels"], format=key["format"], bos=key["bos"],
                            journal=journal, model_id=model_fingerprint(source), progress=progress)
    del model
    release_memory()
    cached = {"key": key, "model": source, "wall_seconds": round(time.perf_counter() - started, 2),
              "result": result}
    atomic_write_text(path, json.dumps(_clean(cached), indent=1) + "\n")
    journal.unlink(missing_ok=True)
    return cached


def _validation_curve(plan: Plan, row: Row) -> list[dict]:
    path = plan.out / "runs" / row.run_name / "validation.jsonl" if row.run_name else None
    if path is None or not path.exists():
        return []
    keep = ("step", "total_tokens", "icl", "zero_shot", "icl_gain")
    return [{k: json.loads(line)[k] for k in keep} for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- --jobs: rows in parallel processes


def _work(plan: Plan, item: tuple, threads: int | None) -> str:
    """One `--jobs` work item: ("train", i) trains row i (or resumes or reuses its run); ("eval", i, variant) runs
    one of row i's evaluations. Everything lands in the out folder's caches, from which the parent tabulates."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    row = plan.rows[item[1]]
    if item[0] == "train":
        train_row(plan, row, "worker", progress=False)
        return f"{row.label} (training)"
    evaluate_row(plan, row, item[2], "worker", progress=False)
    return f"{row.label} ({item[2]})"


def worker_plan(plan: Plan) -> Plan:
    """The plan as sent to each `--jobs` worker: without the training pools loaded while planning, which every
    submitted task would otherwise copy (pickled) into its worker; a worker's training loads its own row's pools."""
    return dataclasses.replace(plan, rows=[dataclasses.replace(row, tasks=None) for row in plan.rows])


def work_items(plan: Plan) -> tuple[list[tuple], dict[int, list[tuple]]]:
    """The `--jobs` work left, as items for `_work`: those that can start at once, and for each row still to train,
    the evaluations that start when its training ends. Each evaluation is an item of its own, so a row's
    in-context and diagnostic evaluations run side by side. The untrained row's evaluations come first (every
    comparison needs them, so a compare cut short by a time limit still has its baseline), then the trainings, which
    unlock evaluations of their own, then the evaluations of rows trained before, each group in the plan's order;
    rows with nothing left to do give no item."""
    base, trainings, trained, after_training = [], [], [], {}
    for i, row in enumerate(plan.rows):
        evals = [("eval", i, variant) for variant in row.evals if _cached_eval(plan, row, variant) is None]
        if row.method == BASE:
            base += evals
        elif not _run_finished(plan, row):
            trainings.append(("train", i))
            after_training[i] = evals
        else:
            trained += evals
    return base + trainings + trained, after_training


def items_to_start(pending: list[tuple], running: list[tuple], workers: int, train_jobs: int) -> list[tuple]:
    """Which pending work items start now, in order: while a worker is free, the next pending item, skipping
    trainings while `train_jobs` of the running items train (an evaluation behind them may go first)."""
    chosen, training = [], sum(item[0] == "train" for item in running)
    for item in pending:
        if len(running) + len(chosen) >= workers:
            break
        if item[0] == "train":
            if training >= train_jobs:
                continue
            training += 1
        chosen.append(item)
    return chosen


def run_rows_in_parallel(plan: Plan, jobs: int, train_jobs: int | None = None) -> None:
    """Train and evaluate in up to `jobs` spawned processes at once (one model per process, all on plan.device),
    at most `train_jobs` of them training: each training, and each evaluation once its row is trained, is one work
    item. On one GPU this fills the device that a single small-model process leaves idle; on CPU the cores are
    split between the processes unless OMP_NUM_THREADS is set. When an item fails (or on Ctrl-C) no further item
    starts, and the running ones finish, their results kept, before the error propagates."""
    import concurrent.futures
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    ready, after_training = work_items(plan)
    if not ready:
        return
    total = len(ready) + sum(len(items) for items in after_training.values())
    rows = len({item[1] for item in ready})
    workers = min(jobs, total)
    train_jobs = min(train_jobs or workers, workers)
    threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // workers)
    limit = f", at most {train_jobs} training" if train_jobs < workers else ""
    print(f"== {total} work item{'s' if total != 1 else ''} ({rows} row{'s' if rows != 1 else ''} to train or "
          f"evaluate) in {workers} worker processes (--jobs {jobs}{limit})", flush=True)
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    light = worker_plan(plan)
    pending, futures = list(ready), {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        try:
            while pending or futures:
                for item in items_to_start(pending, list(futures.values()), workers, train_jobs):
                    pending.remove(item)
                    futures[pool.submit(_work, light, item, threads)] = item
                done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    item = futures.pop(future)
                    print(f"== worker finished {future.result()}", flush=True)
                    if item[0] == "train":
                        pending.extend(after_training.get(item[1], []))
        except BrokenProcessPool:
            raise UserError(f"compare --jobs {jobs}: a worker process died (out of memory?); run the same command "
                            f"again with fewer --jobs{' or --train-jobs' if train_jobs > 1 else ''}: finished "
                            "runs and evaluations are kept") from None


# ---------------------------------------------------------------- the command


def run_compare(args, command_line: str) -> dict:
    """CLI entry: plan (all checks), train each method, evaluate each model, write compare.json/.md/.png."""
    started = time.perf_counter()
    plan = plan_compare(args, command_line)
    trained = [row for row in plan.rows if row.method != BASE]
    count = f"{len(plan.rows)} row{'s' if len(plan.rows) != 1 else ''}"
    print(f"compare: {count} ({', '.join(row.label for row in plan.rows)}) on {plan.split.name}, "
          f"budget: {plan.budget['equalised']}, output in {plan.out}", flush=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.jobs > 1:
        # then the loops below find every run and evaluation done
        run_rows_in_parallel(plan, plan.jobs, plan.train_jobs)

    train_info = {}
    for n, row in enumerate(trained, start=1):
        train_info[row.label] = train_row(plan, row, f"{n}/{len(trained)}")
    evals = {}
    jobs = [(row, variant) for variant in ("icl", *plan.eval_settings["diagnostics"]) for row in plan.rows]
    for n, (row, variant) in enumerate(jobs, start=1):
        evals[row.label, variant] = evaluate_row(plan, row, variant, f"{n}/{len(jobs)}")

    print("== tabulating", flush=True)
    seeds = plan.eval_settings["seeds"]
    subsets = {"all": list(plan.split.test), "unseen_domain": list(plan.split.unseen_domain_test)}
    rows = []
    for row in plan.rows:
        result = evals[row.label, "icl"]["result"]
        entry = {"label": row.label, "method": row.method, "sweep_value": row.sweep_value, "seed_of": row.seed_of,
                 "recipe": row.config.to_dict() if row.config else None,
                 "train": train_info.get(row.label, {"steps": 0, "tokens": 0}),
                 "eval_files": {variant: str(Path("evals") / f"{name}.json") for variant, (_, name) in row.evals.items()},
                 "eval_wall_seconds": sum(evals[row.label, v]["wall_seconds"] for v in row.evals),
                 "eval": {"icl": {"tasks": result["tasks"], "average": result["average"]}},
                 "validation": _validation_curve(plan, row)}
        if "adapted" in result:
            entry["eval"]["adapted"] = result["adapted"]
        for variant in plan.eval_settings["diagnostics"]:
            diagnostic = evals[row.label, variant]["result"]
            entry["eval"][variant] = {"tasks": diagnostic["tasks"], "average": diagnostic["average"],
                                      "applied": diagnostic.get("demo_labels_applied")}
        add_differences(entry["eval"])
        add_block_summaries(entry, subsets, seeds)
        rows.append(entry)
    if plan.sweep and plan.sweep["field"] == "seed":  # one more row: the seeds' mean
        pooled = pooled_row([row for row in rows if row["method"] != BASE], POOLED_LABEL, subsets, seeds)
        rows += [pooled] if pooled else []
    if plan.train_seeds:  # each method's row is the mean of its seeds; the seeds' own rows follow
        means = [pooled_row([row for row in rows if row["seed_of"] == method], method, subsets, seeds)
                 for method in dict.fromkeys(row["method"] for row in rows if row["seed_of"])]
        rows = [row for row in rows if row["method"] == BASE] + means + [row for row in rows if row["seed_of"]]
    tests, headline = paired_tests(rows, plan.split, bool(plan.sweep))
    from .models import pick_device

    report = {
        "command": plan.command, "model": plan.model, "data_dir": str(plan.data_dir),
        "split": {"name": plan.split.name, "source": plan.split.source, "train": list(plan.split.train),
                  "test": list(plan.split.test), "unseen_domain_test": list(plan.split.unseen_domain_test)},
        "methods": list(dict.fromkeys(row.method for row in plan.rows)), "budget": plan.budget,
        "recipe": plan.recipe, "sweep": plan.sweep, "train_seeds": plan.train_seeds, "eval": plan.eval_settings,
        "dtype": plan.dtype,
        "rows": rows, "paired_tests": tests, "headline": headline,
        "statistics": "cell = (task, seed) metric in percent; per seed s, a_s = mean over tasks; mean = mean_s a_s, "
                      "worst = min_s a_s; ci95 = Student-t interval of the mean over task x seed cells; paired "
                      "tests pair the same (task, seed) cells of two rows (paired t-test and Wilcoxon signed-rank)",
        "wall_seconds": round(time.perf_counter() - started, 2),
        "provenance": provenance(pick_device(plan.device)),
    }
    report = _clean(report)
    markdown = format_markdown(report)
    atomic_write_text(plan.out / "compare.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(plan.out / "compare.md", markdown)
    plot(report, plan.out / "compare.png")
    if any(entry["validation"] for entry in rows):
        plot_curves(report, plan.out / "curves.png")
    print()
    print(markdown)
    print(f"plot: {plan.out / 'compare.png'}")
    print(f"results: {plan.out / 'compare.json'}, {plan.out / 'compare.md'}")
    return report
