"""Episode sampling: support and query never share an example, sampling is deterministic, every task is visited."""

import numpy as np
import pytest

from maml_en_llm.episodes import (
    TaskData, check_pools, minimum_pool, part_sizes, sample_episode, sample_indices,
)
from maml_en_llm.errors import UserError
from maml_en_llm.prompts import PromptFormat
from maml_en_llm.tasks import Example


def examples_used(instances):
    return {i for target, demos in instances for i in (target, *demos)}


@pytest.mark.parametrize("k, support_size, query_size", [(16, 2, 2), (4, 1, 1), (0, 3, 2), (2, 5, 1), (8, 4, 4)])
def test_no_query_example_appears_in_a_support_instance(k, support_size, query_size):
    """Property test: over many seeds, steps and pool sizes (the smallest allowed included), no target or
    demonstration of a query instance is used by any support instance of the same task in the same step."""
    smallest = minimum_pool(k, support_size, query_size)
    rng = np.random.default_rng(0)
    pool_sizes = [smallest, smallest + 1, smallest + 7, 100, 1000] + rng.integers(smallest, 300, 5).tolist()
    checked = 0
    for seed in (0, 1, 100, 12345):
        for step in range(40):
            episode = sample_indices(pool_sizes, step, seed=seed, tasks_per_step=4, k=k,
                                     support_size=support_size, query_size=query_size)
            for entry in episode:
                support, query = examples_used(entry.support), examples_used(entry.query)
                assert not support & query
                assert len(entry.support) == support_size and len(entry.query) == query_size
                for target, demos in entry.support + entry.query:
                    assert len(demos) == k and target not in demos and len(set(demos)) == k
                    assert max([target, *demos]) < pool_sizes[entry.task]
                targets = [t for t, _ in entry.support + entry.query]
                assert len(set(targets)) == len(targets)
                checked += 1
    assert checked == 4 * 40 * 4


def test_tokenized_episode_keeps_support_and_query_apart(tokenizer):
    """The same property on the token sequences the loop trains on: every pool example has a unique input
    word, so an example used by a query instance would show up in a support instance's text."""
    pool = tuple(Example("t", f"word{i:03d}", "yes" if i % 2 else "no", ("yes", "no")) for i in range(40))
    tasks = [TaskData("t", pool)]
    tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for step in range(20):
        (episode,) = sample_episode(tasks, step, seed=3, tasks_per_step=1, k=4, support_size=3, query_size=2,
                                    tokenize=tokenize, fmt=PromptFormat())
        assert len(episode.support) == 3 and len(episode.query) == 2
        text = lambda seqs: {w for c, t in seqs for w in tokenizer.decode(c + t).split() if w.startswith("word")}
        support_words, query_words = text(episode.support), text(episode.query)
        assert len(query_words) >= 5 and len(support_words) >= 5
        assert not support_words & query_words


def test_same_seed_and_step_give_the_same_episode_and_others_differ():
    sizes = [50, 60, 70, 80, 90]
    args = dict(tasks_per_step=3, k=4, support_size=2, query_size=2)
    assert sample_indices(sizes, 7, seed=1, **args) == sample_indices(sizes, 7, seed=1, **args)
    assert sample_indices(sizes, 7, seed=1, **args) != sample_indices(sizes, 8, seed=1, **args)
    assert sample_indices(sizes, 7, seed=1, **args) != sample_indices(sizes, 7, seed=2, **args)


def test_every_task_is_sampled_and_about_uniformly():
    sizes = [40] * 30
    counts = np.zeros(len(sizes))
    for step in range(600):
        episode = sample_indices(sizes, step, seed=5, tasks_per_step=4, k=2, support_size=1, query_size=1)
        chosen = [entry.task for entry in episode]
        assert len(set(chosen)) == 4  # distinct tasks within a step
        counts[chosen] += 1
    assert counts.min() > 0
    expected = 600 * 4 / 30
    assert counts.min() > 0.5 * expected and counts.max() < 1.5 * expected


def test_parts_are_sized_by_need_and_small_pools_fail_naming_the_task():
    assert part_sizes(16, 2, 2) == (17, 17) and minimum_pool(16, 2, 2) == 34
    assert part_sizes(0, 3, 2) == (3, 2)
    pool = tuple(Example("t", str(i), "a", ("a", "b")) for i in range(33))
    with pytest.raises(UserError, match=r"task 'small' has 33 pool examples, needs at least 34"):
        check_pools([TaskData("big", pool + pool), TaskData("small", pool)], 16, 2, 2)
    check_pools([TaskData("ok", pool + pool[:1])], 16, 2, 2)  # 34 is enough


def test_fewer_tasks_than_tasks_per_step_repeats_tasks():
    episode = sample_indices([40, 40], 0, seed=0, tasks_per_step=5, k=2, support_size=1, query_size=1)
    assert len(episode) == 5 and {entry.task for entry in episode} <= {0, 1}


def test_as_many_tasks_as_tasks_per_step_takes_every_task_once_per_step():
    """Sampling with replacement is only for splits with *fewer* tasks than tasks_per_step: with exactly as many,
    every step holds each task once."""
    for step in range(20):
        episode = sample_indices([40] * 5, step, seed=0, tasks_per_step=5, k=2, support_size=1, query_size=1)
        assert sorted(entry.task for entry in episode) == [0, 1, 2, 3, 4]
