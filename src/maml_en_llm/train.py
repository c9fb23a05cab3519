"""`maml-en-llm train`: the meta-training loop, one function to read top to bottom.

The loop owns devices, logging and checkpoints; `algorithms.py` owns the (meta-)gradient of one task's episode.

    RUN_DIR/config.yaml      the resolved recipe (a resumed run must match it)
    RUN_DIR/run.json         model, data, split, command line
    RUN_DIR/metrics.jsonl    one line per meta-step (mirrored to TensorBoard events here, or W&B: tracking.py)
    RUN_DIR/validation.jsonl in-context and zero-shot dev scores every eval_every steps (validation.py)
    RUN_DIR/checkpoints/     see checkpoint.py
    RUN_DIR/final/           HF folder (safetensors + tokenizer) that `eval` and plain transformers load
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from . import distributed, recompute
from .algorithms import InnerOptimizer, ensure_adam_state, sync_shared_moments, task_function
from .checkpoint import latest_valid, load_checkpoint, save_checkpoint
from .config import MAML_FAMILY, TrainConfig, make_config, parse_overrides, save_config
from .episodes import TaskData, check_pools, sample_episode, unique_pool
from .errors import UserError
from .lora import apply_lora, save_lora_run, weight_change_norm
from .paths import atomic_write_text, check_output, default_data_dir
from .precision import autocast, check_update_dtype, storage_dtype
from .provenance import provenance
from .prompts import PromptFormat, make_tokenize, prompt_format
from .scoring import pad_id_of
from .tasks import (check_split_data, check_train_test_overlap, load_pool, load_split, load_task_meta,
                    train_test_overlap)
from .tracking import Tracker
from .validation import load_validation, validate


def run_train(args, command_line: str) -> None:
    """CLI entry: build the recipe from --config, --method and key=value overrides, then train."""
    config = make_config(args.config, parse_overrides(args.overrides), method=args.method)
    train(config, model_name=args.model, data_dir=args.data_dir, split=args.split, out_dir=args.out,
          resume=args.resume, device=args.device, dtype=args.dtype, command=command_line,
          allow_train_test_overlap=args.allow_train_test_overlap, logger=getattr(args, "logger", "tensorboard"))


def load_training_tasks(config: TrainConfig, data_dir: Path, split_spec: str,
                        allow_train_test_overlap: bool = False) -> list[TaskData]:
    split = load_split(split_spec, data_dir)
    if not split.train:
        raise UserError(f"{split.source}: 'train' is empty; meta-training needs training tasks")
    check_train_test_overlap(split, allow_train_test_overlap)
    check_split_data(split, data_dir, parts=("train",))
    tasks = []
    for name in split.train:
        pool = unique_pool(load_pool(data_dir, name))[:config.max_examples_per_task]
        instruction = load_task_meta(data_dir, name, list(pool)).instruction if config.method == "ict" else None
        tasks.append(TaskData(name, pool, instruction))
    check_pools(tasks, config.demonstrations, config.support_size, config.query_size)
    return tasks


# run.json fields that must match for --resume: the same model, data, precision, world size and code
RUN_IDENTITY = ("model", "data_dir", "split", "dtype", "world_size", "package_version", "git_commit")


def _prepare_run_dir(out_dir: Path, config: TrainConfig, resume: bool, identity: dict) -> None:
    """Refuse to write into a foreign or non-empty folder, and to resume a run made differently."""
    saved = out_dir / "config.yaml"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file; give a folder for the run")
    if not saved.exists():
        if out_dir.exists() and any(out_dir.iterdir()) and not resume:
            raise UserError(f"{out_dir}: folder exists and is not empty; choose another --out")
        return
    if not resume:
        raise UserError(f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out")
    before = yaml.safe_load(saved.read_text())
    changed = sorted(k for k, v in config.to_dict().items() if before.get(k) != v)
    if changed:
        raise UserError(f"{saved}: --resume with a different recipe ({', '.join(changed)} changed); "
                        "use the original settings or a new --out")
    run_json = out_dir / "run.json"
    if run_json.exists():
        recorded = json.loads(run_json.read_text())
        for key in RUN_IDENTITY:
            if key in recorded and recorded[key] != identity[key]:
                raise UserError(f"{run_json}: --resume with a different {key} (run: {recorded[key]!r}, now: "
                                f"{identity[key]!r}); resume with the original {key} or start a new --out")


def episode_of(config: TrainConfig, tasks: list[TaskData], step: int, tokenize, fmt: PromptFormat) -> list:
    """The episode of meta-step `step` under this recipe (a pure function of the recipe, the tasks and step).
    `fmt` is `training_format(config, tokenizer)`."""
    return sample_episode(tasks, step, seed=config.seed, tasks_per_step=config.tasks_per_step,
                          k=config.demonstrations, support_size=config.support_size, query_size=config.query_size,
                          tokenize=tokenize, fmt=fmt, use_instructions=config.method == "ict",
                          train_labels=config.train_labels)


def episode_token_count(episode: list) -> int:
    """Training tokens of an episode: len(context) + len(target) of every support and query instance, the same
    count as the non-pad tokens the train loop logs as `tokens`."""
    return sum(len(context) + len(target) for task in episode for context, target in task.support + task.query)


def training_format(config: TrainConfig, tokenizer) -> PromptFormat:
    """MetaICL's newline format in the recipe's direction, with a BOS first where the tokenizer adds one (as
    evaluation does: `prompts.prompt_format`)."""
    return prompt_format(tokenizer, config.prompt, format="newline", bos=config.bos)


@dataclass
class TrainingSetup:
    """Everything one meta-step needs: the model, its trained parameters, the outer AdamW with its schedule, and
    the method's per-task function with its inner optimizer bound."""
    config: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step_task: object
    shares_moments: bool

    def __post_init__(self) -> None:
        self.tokenize = make_tokenize(self.tokenizer)
        self.fmt = training_format(self.config, self.tokenizer)

    def step(self, episode, compute=contextlib.nullcontext) -> dict:
        """One outer update on `episode` (see `meta_step`)."""
        return meta_step(self.model, self.params, episode, self.step_task, self.optimizer, pad_id_of(self.tokenizer),
                         shares_moments=self.shares_moments, max_grad_norm=self.config.max_grad_norm, compute=compute)


def setup_training(config: TrainConfig, model_name: str, dtype: str, device: torch.device) -> TrainingSetup:
    model, tokenizer = build_model(config, model_name, dtype, device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}  # adapters only with LoRA
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, betas=tuple(config.adam_betas),
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    ensure_adam_state(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    inner_eps = config.adam_eps if config.inner_adam_eps is None else config.inner_adam_eps
    inner = InnerOptimizer(config.inner_optimizer, config.inner_lr, tuple(config.adam_betas), inner_eps,
                           shared=optimizer, shared_params=params)
    step_task = task_function(config.method, inner, config.inner_steps, config.batch_tasks)
    shares_moments = config.method in MAML_FAMILY and inner.writes_outer_state and config.inner_steps > 0
    return TrainingSetup(config, model, tokenizer, params, optimizer, scheduler, step_task, shares_moments)


def seconds_per_step(config: TrainConfig, *, model_name: str, data_dir: Path, split: str, device: str | None,
                     dtype: str, steps: int = 3) -> dict:
    """Time `steps` meta-steps of this recipe (after one warm-up step) on its own first episodes, in a throwaway
    copy of the model: what `compare --budget seconds=S` plans with. Returns the `times` and `tokens` of the
    timed steps, their `median` seconds and `seconds_per_token`: the median over the steps of seconds / tokens (a
    step that meets a longer batch than any before it also pays for the allocator's growth, once)."""
    from .models import pick_device

    dtype = check_update_dtype(dtype)
    target = pick_device(device)
    tasks = load_training_tasks(config, Path(data_dir), split)
    torch.manual_seed(config.seed)
    setup = setup_training(config, model_name, dtype, target)
    times, tokens = [], []
    for step in range(steps + 1):
        episode = episode_of(config, tasks, step, setup.tokenize, setup.fmt)
        started = time.perf_counter()
        setup.step(episode, lambda: autocast(dtype, target))
        if target.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
            tokens.append(episode_token_count(episode))
    rates = sorted(t / n for t, n in zip(times, tokens))
    return {"median": sorted(times)[len(times) // 2], "times": [round(t, 6) for t in times], "tokens": tokens,
            "seconds_per_token": rates[len(rates) // 2], "threads": torch.get_num_threads()}


def build_model(config: TrainConfig, model_name: str, dtype: str, device: torch.device):
    """The model as training uses it: fp32 master weights (a bf16 frozen base under LoRA + bfloat16), eager
    attention for second-order MAML (SDPA and flash have no double backward), LoRA adapters and activation
    recomputation when the recipe asks; in train mode."""
    from .models import load_model_and_tokenizer

    second_order = config.method == "maml" and config.inner_steps > 0
    model, tokenizer = load_model_and_tokenizer(model_name, dtype=storage_dtype(dtype, config.lora_rank > 0),
                                                device=device, attn_implementation="eager" if second_order else None)
    if config.lora_rank:
        model = apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                           targets=config.lora_targets)
    if config.gradient_checkpointing:
        recompute.enable(model)
    model.train()
    return model, tokenizer


def _resume_checkpoint(out_dir: Path) -> Path | None:
    """The newest valid checkpoint; None when the run never wrote one. When checkpoints exist but none verifies,
    resuming would silently restart from step 0 and discard the run's metrics: refuse instead."""
    from .checkpoint import checkpoint_dir

    found = sorted(checkpoint_dir(out_dir).glob("step-*"))
    checkpoint = latest_valid(out_dir)
    if found and checkpoint is None:
        raise UserError(f"{checkpoint_dir(out_dir)}: none of the {len(found)} checkpoint(s) verifies (see the "
                        "warnings above); restore one from a backup or start a new --out")
    return checkpoint


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        remaining = config.steps - config.warmup_steps
        return max(0.0, 1.0 - (step - config.warmup_steps) / max(remaining, 1))

    return factor


def train(config: TrainConfig, *, model_name: str, data_dir: Path | None, split: str, out_dir: Path,
          resume: bool = False, device: str | None = None, dtype: str = "float32", command: str | None = None,
          progress: bool = True, allow_train_test_overlap: bool = False, logger: str = "tensorboard",
          tasks: list[TaskData] | None = None) -> Path:
    """Meta-train and return the final HF folder. `allow_train_test_overlap` accepts a split whose train and test
    lists share tasks (refused otherwise); run.json records it. `logger`: tensorboard | wandb | none
    (tracking.py). `tasks`: the training tasks exactly as `load_training_tasks` gives them for this config, data
    and split, from a caller that has loaded them already (compare), so the pools are not held twice."""
    from .models import pick_device, save_model

    dtype = check_update_dtype(dtype)
    out_dir = check_output(Path(out_dir))
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if (out_dir / "final" / "config.json").exists() and resume:
        print(f"{out_dir}: already finished; final model in {out_dir / 'final'}")
        return out_dir / "final"
    _, world, _ = distributed.init_from_env(device)
    run_info = {"model": model_name, "data_dir": str(data_dir.expanduser().absolute()), "split": split,
                "dtype": dtype, "world_size": world, **provenance(pick_device(device))}
    _prepare_run_dir(out_dir, config, resume, run_info)
    if distributed.is_main():
        for note in config.unused_fields():
            print(f"note: {note}", file=sys.stderr)
    # bad data fails here, before the model loads
    if tasks is None:
        tasks = load_training_tasks(config, data_dir, split, allow_train_test_overlap)
    validation = load_validation(config, data_dir, split) if config.eval_every else None
    checkpoint = _resume_checkpoint(out_dir) if resume else None
    main_rank = distributed.is_main()
    distributed.barrier()  # every rank has checked the run folder before rank 0 writes to it

    torch.manual_seed(config.seed)
    target = pick_device(device)
    setup = setup_training(config, model_name, dtype, target)
    model, tokenizer, params, optimizer, scheduler = (setup.model, setup.tokenizer, setup.params, setup.optimizer,
                                                      setup.scheduler)

    start_step, total_tokens = 0, 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, params, optimizer, scheduler)
        start_step, total_tokens = state["step"], state["tokens"]
    distributed.check_same_on_all_ranks(start_step, f"{out_dir}: the step to resume from",
                                        "put --out on a filesystem that every node shares")
    metrics_path = out_dir / "metrics.jsonl"
    if main_rank:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
        atomic_write_text(out_dir / "run.json", json.dumps({
            **run_info, "train_tasks": [t.name for t in tasks], "allow_train_test_overlap": allow_train_test_overlap,
            "train_test_overlap": train_test_overlap(load_split(split, data_dir)), "command": command}, indent=1))
        _truncate_metrics(metrics_path, start_step)
        _truncate_metrics(out_dir / "validation.jsonl", start_step)
    tracker = Tracker(out_dir, logger, enabled=main_rank, resume_step=start_step, config=config.to_dict())
    compute = lambda: autocast(dtype, target)  # noqa: E731  (the model's compute precision)

    def run_validation(step: int) -> None:
        if validation is not None and main_rank:
            record = {"step": step, "total_tokens": total_tokens,
                      **validate(model, tokenizer, validation, config, compute)}
            with open(out_dir / "validation.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            tracker.log(record, step, prefix="validation")

    if start_step == 0:
        run_validation(0)

    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, disable=not (progress and main_rank),
               desc=f"train {config.method}", unit="step")
    for step in bar:
        started = time.perf_counter()
        episode = episode_of(config, tasks, step, setup.tokenize, setup.fmt)
        lr = scheduler.get_last_lr()[0]
        stats = setup.step(episode, compute)
        scheduler.step()

        seconds = time.perf_counter() - started
        total_tokens += stats["tokens"]
        record = {"step": step + 1, "loss": stats["loss"], "grad_norm": stats["grad_norm"], "lr": lr,
                  "tokens": stats["tokens"], "total_tokens": total_tokens, "seconds": round(seconds, 4),
                  "tokens_per_s": round(stats["tokens"] / seconds, 1)}
        if config.method in ("maml", "fomaml"):
            record["query_loss"] = stats["loss"]
        if config.method in MAML_FAMILY:
            record["inner_loss"] = stats["inner_loss"]
        if main_rank:
            if config.lora_rank:
                record["delta_w_norm"] = weight_change_norm(model)
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            tracker.log(record, step + 1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            last = step + 1 == config.steps
            if config.eval_every and (last or (step + 1) % config.eval_every == 0):
                run_validation(step + 1)
            if last or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                save_checkpoint(out_dir, step + 1, params, optimizer, scheduler,
                                {"tokens": total_tokens, "sampler": {"seed": config.seed, "next_step": step + 1}},
                                keep=config.keep_checkpoints)
        distributed.barrier()
    bar.close()
    tracker.close()

    final = out_dir / "final"
    if main_rank:
        if config.lora_rank:
            save_lora_run(model, tokenizer, out_dir / "adapter", final, model_name)
            print(f"adapter: {out_dir / 'adapter'}")
        else:
            save_model(model, tokenizer, final)
        print(f"final model: {final}")
    distributed.barrier()
    return final


def meta_step(model, params: dict[str, torch.Tensor], episode, step_task, optimizer, pad_id: int, *,
              shares_moments: bool, max_grad_norm: float, compute=contextlib.nullcontext) -> dict:
    """One outer update: sum this rank's task contributions in `.grad`, sum across ranks, average over the
    meta-batch's tasks, clip, step the outer AdamW. Returns the step's mean loss, mean inner loss, tokens and
    gradient norm. `compute` is the context each task's forward/backward runs in (precision.autocast)."""
    optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(4, dtype=torch.float64)  # loss, inner loss, tokens, tasks
    mine = distributed.shard(episode)
    if getattr(step_task, "over_tasks", False):  # batch_tasks: all of this rank's tasks in one call
        mine = [mine] if mine else []
    for task_episodes in mine:
        with compute():  # the model's compute precision (bf16 autocast, or nothing)
            result = step_task(model, params, task_episodes, pad_id)
        stats += torch.tensor([result.loss, result.inner_loss or 0.0, result.tokens, result.tasks],
                              dtype=torch.float64)
    for p in params.values():
        if p.grad is None:  # a rank with no task this step still takes part in the sum
            p.grad = torch.zeros_like(p)
    distributed.all_reduce_sum_([*(p.grad for p in params.values()), stats])
    if shares_moments:
        sync_shared_moments(optimizer, distributed.world_size(), len(episode))
    n_tasks = stats[3].item()
    if not math.isfinite(stats[0].item()):
        raise _diverged(f"non-finite loss ({stats[0].item() / n_tasks})")
    for p in params.values():
        p.grad.div_(n_tasks)
    grad_norm = _clip(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": stats[0].item() / n_tasks, "inner_loss": stats[1].item() / n_tasks,
            "tokens": int(stats[2].item()), "grad_norm": grad_norm}


def _clip(params: dict[str, torch.Tensor], max_norm: float) -> float:
    values = list(params.values())
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(values, max_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in values]))
    norm = float(norm)
    if not math.isfinite(norm):
        raise _diverged(f"non-finite gradient norm ({norm})")
    return norm


def _diverged(what: str) -> UserError:
    """The run stops before the outer step, so the weights and every checkpoint written so far stay good."""
    return UserError(f"{what}; stopped before updating the weights, the last checkpoint in --out is the last good "
                     "state: lower lr/inner_lr (or check the data) and train again")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop lines of steps after the checkpoint (they will be recomputed identically)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
