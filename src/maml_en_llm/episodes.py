"""Meta-training episodes: which tasks a meta-step explores and the support/query instances of each.

An instance is MetaICL's: k demonstrations drawn from the task's pool (never the target itself) followed by a
target from the same pool, loss on the target's output. Support and query targets of a task are disjoint.

Sampling is *stateless*: the episode of step t is a pure function of (seed, t), drawn from
`numpy.random.default_rng([seed, t])`. Resuming at step t therefore needs no sampler state beyond t, and a
resumed run sees exactly the episodes an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UserError
from .prompts import PromptFormat, Tokenize, TokenSequence, training_sequence
from .tasks import Example


@dataclass(frozen=True)
class TaskData:
    name: str
    pool: tuple[Example, ...]
    instruction: str | None = None  # prepended by in-context tuning


@dataclass(frozen=True)
class TaskEpisode:
    task: str
    support: list[TokenSequence]
    query: list[TokenSequence]


def check_pools(tasks: Sequence[TaskData], k: int, support_size: int, query_size: int) -> None:
    """Each pool must hold the disjoint support+query targets, and k other examples for every target."""
    need = max(support_size + query_size, k + 1)
    for task in tasks:
        if len(task.pool) < need:
            raise UserError(
                f"training task {task.name!r} has {len(task.pool)} pool examples, needs {need} "
                f"(k={k}, support_size={support_size}, query_size={query_size}); lower them or drop the task"
            )


def sample_episode(tasks: Sequence[TaskData], step: int, *, seed: int, tasks_per_step: int, k: int,
                   support_size: int, query_size: int, tokenize: Tokenize, fmt: PromptFormat,
                   use_instructions: bool = False) -> list[TaskEpisode]:
    """The episode of meta-step `step`: `tasks_per_step` distinct tasks (all of them, with repeats only if there
    are fewer tasks than asked), each with support and query instances."""
    rng = np.random.default_rng([seed, step])
    replace = tasks_per_step > len(tasks)
    chosen = rng.choice(len(tasks), size=tasks_per_step, replace=replace)
    episode = []
    for task_index in chosen:
        task = tasks[int(task_index)]
        pool = task.pool
        targets = rng.choice(len(pool), size=support_size + query_size, replace=False)
        instances = []
        for target in targets:
            others = np.delete(np.arange(len(pool)), target)
            demo_indices = rng.choice(others, size=k, replace=False) if k else []
            demos = [pool[int(i)] for i in demo_indices]
            instruction = task.instruction if use_instructions else None
            instances.append(training_sequence(tokenize, demos, pool[int(target)], fmt, instruction))
        episode.append(TaskEpisode(task.name, instances[:support_size], instances[support_size:]))
    return episode
