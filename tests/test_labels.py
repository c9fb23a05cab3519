"""Label transforms (gold / random / symbols) for diagnostics and for training."""

from collections import Counter

import numpy as np
import pytest

from maml_en_llm.episodes import TaskData, sample_episode
from maml_en_llm.labels import SYMBOLS, random_labels, rename_in_text, shared_options, symbolize
from maml_en_llm.prompts import PromptFormat
from maml_en_llm.tasks import Example

CLASSES = ("positive", "negative", "neutral")


def cls(i, label):
    return Example("t", f"text{i:03d}", label, CLASSES)


def test_random_labels_draw_uniformly_from_each_examples_own_options():
    demos = [cls(i, "positive") for i in range(3000)]
    relabelled = random_labels(demos, np.random.default_rng(0))
    counts = Counter(d.output for d in relabelled)
    assert set(counts) == set(CLASSES) and min(counts.values()) > 900
    assert [d.input for d in relabelled] == [d.input for d in demos]
    free_form = Example("t", "q", "an answer", ())
    assert random_labels([free_form], np.random.default_rng(0)) == [free_form]


def test_symbols_rename_demonstrations_and_targets_with_one_mapping():
    demos = [cls(0, "positive"), cls(1, "negative"), cls(2, "neutral"), cls(3, "positive")]
    targets = [cls(4, "negative")]
    new_demos, new_targets, mapping = symbolize(demos, targets, np.random.default_rng(3))
    assert set(mapping) == set(CLASSES) and len(set(mapping.values())) == 3 and set(mapping.values()) <= set(SYMBOLS)
    for old, new in zip(demos + targets, new_demos + new_targets):
        assert new.output == mapping[old.output] and new.options == tuple(mapping[o] for o in old.options)
        assert new.input == old.input
    # a different draw gives a different mapping (with overwhelming probability for 20 symbols)
    assert symbolize(demos, targets, np.random.default_rng(4))[2] != mapping


def test_symbols_leave_examples_with_different_options_alone():
    a = Example("t", "q1", "x", ("x", "y"))
    b = Example("t", "q2", "z", ("z", "w"))
    demos, targets, mapping = symbolize([a], [b], np.random.default_rng(0))
    assert mapping is None and demos == [a] and targets == [b]
    assert shared_options([a, b]) is None and shared_options([a, a]) == ("x", "y")
    many = tuple(f"label{i}" for i in range(len(SYMBOLS) + 1))  # more labels than symbols: gold labels stay
    wide = [Example("t", f"q{i}", many[i], many) for i in range(3)]
    assert shared_options(wide) is None and symbolize(wide[:2], wide[2:], np.random.default_rng(0))[2] is None


def _episode(tokenizer, mode, step):
    pool = tuple(cls(i, CLASSES[i % 3]) for i in range(60))
    tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    (episode,) = sample_episode([TaskData("t", pool)], step, seed=1, tasks_per_step=1, k=4, support_size=2,
                                query_size=2, tokenize=tokenize, fmt=PromptFormat(), train_labels=mode)
    words = lambda seqs: [tokenizer.decode(c + t).split() for c, t in seqs]  # noqa: E731
    return words(episode.support), words(episode.query)


@pytest.mark.parametrize("step", range(5))
def test_symbol_training_uses_one_mapping_for_a_tasks_support_and_query(tokenizer, step):
    support, query = _episode(tokenizer, "symbols", step)
    labels = lambda texts: {w for text in texts for w in text if not w.startswith("text")}  # noqa: E731
    used = labels(support) | labels(query)
    assert used <= set(SYMBOLS) and not used & set(CLASSES)
    assert labels(query) <= labels(support) | set(SYMBOLS) and len(used) <= 3  # one mapping of 3 classes


def test_label_modes_choose_the_same_examples(tokenizer):
    """Label draws come from their own generator: the inputs of every instance are the same in every mode."""
    inputs = lambda texts: [[w for w in text if w.startswith("text")] for text in texts]  # noqa: E731
    gold, rand, sym = (_episode(tokenizer, mode, 2) for mode in ("gold", "random", "symbols"))
    assert inputs(gold[0]) == inputs(rand[0]) == inputs(sym[0])
    assert inputs(gold[1]) == inputs(rand[1]) == inputs(sym[1])
    assert gold != rand  # random labels changed at least one demonstration's label ...
    assert [t[-1] for t in rand[0] + rand[1]] == [t[-1] for t in gold[0] + gold[1]]  # ... never a target's


def test_rename_in_text_replaces_whole_label_words_once_ignoring_case():
    mapping = {"yes": "river", "no": "apple", "not sure": "stone", "river": "tiger"}
    text = "Answer Yes, no or not sure. Nobody says YES-or-no; a river runs."
    assert rename_in_text(text, mapping) == "Answer river, apple or stone. Nobody says river-or-apple; a tiger runs."
    assert rename_in_text(text, {}) == text


def test_ict_symbol_training_renames_label_words_in_the_instruction(tokenizer):
    pool = tuple(cls(i, CLASSES[i % 3]) for i in range(60))
    tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    instruction = "Is the text Positive, negative or neutral?"
    for mode in ("symbols", "gold"):
        (episode,) = sample_episode([TaskData("t", pool, instruction)], 0, seed=1, tasks_per_step=1, k=2,
                                    support_size=1, query_size=1, tokenize=tokenize, fmt=PromptFormat(),
                                    use_instructions=True, train_labels=mode)
        for context, target in episode.support + episode.query:
            words = [w.strip(",?").lower() for w in tokenizer.decode(context + target).split()]
            assert words[:3] == ["is", "the", "text"] and words[5] == "or"
            label_words = {words[3], words[4], words[6]}
            if mode == "symbols":
                assert label_words <= set(SYMBOLS) and not set(words) & set(CLASSES)
            else:
                assert label_words == set(CLASSES)


def test_symbol_training_draws_a_new_mapping_every_step(tokenizer):
    """One mapping per task *and step*: a mapping fixed for the whole run could be learned, defeating the point."""
    def mapping(step):
        support, query = _episode(tokenizer, "symbols", step)
        pairs = {(CLASSES[int(w[4:]) % 3], text[i + 1]) for text in support + query
                 for i, w in enumerate(text) if w.startswith("text")}
        assert len(pairs) == len({gold for gold, _ in pairs})  # one symbol per class within the step
        return frozenset(pairs)

    mappings = [mapping(step) for step in range(6)]
    assert len(set(mappings)) > 1
