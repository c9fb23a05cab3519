"""In-training validation (`eval_every=N`): a learning curve of in-context performance against training tokens.

Every N meta-steps (and once before the first), the model in training is scored on held-out *dev* data of the
split's test tasks, never their test files: for each task and seed (the first `eval_seeds` of 100, 13, 21, 42,
87), the first `eval_k` examples of `<task>_16_<seed>_train.jsonl` are the demonstrations and the first
`eval_max_test` examples of `<task>_16_<seed>_dev.jsonl` (else the dev file of the smallest K present) are scored,
with the same option scoring and metrics as `maml-en-llm eval`. The same dev examples are also scored zero-shot,
so the curve shows the ICL gain (in-context minus zero-shot) as well: a model that only learns a better zero-shot
prior does not raise it.

Results go to `RUN_DIR/validation.jsonl`, one line per validation: step, total_tokens, icl, zero_shot, icl_gain
(averages over tasks, in percent), per-task values and the seconds it took (not counted in training time).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .evaluate import EvalCell, EvalData, evaluate_data
from .tasks import EVAL_SEEDS, find_eval_file, load_demonstrations, load_split, load_task_meta, read_examples


def load_validation(config: TrainConfig, data_dir: Path, split_spec: str) -> tuple[EvalData, EvalData]:
    """(in-context data, zero-shot data) for validation; a missing dev file is a one-line error."""
    split = load_split(split_spec, data_dir)
    tasks = split.test[: config.eval_tasks] if config.eval_tasks else split.test
    seeds = EVAL_SEEDS[: config.eval_seeds]
    k = config.k if config.eval_k is None else config.eval_k
    cells, task_types = [], {}
    for task in tasks:
        for seed in seeds:
            path = find_eval_file(data_dir, task, seed, "dev")
            if not path.is_file():
                raise UserError(f"{path}: dev file not found; in-training validation (eval_every) scores the test "
                                "tasks' dev files: add them, or set eval_every=0")
            dev = [e for e in read_examples(path, task) if len(e.options) >= 2][: config.eval_max_test]
            if not dev:
                raise UserError(f"{path}: no dev example with at least 2 options to score; set eval_every=0")
            cells.append(EvalCell(task, seed, load_demonstrations(data_dir, task, seed, k), dev))
            task_types.setdefault(task, load_task_meta(data_dir, task, dev).task_type)
    in_context = EvalData(Path(data_dir), replace(split, test=tuple(tasks)), tuple(tasks), seeds, k,
                          config.eval_max_test, task_types, cells)
    zero_shot = replace(in_context, k=0, cells=[replace(cell, demonstrations=[]) for cell in cells])
    return in_context, zero_shot


def validate(model, tokenizer, data: tuple[EvalData, EvalData], config: TrainConfig, compute) -> dict:
    """Score the validation data in context and zero-shot, in the training format (the recipe's direction and
    BOS rule); `compute` is the precision context of training."""
    started = time.perf_counter()
    settings = dict(method=config.prompt, format="newline", bos=config.bos, progress=False)
    with compute():
        icl = evaluate_data(model, tokenizer, data[0], **settings)
        zero = evaluate_data(model, tokenizer, data[1], **settings)
    per_task = {task: {"icl": icl["tasks"][task]["mean"], "zero_shot": zero["tasks"][task]["mean"]}
                for task in icl["tasks"]}
    return {"icl": icl["average"]["all"], "zero_shot": zero["average"]["all"],
            "icl_gain": icl["average"]["all"] - zero["average"]["all"], "k": data[0].k, "tasks": per_task,
            "seconds": round(time.perf_counter() - started, 2)}
