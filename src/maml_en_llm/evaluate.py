"""`maml-en-llm eval`: k-shot in-context evaluation of a model on a split's test tasks, optionally after adaptation.

For every test task and seed, the first k examples of `<task>_<K>_<seed>_train.jsonl` (the smallest K >= k present,
MetaICL ships K = 16) are the demonstrations
(shared by all test examples of that seed, encoded once), each test example's options are scored by
`scoring.score_options`, the lowest loss is the prediction, and the seed's metric is Macro-F1 (classification)
or accuracy (multi-choice) in percent. A task reports its per-seed values, their mean and the worst seed; the
split reports the macro-average over tasks and over its unseen-domain subset. `docs/evaluation.md` has the details.

All data is read and checked before the model loads, so a bad input fails in a second; results are written
once, atomically, at the end.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapt import OPTIMIZERS, MAX_GRAD_NORM, adapt, compute_context, demonstration_loss
from .errors import UserError
from .eval_journal import append_cell, model_fingerprint, read_journal, settings_digest
from .labels import LABEL_MODES, random_labels, symbolize
from .metrics import metric_name, summarize, task_metric
from .paths import atomic_write_text, check_output, default_data_dir
from .prompts import BOS_CHOICES, FORMATS, PromptFormat, default_format, encode_prefix, make_tokenize, prompt_format
from .provenance import provenance
from .scoring import predict, score_options
from .tasks import Example, Split, check_split_data, load_demonstrations, load_split, load_task_meta, load_test


JOURNAL = "results.partial.jsonl"
EXAMPLE_FILES = ("test", "dev")  # eval --examples: which file of each seed is scored


@dataclass(frozen=True)
class EvalCell:
    """One (task, seed): its demonstrations and test examples."""
    task: str
    seed: int
    demonstrations: list[Example]
    test: list[Example]


@dataclass(frozen=True)
class EvalData:
    """Everything an evaluation reads, loaded and validated up front."""
    data_dir: Path
    split: Split
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    k: int
    max_test: int | None
    task_types: dict[str, str]
    cells: list[EvalCell]
    examples: str = "test"  # which file of each seed the scored examples come from: test or dev


def _missing_data_dir(data_dir: Path) -> UserError:
    return UserError(f"{data_dir}: data folder not found; run `maml-en-llm data bigbench` or pass --data-dir")


def select_tasks(split: Split, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """The split's test tasks, or the requested subset of them (in the order asked, duplicates dropped)."""
    if not tasks:
        return split.test
    unknown = [t for t in tasks if t not in split.test]
    if unknown:
        raise UserError(f"--tasks: {unknown[0]!r} is not a test task of split {split.name!r} "
                        f"({split.source}); choose from {list(split.test)}")
    return tuple(dict.fromkeys(tasks))


def load_eval_data(data_dir: Path | str | None, split: str | Split, k: int, seeds: Sequence[int],
                   max_test: int | None = None, tasks: Sequence[str] | None = None,
                   examples: str = "test") -> EvalData:
    """Read and check every demonstration and test file the evaluation needs (UserError naming what is wrong).
    `examples="dev"` scores each seed's dev examples instead of its test examples, to choose settings without
    looking at the test set."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if not data_dir.is_dir():
        raise _missing_data_dir(data_dir)
    if k < 0:
        raise UserError(f"--k must be >= 0 (0 = zero-shot), got {k}")
    if not seeds:
        raise UserError("--seeds is empty; give at least one seed, e.g. --seeds 100,13")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {list(seeds)} repeats a seed; give each seed once")
    if max_test is not None and max_test < 1:
        raise UserError(f"--max-test must be >= 1, got {max_test}")
    if examples not in EXAMPLE_FILES:
        raise UserError(f"--examples must be one of {list(EXAMPLE_FILES)}, got {examples!r}")
    split = split if isinstance(split, Split) else load_split(split, data_dir)
    selected = select_tasks(split, tasks)
    check_split_data(replace(split, test=selected), data_dir, parts=("test",), seeds=tuple(seeds), examples=examples)
    cells, task_types = [], {}
    for task in selected:
        for seed in seeds:
            test = load_test(data_dir, task, seed, max_test, examples)
            cells.append(EvalCell(task, seed, load_demonstrations(data_dir, task, seed, k), test))
            if task not in task_types:
                meta = load_task_meta(data_dir, task, test)
                if not (data_dir / "config" / "tasks" / f"{task}.json").is_file():
                    rule = "all test examples share one option list" if meta.task_type == "classification" else \
                        "test examples have different option lists"
                    print(f"warning: {data_dir}/config/tasks/{task}.json not found; task type guessed as "
                          f"{meta.task_type!r} ({rule}, metric {metric_name(meta.task_type)}); add the file to "
                          "set it", file=sys.stderr)
                if meta.task_type not in ("classification", "multi-choice"):
                    raise UserError(f"{data_dir}/config/tasks/{task}.json: task_type {meta.task_type!r} cannot be "
                                    "scored by options; remove the task from the split's test list")
                task_types[task] = meta.task_type
    return EvalData(data_dir, split, selected, tuple(seeds), k, max_test, task_types, cells, examples)


def check_eval_settings(k: int, batch_size: int, adapt_steps: int, adapt_lr: float, adapt_optimizer: str,
                        format: str = "auto", bos: str = "auto") -> None:
    if format not in ("auto",) + FORMATS:
        raise UserError(f"--format must be auto or one of {list(FORMATS)}, got {format!r}")
    if bos not in BOS_CHOICES:
        raise UserError(f"--bos must be one of {list(BOS_CHOICES)}, got {bos!r}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if adapt_steps < 0:
        raise UserError(f"--adapt-steps must be >= 0, got {adapt_steps}")
    if adapt_steps > 0:
        if k < 1:
            raise UserError("--adapt-steps needs demonstrations to adapt on; use --k 1 or more")
        if not adapt_lr > 0:
            raise UserError(f"--adapt-lr must be > 0, got {adapt_lr}")
        if adapt_optimizer not in OPTIMIZERS:
            raise UserError(f"--adapt-optimizer must be one of {list(OPTIMIZERS)}, got {adapt_optimizer!r}")


def _evaluate_cell(model, tokenizer, tokenize, cell: EvalCell, data: EvalData, fmt: PromptFormat, batch_size: int,
                   adapt_steps: int, adapt_lr: float, adapt_optimizer: str) -> dict:
    """One (task, seed): its in-context metric and, when adapting, the adapted metric and the demonstrations'
    loss before and after; plus the scoring counts it added (a journal entry, see eval_journal.py)."""
    stats: dict = {}
    task_type = data.task_types[cell.task]
    entry: dict = {"task": cell.task, "seed": cell.seed,
                   "icl": _cell_metric(model, tokenizer, tokenize, cell, data.k, fmt, task_type, batch_size, stats)}
    if adapt_steps > 0:
        torch.manual_seed(cell.seed)
        tuned = adapt(model, tokenizer, cell.demonstrations, fmt, adapt_steps, adapt_lr, adapt_optimizer,
                      tokenize=tokenize)
        before = demonstration_loss(model, tokenizer, cell.demonstrations, fmt, tokenize=tokenize)
        with compute_context(model)():  # the fp32 copy computes as the model it came from (adapt.py)
            after = demonstration_loss(tuned, tokenizer, cell.demonstrations, fmt, tokenize=tokenize)
            entry["adapted"] = _cell_metric(tuned, tokenizer, tokenize, cell, data.k, fmt, task_type, batch_size,
                                            stats)
        entry["demo_loss"] = {"before": before, "after": after}
        del tuned
    entry["stats"] = stats
    return entry


def _cell_metric(model, tokenizer, tokenize, cell: EvalCell, k: int, fmt: PromptFormat, task_type: str,
                 batch_size: int, stats: dict) -> float:
    prefix = encode_prefix(tokenize, cell.demonstrations, fmt)  # once per seed, shared by its test examples
    losses = score_options(model, tokenizer, prefix, k, cell.test, fmt, batch_size, tokenize=tokenize, stats=stats)
    predictions = [example.options[predict(option_losses)] for example, option_losses in zip(cell.test, losses)]
    return task_metric(task_type, predictions, [example.output for example in cell.test])


def with_demo_labels(data: EvalData, mode: str) -> tuple[EvalData, dict[str, bool]]:
    """The evaluation data with its demonstrations relabelled (labels.py): "gold" unchanged, "random" labels in
    the demonstrations, "symbols" renaming labels in demonstrations and test examples alike. Draws are fixed by
    (seed, task). Returns the data and, per task, whether the transform applied (symbols need one shared label
    set, so a multi-choice task keeps its gold labels)."""
    if mode not in LABEL_MODES:
        raise UserError(f"--demo-labels must be one of {list(LABEL_MODES)}, got {mode!r}")
    if mode == "gold":
        return data, {task: True for task in data.tasks}
    cells, applied = [], {}
    for cell in data.cells:
        rng = np.random.default_rng([cell.seed, zlib.crc32(cell.task.encode())])
        if mode == "random":
            cells.append(replace(cell, demonstrations=random_labels(cell.demonstrations, rng)))
            applied[cell.task] = True
        else:
            demos, test, mapping = symbolize(cell.demonstrations, cell.test, rng)
            cells.append(replace(cell, demonstrations=demos, test=test))
            applied[cell.task] = applied.get(cell.task, True) and mapping is not None
    return replace(data, cells=cells), applied


def _block(data: EvalData, per_seed: dict[str, dict[int, float]]) -> dict:
    """{"tasks": {task: {...}}, "average": {...}} for one model's per-seed values."""
    n_test = {}
    for cell in data.cells:
        n_test.setdefault(cell.task, {})[str(cell.seed)] = len(cell.test)
    tasks = {task: {"task_type": data.task_types[task], "metric": metric_name(data.task_types[task]),
                    **summarize(per_seed[task]), "n_test": n_test[task]} for task in data.tasks}
    unseen = [t for t in data.tasks if t in data.split.unseen_domain_test]

    def mean_of(names: list[str], key: str) -> float | None:
        return sum(tasks[t][key] for t in names) / len(names) if names else None

    average = {"all": mean_of(list(data.tasks), "mean"), "unseen_domain": mean_of(unseen, "mean"),
               "worst_all": mean_of(list(data.tasks), "worst"), "worst_unseen_domain": mean_of(unseen, "worst"),
               "n_tasks": len(data.tasks), "unseen_domain_tasks": unseen}
    return {"tasks": tasks, "average": average}


def meta_trained(model: torch.nn.Module) -> bool:
    """Whether the model was loaded from the final/ folder of a `maml-en-llm train` run (run.json beside it)."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source:
        return False
    path = Path(source)
    return path.name == "final" and (path.parent / "run.json").is_file()


def resolve_format(model: torch.nn.Module, requested: str = "auto") -> str:
    """`--format auto` is MetaICL's choice (`prompts.default_format`): space for a GPT-2 (config.model_type
    "gpt2") that was not meta-trained by this package, newline otherwise."""
    if requested != "auto":
        return requested
    return default_format(getattr(getattr(model, "config", None), "model_type", None), meta_trained(model))


def evaluate_data(model: torch.nn.Module, tokenizer, data: EvalData, *, method: str = "direct", batch_size: int = 16,
                  adapt_steps: int = 0, adapt_lr: float = 1e-5, adapt_optimizer: str = "adam",
                  format: str = "auto", bos: str = "auto", demo_labels: str = "gold",
                  progress: bool = True, journal: Path | None = None, model_id: dict | None = None) -> dict:
    """Evaluate on already loaded data (see `evaluate_model`). With `journal`, each finished (task, seed) cell is
    recorded there and cells recorded by an earlier, interrupted run with the same settings are reused
    (eval_journal.py); `model_id` identifies the model in those settings (default: its name or path)."""
    check_eval_settings(data.k, batch_size, adapt_steps, adapt_lr, adapt_optimizer, format, bos)
    data, relabelled = with_demo_labels(data, demo_labels)
    if adapt_steps > 0:
        compute_context(model)  # refuses float16 before any work
    fmt = prompt_format(tokenizer, method, format=resolve_format(model, format), bos=bos)
    tokenize = make_tokenize(tokenizer)
    in_context: dict[str, dict[int, float]] = {task: {} for task in data.tasks}
    adapted: dict[str, dict[int, float]] = {task: {} for task in data.tasks}
    demo_losses: dict[str, dict[str, dict[str, float]]] = {task: {"before": {}, "after": {}} for task in data.tasks}
    stats: dict = {}
    parameter = next(model.parameters(), None)
    digest = settings_digest({
        "model": model_id or getattr(getattr(model, "config", None), "_name_or_path", None),
        "dtype": str(parameter.dtype) if parameter is not None else None,
        "data_dir": str(data.data_dir), "split": [data.split.name, data.split.source], "tasks": list(data.tasks),
        "seeds": list(data.seeds), "k": data.k, "max_test": data.max_test, "prompt": method, "format": fmt.name,
        "bos": fmt.bos_id, "demo_labels": demo_labels, "batch_size": batch_size,
        "adapt": [adapt_steps, adapt_lr, adapt_optimizer] if adapt_steps > 0 else None,
        **({"examples": data.examples} if data.examples != "test" else {})})
    done = read_journal(journal, digest)
    bar = tqdm(data.cells, desc="eval", unit="seed", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(f"{cell.task} seed {cell.seed}")
        entry = done.get((cell.task, cell.seed))
        if entry is None:
            entry = _evaluate_cell(model, tokenizer, tokenize, cell, data, fmt, batch_size, adapt_steps, adapt_lr,
                                   adapt_optimizer)
            append_cell(journal, digest, entry)
        in_context[cell.task][cell.seed] = entry["icl"]
        if adapt_steps > 0:
            adapted[cell.task][cell.seed] = entry["adapted"]
            for when in ("before", "after"):
                demo_losses[cell.task][when][str(cell.seed)] = entry["demo_loss"][when]
        for name, value in entry["stats"].items():
            stats[name] = stats.get(name, 0) + value
    bar.close()

    seconds = stats.get("seconds", 0.0)
    results = {
        "model": getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__,
        "split": data.split.name, "split_file": data.split.source, "data_dir": str(data.data_dir),
        "k": data.k, "prompt": method, "format": fmt.name, "bos": fmt.bos_id is not None, "seeds": list(data.seeds),
        "max_test": data.max_test, "examples": data.examples, "batch_size": batch_size, "demo_labels": demo_labels,
        "demo_labels_applied": {task: relabelled[task] for task in data.tasks},
        **_block(data, in_context),
        "scoring": {"sequences": stats.get("sequences", 0), "tokens": stats.get("tokens", 0),
                    "tokens_processed": stats.get("tokens_processed", 0),
                    "unique_tokens": stats.get("unique_tokens", 0),
                    "seconds": round(seconds, 3),
                    "sequences_per_s": stats.get("sequences", 0) / seconds if seconds else None,
                    "tokens_per_s": stats.get("tokens", 0) / seconds if seconds else None},
    }
    if adapt_steps > 0:
        results["adaptation"] = {"steps": adapt_steps, "lr": adapt_lr, "optimizer": adapt_optimizer,
                                 "max_grad_norm": MAX_GRAD_NORM, "batch": "all k demonstrations, each the target once"}
        block = _block(data, adapted)
        for task, losses in demo_losses.items():
            block["tasks"][task]["demo_loss"] = losses
        results["adapted"] = block
    return results


def evaluate_model(model: torch.nn.Module, tokenizer, *, data_dir, split, k: int, seeds: Sequence[int],
                   method: str = "direct", max_test: int | None = None, tasks: Sequence[str] | None = None,
                   batch_size: int = 16, adapt_steps: int = 0, adapt_lr: float = 1e-5, adapt_optimizer: str = "adam",
                   format: str = "auto", bos: str = "auto", demo_labels: str = "gold",
                   progress: bool = True, journal: Path | None = None, model_id: dict | None = None,
                   examples: str = "test") -> dict:
    """In-context (and, with adapt_steps > 0, adapted) results of an in-memory model: the `results.json`
    structure without command, hardware and wall time. The model's weights are left as they were.
    `journal`, `model_id`: resume an interrupted evaluation (`evaluate_data`).

    `format`: "auto" (MetaICL's choice, `resolve_format`), "newline" or "space"; `bos`: "auto" (where the
    tokenizer adds one), "yes" or "no" (see `prompts.prompt_format`). `examples`: "test" or "dev" (which file of
    each seed is scored)."""
    data = load_eval_data(data_dir, split, k, seeds, max_test, tasks, examples)
    return evaluate_data(model, tokenizer, data, method=method, batch_size=batch_size, adapt_steps=adapt_steps,
                         adapt_lr=adapt_lr, adapt_optimizer=adapt_optimizer, format=format, bos=bos,
                         demo_labels=demo_labels, progress=progress, journal=journal, model_id=model_id)


def hardware_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    import transformers

    return {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(block: dict, seeds: Sequence[int], title: str) -> str:
    """A plain-text table of one block (`results` or `results["adapted"]`)."""
    seed_cols = [str(s) for s in seeds]
    show_loss = any("demo_loss" in entry for entry in block["tasks"].values())
    name_width = max([len(t) for t in block["tasks"]] + [len("average (unseen domain)")])
    header = f"{'task':<{name_width}}  {'metric':<8}  {'mean':>5}  {'worst':>5}  " + "  ".join(f"{s:>6}" for s in seed_cols)
    if show_loss:
        header += "  demo loss before->after"
    lines = [title, header, "-" * len(header)]
    for task, entry in block["tasks"].items():
        line = (f"{task:<{name_width}}  {entry['metric']:<8}  {_fmt(entry['mean']):>5}  {_fmt(entry['worst']):>5}  "
                + "  ".join(f"{_fmt(entry['per_seed'].get(s)):>6}" for s in seed_cols))
        if show_loss:
            before, after = entry["demo_loss"]["before"], entry["demo_loss"]["after"]
            line += f"  {sum(before.values()) / len(before):.3f}->{sum(after.values()) / len(after):.3f}"
        lines.append(line)
    lines.append("-" * len(header))
    average = block["average"]
    lines.append(f"{'average (all)':<{name_width}}  {'':<8}  {_fmt(average['all']):>5}  {_fmt(average['worst_all']):>5}")
    lines.append(f"{'average (unseen domain)':<{name_width}}  {'':<8}  {_fmt(average['unseen_domain']):>5}  "
                 f"{_fmt(average['worst_unseen_domain']):>5}")
    return "\n".join(lines)


def format_results(results: dict) -> str:
    head = (f"{results['model']}  k={results['k']}  {results['prompt']}  {results['format']} format"
            f"{'  BOS' if results.get('bos') else ''}  split {results['split']}"
            f"{'  (dev examples)' if results.get('examples') == 'dev' else ''}")
    text = format_table(results, results["seeds"], f"In-context: {head}")
    if "adapted" in results:
        a = results["adaptation"]
        text += "\n\n" + format_table(results["adapted"], results["seeds"],
                                      f"Adapted ({a['steps']} steps, {a['optimizer']}, lr {a['lr']:g}) then in context")
    return text


def run_eval(args, command_line: str) -> None:
    """The `eval` subcommand: validate everything, load the model, evaluate, write `<--out>/results.json`, print the
    table."""
    started = time.perf_counter()
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    if not Path(data_dir).is_dir():
        raise _missing_data_dir(data_dir)
    out = check_output(Path(args.out), "--out", folder=True)  # a folder that will hold results.json
    check_eval_settings(args.k, args.batch_size, args.adapt_steps, args.adapt_lr, args.adapt_optimizer,
                        args.format, args.bos)
    data = load_eval_data(data_dir, args.split, args.k, args.seeds, args.max_test, args.tasks, args.examples)
    if args.adapt_steps > 0 and args.dtype == "float16":
        from .precision import check_update_dtype

        check_update_dtype(args.dtype, "--adapt-steps with --dtype")  # refused before the model loads
    from .models import load_model_and_tokenizer, parse_dtype, pick_device

    device, dtype = pick_device(args.device), parse_dtype(args.dtype)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype, device=device)
    journal = out / JOURNAL  # finished cells, so that a killed eval resumes (eval_journal.py)
    results = evaluate_data(model, tokenizer, data, method=args.prompt, batch_size=args.batch_size,
                            adapt_steps=args.adapt_steps, adapt_lr=args.adapt_lr,
                            adapt_optimizer=args.adapt_optimizer, format=args.format, bos=args.bos,
                            demo_labels=args.demo_labels, progress=True, journal=journal,
                            model_id=model_fingerprint(args.model))
    results["model"] = args.model
    results["dtype"] = args.dtype
    results["command"] = command_line
    results["hardware"] = hardware_info(device)
    results["provenance"] = provenance(device)
    results["wall_seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    journal.unlink(missing_ok=True)
    print(format_results(results))
    print(f"\nwall time {results['wall_seconds']:.1f} s; results written to {out / 'results.json'}")
