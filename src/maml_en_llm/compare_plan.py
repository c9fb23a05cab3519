"""What a `compare` will do, resolved and checked before anything is written: its rows (methods, swept values or
training seeds), each trained row's recipe and run name (a hash of everything that shapes the run, so finished runs
are reused), the budget turned into meta-steps, and each evaluation's cache key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from .compare_report import BASE
from .config import METHODS, TrainConfig, make_config, parse_overrides
from .errors import UserError
from .evaluate import check_eval_settings, load_eval_data
from .paths import check_output, default_data_dir, json_digest
from .tasks import Split
from .train import load_training_tasks
from .validation import load_validation

PROBE_STEPS = 5  # meta-steps timed (after a warm-up step) to plan a seconds budget
SCHEMA = 2  # bump when a cached evaluation's content changes meaning
# Recipe fields that compare's own flags set for every method, so a key=value would silently split train and eval.
SET_BY_FLAGS = {"method": "--methods", "k": "--k (it sets the training and the evaluation k)",
                "prompt": "--prompt (it sets the training and the evaluation direction)"}
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class Row:
    """One line of the table: the base model, one method, one value of the swept field, or one training seed of a
    method (--train-seeds)."""
    label: str
    method: str  # "none" or a training method
    config: TrainConfig | None = None
    sweep_value: str | None = None
    seed_of: str | None = None  # with --train-seeds: the method whose seed-mean row this run enters
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
    train_seeds: list[int] | None
    eval_settings: dict
    device: str | None
    dtype: str
    command: str
    allow_train_test_overlap: bool = False
    jobs: int = 1  # rows trained and evaluated at once, each in its own process (compare.run_rows_in_parallel)
    train_jobs: int | None = None  # at most this many of those processes train at once (None: all of them)


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


def parse_train_seeds(text: str, methods: list[str], sweep: str | None, overrides: dict) -> list[int]:
    """`--train-seeds 100,13,21` -> the training seeds every trained method runs with (at least two, distinct)."""
    if sweep:
        raise UserError("--train-seeds and --sweep both given; sweep training seeds with --sweep seed=... (one "
                        "method) or --train-seeds (every method), not both")
    if "seed" in overrides:
        raise UserError(f"seed={overrides['seed']}: conflicts with --train-seeds, which sets each run's seed; drop "
                        "one of them")
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--train-seeds {text!r}: expected integers, e.g. 100,13,21") from None
    if len(seeds) < 2:
        raise UserError(f"--train-seeds {text!r}: give at least two seeds (one seed is a plain compare with seed=N)")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--train-seeds {text!r}: repeats a seed; give each once")
    if all(m == BASE for m in methods):
        raise UserError("--train-seeds needs a trained method in --methods")
    return seeds


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


def parse_jobs(jobs: int, budget_given, train_jobs: int | None = None) -> tuple[int, int | None]:
    """`--jobs N` and `--train-jobs M`: N at least 1, not with a seconds budget, whose timing probes must have the
    device to themselves; M at least 1, and only with N above 1 (it limits how many of the N workers train)."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give a number of processes, 1 or more")
    if jobs > 1 and budget_given and budget_given[0] == "seconds":
        raise UserError(f"--jobs {jobs} with --budget seconds: each method's steps come from timing it, which "
                        "processes sharing the device would distort; use --jobs 1, or a tokens or steps budget")
    if train_jobs is not None:
        if train_jobs < 1:
            raise UserError(f"--train-jobs {train_jobs}: give a number of processes, 1 or more")
        if jobs == 1:
            raise UserError(f"--train-jobs {train_jobs}: limits the trainings among --jobs N workers; without "
                            "--jobs every training already runs alone, so drop it or add --jobs N")
    return jobs, train_jobs


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
    jobs, train_jobs = parse_jobs(getattr(args, "jobs", 1), budget_given, getattr(args, "train_jobs", None))
    train_seeds = (parse_train_seeds(args.train_seeds, methods, args.sweep, overrides)
                   if getattr(args, "train_seeds", None) else None)
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
        elif train_seeds:
            variants += [(f"{method} seed={seed}", method, None, {"seed": seed}) for seed in train_seeds]
        else:
            variants.append((method, method, None, {}))

    model_id = _model_id(args.model)
    tokenizer, pools = None, {}
    rows = []
    for label, method, value, extra in variants:
        row = Row(label, method, sweep_value=value, seed_of=method if train_seeds and method != BASE else None)
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
                sweep={"field": sweep[0], "values": sweep[1]} if sweep else None, train_seeds=train_seeds,
                eval_settings=eval_settings,
                device=args.device, dtype=args.dtype, command=command_line, allow_train_test_overlap=allow_overlap,
                jobs=jobs, train_jobs=train_jobs)
