"""Meta-training episodes: which tasks a meta-step explores, and the support/query instances of each.

An instance is MetaICL's: k demonstrations followed by a target, the loss on the target's output.

Rules of one meta-step (`sample_episode`):

* `tasks_per_step` distinct tasks, uniformly without replacement (with replacement only when the split has fewer
  tasks than that). Every task therefore has the same chance every step, and over a run of S steps each of T
  tasks is expected S * tasks_per_step / T times; `tests/test_episodes.py` checks that every task appears.
* Each chosen task's pool is shuffled and cut into two disjoint parts, the **support part** and the **query
  part**, sized in proportion to what each needs (max(k + 1, support_size) and max(k + 1, query_size)).
  Support instances take their targets *and* their demonstrations from the support part only; query instances
  from the query part only. No example of a query instance (target or demonstration) can appear anywhere in a
  support instance of the same task in the same step, so the inner loop never sees the query's answers.
  (Pools are de-duplicated when loaded, so this holds for contents as well as positions.)
* Within a part, targets are distinct; each target's k demonstrations are drawn from the rest of its part
  (never the target itself). Instances of one part may share demonstrations, as in MetaICL.
* `train_labels` (labels.py): "gold" keeps every label; "random" gives each demonstration a random label from its
  options (targets keep theirs); "symbols" renames a classification task's label words to arbitrary words with
  one mapping per task and step, shared by its support and query instances. Label draws come from a separate
  generator, `default_rng([seed, t, 1])`, so the examples chosen do not depend on the label mode.

Every method gets the same instances (MetaICL trains on support + query as one batch), so equal steps mean equal
data. Sampling is *stateless*: the episode of step t is a pure function of (seed, t), drawn from
`numpy.random.default_rng([seed, t])`, so resuming at step t needs no sampler state and a resumed run sees
exactly the episodes of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UserError
from .labels import apply_mapping, random_labels, rename_in_text, shared_options, symbol_mapping
from .prompts import PromptFormat, Tokenize, TokenSequence, training_sequence
from .tasks import Example


@dataclass(frozen=True)
class TaskData:
    name: str
    pool: tuple[Example, ...]
    instruction: str | None = None  # prepended by in-context tuning

    @property
    def label_set(self) -> tuple[str, ...] | None:
        """The option list every pool example shares (a classification task), else None."""
        return shared_options(self.pool)


@dataclass(frozen=True)
class TaskEpisode:
    task: str
    support: list[TokenSequence]
    query: list[TokenSequence]


@dataclass(frozen=True)
class EpisodeIndices:
    """Which pool examples one task's instances use: per instance (target index, demonstration indices)."""
    task: int
    support: list[tuple[int, list[int]]]
    query: list[tuple[int, list[int]]]


def part_sizes(k: int, support_size: int, query_size: int) -> tuple[int, int]:
    """The smallest support and query parts: each holds its distinct targets and k others for every target."""
    return max(k + 1, support_size), max(k + 1, query_size)


def minimum_pool(k: int, support_size: int, query_size: int) -> int:
    return sum(part_sizes(k, support_size, query_size))


def check_pools(tasks: Sequence[TaskData], k: int, support_size: int, query_size: int) -> None:
    """Every pool must split into a support part and a query part that are each large enough."""
    need_support, need_query = part_sizes(k, support_size, query_size)
    need = need_support + need_query
    for task in tasks:
        if len(task.pool) < need:
            raise UserError(
                f"training task {task.name!r} has {len(task.pool)} pool examples, needs at least {need} "
                f"(disjoint support part of {need_support} and query part of {need_query} for k={k}, "
                f"support_size={support_size}, query_size={query_size}); lower k or the sizes, or drop the task"
            )


def unique_pool(examples: Sequence[Example]) -> tuple[Example, ...]:
    """The pool without repeated records (first occurrence kept), so disjoint positions mean disjoint contents."""
    return tuple(dict.fromkeys(examples))


def _instances(rng: np.random.Generator, part: np.ndarray, n_targets: int, k: int) -> list[tuple[int, list[int]]]:
    """n_targets distinct targets from `part`, each with k demonstrations from the rest of the part."""
    positions = rng.choice(len(part), size=n_targets, replace=False)
    out = []
    for position in positions:
        others = np.delete(part, position)
        demos = rng.choice(others, size=k, replace=False).tolist() if k else []
        out.append((int(part[position]), [int(i) for i in demos]))
    return out


def sample_indices(pool_sizes: Sequence[int], step: int, *, seed: int, tasks_per_step: int, k: int,
                   support_size: int, query_size: int) -> list[EpisodeIndices]:
    """The episode of meta-step `step` as pool indices (see the module docstring for the rules)."""
    rng = np.random.default_rng([seed, step])
    replace = tasks_per_step > len(pool_sizes)
    chosen = rng.choice(len(pool_sizes), size=tasks_per_step, replace=replace)
    need_support, need_query = part_sizes(k, support_size, query_size)
    episode = []
    for task_index in chosen:
        size = pool_sizes[int(task_index)]
        if size < need_support + need_query:
            raise ValueError(f"pool of task {int(task_index)} is too small ({size}); run check_pools first")
        order = rng.permutation(size)
        # proportional split: each part gets at least its need whenever size >= need_support + need_query
        cut = size * need_support // (need_support + need_query)
        support_part, query_part = order[:cut], order[cut:]
        episode.append(EpisodeIndices(int(task_index), _instances(rng, support_part, support_size, k),
                                      _instances(rng, query_part, query_size, k)))
    return episode


def sample_episode(tasks: Sequence[TaskData], step: int, *, seed: int, tasks_per_step: int, k: int,
                   support_size: int, query_size: int, tokenize: Tokenize, fmt: PromptFormat,
                   use_instructions: bool = False, train_labels: str = "gold") -> list[TaskEpisode]:
    """The episode of meta-step `step`, tokenized: per chosen task, its support and query instances."""
    indices = sample_indices([len(task.pool) for task in tasks], step, seed=seed, tasks_per_step=tasks_per_step,
                             k=k, support_size=support_size, query_size=query_size)
    label_rng = np.random.default_rng([seed, step, 1])
    label_sets = {}
    episode = []
    for entry in indices:
        task = tasks[entry.task]
        instruction = task.instruction if use_instructions else None
        mapping = None
        if train_labels == "symbols":
            if entry.task not in label_sets:
                label_sets[entry.task] = task.label_set
            if label_sets[entry.task] is not None:
                mapping = symbol_mapping(label_sets[entry.task], label_rng)
                if instruction:  # ict: an instruction naming the label words would give the mapping away
                    instruction = rename_in_text(instruction, mapping)

        def encode(instances):
            sequences = []
            for target, demo_indices in instances:
                demos, goal = [task.pool[i] for i in demo_indices], task.pool[target]
                if train_labels == "random":
                    demos = random_labels(demos, label_rng)
                elif mapping is not None:
                    demos, (goal,) = apply_mapping(demos, mapping), apply_mapping([goal], mapping)
                sequences.append(training_sequence(tokenize, demos, goal, fmt, instruction))
            return sequences

        episode.append(TaskEpisode(task.name, encode(entry.support), encode(entry.query)))
    return episode
