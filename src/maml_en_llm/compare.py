"""`maml-en-llm compare`: train several methods from one base model on one budget, evaluate all, tabulate, plot.

    DIR/runs/<method>-<hash8>/      one training run each (train.py's layout); the hash covers the model, data
                                    dir, split, dtype, the resolved recipe and the method
    DIR/evals/<name>-<hash8>.json   one evaluation each; the hash covers the model (or run) and every eval setting
    DIR/compare.json                everything: config, budget, per method/task/seed numbers, CIs, tests, times
    DIR/compare.md                  the paper-style table, "mean (worst)" per cell, and the paired tests
    DIR/compare.png                 bars with 95% CIs (a line plot over the field values with --sweep)

Every input is checked before anything is written. Finished runs and cached evaluations are reused, a partial
run resumes from its last checkpoint, so re-running a killed compare continues where it stopped and re-running a
finished one trains and evaluates nothing. docs/compare.md explains budgets, caching and the statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import METHODS, TrainConfig, make_config, parse_overrides
from .errors import UserError
from .evaluate import check_eval_settings, evaluate_model, load_eval_data
from .models import release_memory
from .compare_report import (BASE, add_block_summaries, difference_block, format_markdown, paired_tests, plot,
                             plot_curves, pooled_seed_row)
from .paths import atomic_write_text, check_output, default_data_dir, json_digest
from .provenance import provenance
from .tasks import Split
from .train import load_training_tasks, train
from .validation import load_validation

SCHEMA = 2  # bump when a cached evaluation's content changes meaning
# Recipe fields that compare's own flags set for every method, so a key=value would silently split train and eval.
SET_BY_FLAGS = {"method": "--methods", "k": "--k (it sets the training and the evaluation k)",
                "prompt": "--prompt (it sets the training and the evaluation direction)"}
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class Row:
    """One line of the table: the base model, one method, or one value of the swept field."""
    label: str
    method: str  # "none" or a training method
    config: TrainConfig | None = None
    sweep_value: str | None = None
    run_name: str | None = None  # "<method>-<hash8>"
    evals: dict = dataclasses.field(default_factory=dict)  # variant -> (cache key, file name): icl + diagnostics
    tasks: list | None = None  # its training tasks, loaded and checked while planning


@dataclass
class Plan:
    """Everything a compare will do, resolved and checked before any file is written."""
    out: Path
    model: str
    model_id: str  # what identifies the base model in hashes (absolute path for a folder)
    data_dir: Path
    split: Split
    split_spec: str
    rows: list[Row]
    budget: dict
    recipe: dict  # the shared recipe (before the method, budget and sweep value are applied)
    sweep: dict | None
    eval_settings: dict
    device: str | None
    dtype: str
    command: str
    allow_train_test_overlap: bool = False


def _clean(value):
    """NaN/inf -> None, recursively, so compare.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------- planning (no writes)


def parse_methods(methods: list[str]) -> list[str]:
    if not methods:
        raise UserError("--methods is empty; give e.g. none,metaicl,maml")
    known = (BASE, *METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(known)}")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise UserError(f"--methods repeats {', '.join(repeated)}; name each method once")
    return list(methods)


# Recipe fields added after compare folders existed: they enter a run's hash only when set (and read by the row's
# method), so the runs cached before they existed keep their names (and are reused).
HASHED_WHEN_SET = {"inner_adam_eps": None, "batch_tasks": False}  # field -> the value that leaves it out


def parse_sweep(text: str, methods: list[str], budget_flag: str | None) -> tuple[str, list[str]]:
    """`FIELD=v1,v2,...` -> (field, raw values); the values themselves are checked by `make_config` later."""
    if "=" not in text:
        raise UserError(f"--sweep {text!r}: expected FIELD=v1,v2,... (e.g. inner_steps=1,2,4)")
    field, raw = (part.strip() for part in text.split("=", 1))
    if field not in RECIPE_FIELDS:
        raise UserError(f"--sweep {field}: not a recipe field; choose one of {', '.join(RECIPE_FIELDS)}")
    if field == "method":
        raise UserError("--sweep method: compare methods with --methods instead")
    if field in ("prompt", "bos"):
        how = "--prompt VALUE" if field == "prompt" else "bos=VALUE"
        raise UserError(f"--sweep {field}: every row is evaluated with one {field}; run one compare per value "
                        f"({how})")
    if field == "adam_betas":
        raise UserError("--sweep adam_betas: list-valued fields cannot be swept; run one compare per value")
    if field == "steps" and budget_flag:
        raise UserError(f"--sweep steps: conflicts with {budget_flag}, which fixes the budget; drop one of them")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise UserError(f"--sweep {field}=: no values; give e.g. {field}=1,2,4")
    if len(set(values)) != len(values):
        raise UserError(f"--sweep {field}: repeats a value in {values}; give each value once")
    trained = [m for m in methods if m != BASE]
    if len(trained) != 1:
        raise UserError(f"--sweep needs exactly one trained method in --methods (plus optionally none), got "
                        f"{', '.join(trained) or 'none'}")
    return field, values


def episode_tokens(config: TrainConfig, tasks, tokenizer):
    """The training tokens of step 0, 1, 2, ... (an endless generator): len(context) + len(target) of every
    support and query instance of the step's episode, exactly the `tokens` the train loop logs. Tokenization only."""
    from .prompts import make_tokenize
    from .train import episode_of, episode_token_count, training_format

    tokenize, fmt = make_tokenize(tokenizer), training_format(config, tokenizer)
    step = 0
    while True:
        yield episode_token_count(episode_of(config, tasks, step, tokenize, fmt))
        step += 1


def steps_for_tokens(config: TrainConfig, tasks, tokenizer, tokens: int) -> tuple[int, int]:
    """The fewest meta-steps whose episodes hold >= `tokens` real tokens, and that token count."""
    step, total = 0, 0
    counts = episode_tokens(config, tasks, tokenizer)
    while total < tokens:
        total += next(counts)
        step += 1
    return step, total


def steps_for_seconds(config: TrainConfig, tasks, tokenizer, seconds: float, seconds_per_token: float) -> int:
    """The most meta-steps whose predicted time (their episodes' tokens x the measured seconds per token) fits in
    `seconds`; at least 1."""
    step, total = 0, 0
    for count in episode_tokens(config, tasks, tokenizer):
        if (total + count) * seconds_per_token > seconds:
            return max(1, step)
        total += count
        step += 1
    raise AssertionError("unreachable: episode_tokens is endless")


def _model_id(model: str) -> str:
    from .models import PACKAGED_MODELS

    path = Path(model).expanduser()
    return str(path.resolve()) if model not in PACKAGED_MODELS and path.is_dir() else model


BUDGET_KINDS = ("steps", "tokens", "seconds")


def parse_budget(args) -> tuple[str, int | float] | None:
    """`--budget KIND=N` (or its shorthands `--steps N`, `--tokens N`) -> (kind, value); None = the recipe's steps."""
    given = [(flag, value) for flag, value in (("--budget", getattr(args, "budget", None)), ("--steps", args.steps),
                                                ("--tokens", args.tokens)) if value is not None]
    if len(given) > 1:
        raise UserError(f"{given[0][0]} and {given[1][0]} both given; equalise one budget")
    if not given:
        return None
    flag, value = given[0]
    if flag != "--budget":
        kind = flag[2:]
    else:
        kind, _, raw = str(value).partition("=")
        if kind not in BUDGET_KINDS or not raw:
            raise UserError(f"--budget {value!r}: expected steps=N, tokens=N or seconds=S")
        try:
            value = float(raw) if kind == "seconds" else int(raw)
        except ValueError:
            raise UserError(f"--budget {value!r}: {raw!r} is not a number") from None
    if not value >= 1:
        raise UserError(f"--budget {kind}={value}: must be at least 1")
    return kind, value


DIAGNOSTICS = ("zero_shot", "random", "symbols")


def parse_diagnostics(names: list[str]) -> list[str]:
    """--diagnostics zero-shot,random,symbols (or none) -> the extra evaluations of every row."""
    chosen = [name.replace("-", "_") for name in names if name != "none"]
    unknown = [name for name in chosen if name not in DIAGNOSTICS]
    if unknown:
        raise UserError(f"--diagnostics: unknown {unknown[0]!r}; choose from zero-shot, random, symbols, or none")
    return list(dict.fromkeys(chosen))


def plan_compare(args, command_line: str) -> Plan:
    """Resolve and check every input (methods, sweep, budget, recipe, data, eval settings); write nothing."""
    methods = parse_methods(args.methods)
    budget_given = parse_budget(args)
    budget_flag = f"--budget {budget_given[0]}" if budget_given else None
    sweep = parse_sweep(args.sweep, methods, budget_flag) if args.sweep else None
    overrides = parse_overrides(args.overrides)
    for key, flag in SET_BY_FLAGS.items():
        if key in overrides:
            raise UserError(f"{key}={overrides[key]}: compare sets {key} for every method; use {flag}")
    if "steps" in overrides and budget_flag:
        raise UserError(f"steps={overrides['steps']}: conflicts with {budget_flag}; drop one of them")
    if sweep and sweep[0] in overrides:
        raise UserError(f"{sweep[0]}={overrides[sweep[0]]}: the field is also swept by --sweep; drop one of them")
    out = check_output(Path(args.out))
    allow_overlap = getattr(args, "allow_train_test_overlap", False)

    if args.k is None:  # one k for training and evaluation: the recipe's when it has one, else MetaICL's 16
        args.k = make_config(args.config).k if args.config is not None else 16
    data_dir = Path(args.data_dir if args.data_dir is not None else default_data_dir()).expanduser().absolute()
    check_eval_settings(args.k, args.batch_size, args.adapt_steps, args.adapt_lr, args.adapt_optimizer)
    eval_data = load_eval_data(data_dir, args.split, args.k, args.seeds, args.max_test)  # checks every test file
    split = eval_data.split

    fixed = {"k": args.k, "prompt": args.prompt}
    if budget_given and budget_given[0] == "steps":
        fixed["steps"] = budget_given[1]
    shared = make_config(args.config, overrides, **fixed)
    variants: list[tuple[str, str, str | None, dict]] = []  # (label, method, sweep value, extra overrides)
    for method in methods:
        if method == BASE:
            variants.append((BASE, BASE, None, {}))
        elif sweep:
            field, values = sweep
            variants += [(f"{field}={value}", method, value, {field: yaml.safe_load(value)}) for value in values]
        else:
            variants.append((method, method, None, {}))

    model_id = _model_id(args.model)
    tokenizer, pools = None, {}
    rows = []
    for label, method, value, extra in variants:
        row = Row(label, method, sweep_value=value)
        if method != BASE:
            try:
                config = make_config(args.config, {**overrides, **extra}, **fixed, method=method)
            except UserError as err:
                raise UserError(f"--sweep {label}: {err}" if value is not None else str(err)) from None
            key = (config.max_examples_per_task, config.method == "ict", config.demonstrations,
                   config.support_size, config.query_size)
            if key not in pools:  # data problems surface here, before any training
                pools[key] = load_training_tasks(config, data_dir, args.split, allow_overlap)
            if config.eval_every:  # and those of in-training validation's dev files
                load_validation(config, data_dir, args.split)
            if budget_given and budget_given[0] == "tokens":
                if tokenizer is None:
                    from .models import load_tokenizer

                    tokenizer = load_tokenizer(args.model)
                steps, _ = steps_for_tokens(config, pools[key], tokenizer, budget_given[1])
                config = dataclasses.replace(config, steps=steps)
            row.config, row.tasks = config, pools[key]
            ignored = config.ignored_fields()
            recipe = {name: value for name, value in config.to_dict().items()
                      if not (name in HASHED_WHEN_SET and (value == HASHED_WHEN_SET[name] or name in ignored))}
            if budget_given and budget_given[0] == "seconds":  # steps come from a timed probe (train_row)
                recipe = {**recipe, "steps": None, "seconds_budget": budget_given[1]}
            identity = {"model": model_id, "data_dir": str(data_dir), "split": {"name": split.name,
                        "train": list(split.train)}, "dtype": args.dtype, "method": method,
                        "recipe": recipe}
            row.run_name = f"{method}-{json_digest(identity, 8)}"
        rows.append(row)

    eval_settings = {"k": args.k, "seeds": list(args.seeds), "prompt": args.prompt, "format": "newline",
                     "bos": shared.bos, "max_test": args.max_test,
                     "batch_size": args.batch_size, "adapt_steps": args.adapt_steps,
                     "adapt_lr": args.adapt_lr if args.adapt_steps else None,
                     "adapt_optimizer": args.adapt_optimizer if args.adapt_steps else None, "dtype": args.dtype}
    eval_settings["diagnostics"] = parse_diagnostics(getattr(args, "diagnostics", ["none"]))
    for row in rows:
        base = {"schema": SCHEMA, "model": row.run_name or model_id, "data_dir": str(data_dir),
                "split": {"name": split.name, "test": list(split.test),
                          "unseen_domain_test": list(split.unseen_domain_test)},
                **{k: v for k, v in eval_settings.items() if k != "diagnostics"}, "demo_labels": "gold"}
        keys = {"icl": base}
        no_adapt = {"adapt_steps": 0, "adapt_lr": None, "adapt_optimizer": None}
        for variant in eval_settings["diagnostics"]:
            keys[variant] = {**base, **no_adapt, **({"k": 0} if variant == "zero_shot" else {"demo_labels": variant})}
        row.evals = {variant: (key, f"{row.run_name or BASE}-{variant}-{json_digest(key, 8)}")
                     for variant, key in keys.items()}

    kind = budget_given[0] if budget_given else "steps"
    if kind == "tokens":
        budget = {"equalised": "tokens", "tokens": budget_given[1], "source": budget_flag,
                  "note": "each method trains the fewest meta-steps whose episodes reach the token budget"}
    elif kind == "seconds":
        budget = {"equalised": "seconds", "seconds": budget_given[1], "source": budget_flag,
                  "note": f"each method trains the most meta-steps whose predicted time fits S: its own episodes' "
                          f"tokens x its seconds per token, timed on {PROBE_STEPS} meta-steps after a warm-up step"}
    else:
        budget = {"equalised": "steps", "steps": shared.steps, "source": budget_flag or "recipe",
                  "note": "every method trains the same number of meta-steps"}
    return Plan(out=out, model=args.model, model_id=model_id, data_dir=data_dir, split=split,
                split_spec=args.split, rows=rows, budget=budget, recipe=shared.to_dict(),
                sweep={"field": sweep[0], "values": sweep[1]} if sweep else None, eval_settings=eval_settings,
                device=args.device, dtype=args.dtype, command=command_line, allow_train_test_overlap=allow_overlap)


# ---------------------------------------------------------------- training and evaluation (cached)


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


PROBE_STEPS = 5


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


def train_row(plan: Plan, row: Row, position: str) -> dict:
    """Train (or resume, or reuse) one row's run; return steps, tokens and times read back from the run."""
    run_dir = plan.out / "runs" / row.run_name
    timing_path = run_dir / "compare_timing.json"
    if (run_dir / "final" / "config.json").exists():
        print(f"== training {row.label} ({position}): done already, reusing {run_dir}", flush=True)
    else:
        if plan.budget["equalised"] == "seconds":
            row.config = dataclasses.replace(row.config, steps=probe_steps(plan, row, run_dir))
        state = "resuming" if (run_dir / "config.yaml").exists() else "training"
        print(f"== {state} {row.label} ({position}): {row.config.steps} meta-steps into {run_dir}", flush=True)
        started = time.perf_counter()
        train(row.config, model_name=plan.model, data_dir=plan.data_dir, split=plan.split_spec, out_dir=run_dir,
              resume=True, device=plan.device, dtype=plan.dtype, command=plan.command,
              allow_train_test_overlap=plan.allow_train_test_overlap)
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


def evaluate_row(plan: Plan, row: Row, variant: str, position: str) -> dict:
    """One of the row's evaluations (`icl`: in context and, with --adapt-steps, adapted; or a diagnostic), from
    its cache or computed and cached."""
    key, name = row.evals[variant]
    path = plan.out / "evals" / f"{name}.json"
    label = row.label if variant == "icl" else f"{row.label} ({variant.replace('_', '-')})"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                print(f"== evaluating {label} ({position}): cached in {path}", flush=True)
                return cached
        except ValueError:
            pass  # unreadable: evaluate again
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
                            journal=journal, model_id=model_fingerprint(source))
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
        entry = {"label": row.label, "method": row.method, "sweep_value": row.sweep_value,
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
        if "zero_shot" in entry["eval"]:
            entry["eval"]["icl_gain"] = difference_block(entry["eval"]["icl"], entry["eval"]["zero_shot"])
        add_block_summaries(entry, subsets, seeds)
        rows.append(entry)
    if plan.sweep and plan.sweep["field"] == "seed":
        pooled = pooled_seed_row(rows, subsets, seeds)
        rows += [pooled] if pooled else []
    tests, headline = paired_tests(rows, plan.split, bool(plan.sweep))
    from .models import pick_device

    report = {
        "command": plan.command, "model": plan.model, "data_dir": str(plan.data_dir),
        "split": {"name": plan.split.name, "source": plan.split.source, "train": list(plan.split.train),
                  "test": list(plan.split.test), "unseen_domain_test": list(plan.split.unseen_domain_test)},
        "methods": list(dict.fromkeys(row.method for row in plan.rows)), "budget": plan.budget,
        "recipe": plan.recipe, "sweep": plan.sweep, "eval": plan.eval_settings, "dtype": plan.dtype,
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
