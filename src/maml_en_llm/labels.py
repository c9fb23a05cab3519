"""What the demonstrations' labels say: gold, random, or arbitrary symbols. Pure functions over examples.

Used for two things:

* diagnostics at evaluation (`eval --demo-labels`): does a model read its demonstrations? With **random** labels
  (Min et al., 2022, "Rethinking the Role of Demonstrations") each demonstration's output is replaced by an
  option drawn uniformly from its own options; the test examples keep their gold labels. With **symbols** the
  task's label words are replaced by arbitrary words (a fresh one-to-one mapping per task and seed), in the
  demonstrations *and* in the test examples' options and gold outputs, so only the demonstrations can tell the
  model which symbol means what (Wei et al., 2023, "Symbol tuning").
* training (`train_labels=` in a recipe): the same transforms applied to the demonstrations of every training
  instance (random) or to whole instances (symbols, one mapping per task and meta-step), which forces the model
  to read its demonstrations instead of relying on what the label words mean.

Symbols apply only where every example involved shares one option list of at most 20 labels (a classification
task's label set); an instance of a multi-choice task whose options differ per example is left with its gold
labels, since a mapping learnt from the demonstrations would say nothing about the test example's different
options.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

import numpy as np

from .tasks import Example

LABEL_MODES = ("gold", "random", "symbols")

# Arbitrary, common, single-token-ish English words with no sentiment or class meaning of their own.
SYMBOLS = ("apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "candle", "window", "forest", "pencil",
           "rocket", "garden", "bottle", "orange", "silver", "ladder", "mirror", "blanket", "island")


def shared_options(examples: Sequence[Example]) -> tuple[str, ...] | None:
    """The option list all examples share, or None (different options, free-form examples, or more labels than
    there are symbols: such a task keeps its gold labels)."""
    options = {example.options for example in examples}
    if len(options) != 1:
        return None
    (only,) = options
    return only if 2 <= len(only) <= len(SYMBOLS) else None


def random_labels(demonstrations: Sequence[Example], rng: np.random.Generator) -> list[Example]:
    """Each demonstration's output replaced by an option drawn uniformly from its own options (free-form
    demonstrations, with no options, keep their output)."""
    out = []
    for demo in demonstrations:
        if demo.options:
            out.append(replace(demo, output=demo.options[int(rng.integers(len(demo.options)))]))
        else:
            out.append(demo)
    return out


def symbol_mapping(options: Sequence[str], rng: np.random.Generator) -> dict[str, str]:
    """A one-to-one map from label words to distinct symbols drawn from SYMBOLS."""
    if len(options) > len(SYMBOLS):
        raise ValueError(f"{len(options)} labels but only {len(SYMBOLS)} symbols")
    chosen = rng.choice(len(SYMBOLS), size=len(options), replace=False)
    return {option: SYMBOLS[int(i)] for option, i in zip(options, chosen)}


def apply_mapping(examples: Sequence[Example], mapping: dict[str, str]) -> list[Example]:
    """Examples with their output and options renamed through `mapping`."""
    return [replace(e, output=mapping[e.output], options=tuple(mapping[o] for o in e.options)) for e in examples]


def rename_in_text(text: str, mapping: dict[str, str]) -> str:
    """`text` (a task instruction) with every whole-word mention of a label word replaced by its symbol, ignoring
    case, longest label first, in one pass (a symbol is never renamed again)."""
    if not mapping:
        return text
    lowered = {label.lower(): symbol for label, symbol in mapping.items()}
    pattern = "|".join(re.escape(label) for label in sorted(lowered, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", lambda m: lowered[m.group(0).lower()], text, flags=re.IGNORECASE)


def symbolize(demonstrations: Sequence[Example], targets: Sequence[Example], rng: np.random.Generator):
    """(demonstrations, targets, mapping) with one fresh symbol mapping applied to all of them, or the inputs
    unchanged and mapping None when they do not share one option list."""
    options = shared_options([*demonstrations, *targets])
    if options is None:
        return list(demonstrations), list(targets), None
    mapping = symbol_mapping(options, rng)
    return apply_mapping(demonstrations, mapping), apply_mapping(targets, mapping), mapping
