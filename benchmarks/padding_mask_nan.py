"""Replay a training run's first meta-steps, then take the next one with transformers' plain 2D padding mask and
with `lm.training_mask` (each left-pad position attends to itself), and report both steps' loss and gradient norm.

Why it exists: a bf16 LoRA MetaICL run with `batch_tasks=true` (64 left-padded sequences per meta-step) stopped at
meta-step 25 on an H200 with a non-finite gradient norm and a finite loss, at the same step after a restart. With
the 2D mask a pad position's query row has no key to attend to, and CUDA's memory-efficient SDPA backward can turn
such rows into NaN gradients. This script is how that was shown (docs/benchmarks.md); on a CPU both masks give the
same finite step (the compared step starts from the same weights and optimizer state both times).

    PYTHONPATH=src python benchmarks/padding_mask_nan.py --config RUN/config.yaml --split study/splits/social.json \\
        --replay 24 --device cuda --dtype bfloat16 --json padding_nan.json

`--config` is a run's config.yaml (or any recipe file); the replay uses its seed, so it sees the run's episodes.
Needs the model and the split's data, like `maml-en-llm train`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from maml_en_llm import lm
from maml_en_llm import train as T
from maml_en_llm.config import TrainConfig
from maml_en_llm.errors import UserError
from maml_en_llm.paths import default_data_dir
from maml_en_llm.precision import autocast


def plain_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask  # transformers builds its own 4D mask from the 2D one


def snapshot(setup) -> tuple:
    return ({name: p.detach().clone() for name, p in setup.params.items()},
            copy.deepcopy(setup.optimizer.state_dict()), copy.deepcopy(setup.scheduler.state_dict()))


def restore(setup, saved: tuple) -> None:
    weights, optimizer, scheduler = saved
    with torch.no_grad():
        for name, p in setup.params.items():
            p.copy_(weights[name])
    setup.optimizer.load_state_dict(optimizer)
    setup.scheduler.load_state_dict(scheduler)


def one_step(setup, episode, compute) -> dict:
    try:
        stats = setup.step(episode, compute)
    except UserError as error:  # a non-finite gradient norm stops the step before the update
        return {"error": str(error).split(";")[0]}
    return {"loss": stats["loss"], "grad_norm": stats["grad_norm"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a run's config.yaml or a recipe file")
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--replay", type=int, default=24, help="meta-steps to replay before the compared one")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    config = TrainConfig(**yaml.safe_load(Path(args.config).read_text()))
    device = torch.device(args.device)
    tasks = T.load_training_tasks(config, Path(args.data_dir) if args.data_dir else default_data_dir(), args.split)
    setup = T.setup_training(config, args.model, args.dtype, device)
    compute = lambda: autocast(args.dtype, device)  # noqa: E731
    fixed = lm.training_mask
    report = {"attention": setup.model.config._attn_implementation, "replayed": []}
    started = time.perf_counter()
    try:
        lm.training_mask = plain_mask
        for step in range(args.replay):
            result = one_step(setup, T.episode_of(config, tasks, step, setup.tokenize, setup.fmt), compute)
            report["replayed"].append({"step": step + 1, **result})
            if "error" in result:
                break
            setup.scheduler.step()
        report["replay_seconds"] = round(time.perf_counter() - started, 1)
        episode = T.episode_of(config, tasks, args.replay, setup.tokenize, setup.fmt)
        report["step"] = args.replay + 1
        saved = snapshot(setup)
        report["plain_2d_mask"] = one_step(setup, episode, compute)
        restore(setup, saved)  # the same step again, from the same weights and optimizer state
        lm.training_mask = fixed
        report["training_mask"] = one_step(setup, episode, compute)
    finally:
        lm.training_mask = fixed
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
