"""MetaICL-exact prompts, built as token ids.

These rules are read from MetaICL's data code (`_prepro_each_datapoint`, `prepro_sentence_pair_single`) and are
pinned by golden tests:

* Every piece (an input, an output, an option) is tokenized on its own, without special tokens (no BOS/EOS),
  and the pieces' ids are concatenated. Tokenizing "\\n" + output separately is not the same as tokenizing the
  whole prompt at once, and MetaICL's numbers depend on the former.
* direct, newline format: demonstration 1 is tok(input) + tok("\\n" + output); every later demonstration and the
  test input get "\\n\\n\\n" before the input ("\\n\\n" when the input is empty); options are tok("\\n" + option).
* channel, newline format: output and input swap roles: tok(output) + tok("\\n" + input); later demonstrations
  and the options get "\\n\\n\\n" before the output/option; the loss falls on the input.
* space format (MetaICL's raw GPT-2 baselines): " " takes the place of every separator above, and direct
  outputs/options (channel inputs) always get a leading space.
* Per example: at most 256 tokens; a demonstration's input is cut to 256-2-len(output) tokens, a test input to
  256-2-len(longest option), keeping its start. Per sequence: min(256*k, 1024) tokens (256 when k=0); when the
  prompt is longer, tokens are dropped from the left; the scored part (output/option) is never cut.

A sequence here is `(context_ids, target_ids)`: the model reads both, the loss (or the option's score) is the mean
cross-entropy of `target_ids` given everything before them. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from .tasks import Example

Tokenize = Callable[[str], list[int]]
TokenSequence = tuple[list[int], list[int]]  # (context_ids, target_ids)

MAX_LENGTH_PER_EXAMPLE = 256
MAX_LENGTH = 1024


@dataclass(frozen=True)
class PromptFormat:
    method: str = "direct"  # "direct": score the output given the input; "channel": the input given the output
    newlines: bool = True  # MetaICL's newline format; False = its space format

    def __post_init__(self) -> None:
        if self.method not in ("direct", "channel"):
            raise ValueError(f"method must be 'direct' or 'channel', got {self.method!r}")


def sequence_cap(k: int) -> int:
    """MetaICL's whole-sequence cap: 256 tokens zero-shot, else min(256 * k, 1024)."""
    return MAX_LENGTH_PER_EXAMPLE if k == 0 else min(MAX_LENGTH_PER_EXAMPLE * k, MAX_LENGTH)


def make_tokenize(tokenizer, cache_size: int = 65536) -> Tokenize:
    """Token ids of one piece of text, without special tokens; memoised (options and separators repeat a lot)."""

    @lru_cache(maxsize=cache_size)
    def ids(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    return lambda text: list(ids(text))


def _decorate(input_: str, output: str, options: Sequence[str], fmt: PromptFormat, is_first: bool):
    """The texts of one example's pieces with MetaICL's separators attached."""
    options = list(options)
    if fmt.newlines:
        # MetaICL tests `all(option == "" ...)`, which is also true for an empty options list (free-form
        # training data): such outputs get no "\n". Kept as is so token ids match MetaICL's.
        no_label = all(option == "" for option in options)
        no_input = input_ == ""
        if fmt.method == "direct":
            if not is_first:
                input_ = ("\n\n" if no_input else "\n\n\n") + input_
            if not no_label:
                output = "\n" + output
                options = ["\n" + o for o in options]
        else:
            if not is_first:
                output = "\n\n\n" + output
                options = ["\n\n\n" + o for o in options]
            if not no_input and not no_label:
                input_ = "\n" + input_
    else:
        if not is_first:
            if fmt.method == "direct":
                input_ = " " + input_
            else:
                output = " " + output
                options = [" " + o for o in options]
        if fmt.method == "direct":
            output = " " + output
            options = [" " + o for o in options]
        else:
            input_ = " " + input_
    return input_, output, options


def _keep_start(ids: list[int], budget: int) -> list[int]:
    return ids[: max(budget, 0)] if len(ids) >= budget else ids


def encode_demonstration(tokenize: Tokenize, example: Example, fmt: PromptFormat, is_first: bool) -> TokenSequence:
    """One labelled example as (prompt side, scored side): direct (input, output), channel (output, input).

    Used for demonstrations and for training targets; the input is cut to fit the per-example cap."""
    input_, output, _ = _decorate(example.input, example.output, example.options, fmt, is_first)
    output_ids = tokenize(output)
    input_ids = _keep_start(tokenize(input_), MAX_LENGTH_PER_EXAMPLE - 2 - len(output_ids))
    return (input_ids, output_ids) if fmt.method == "direct" else (output_ids, input_ids)


def encode_options(tokenize: Tokenize, example: Example, fmt: PromptFormat, is_first: bool) -> list[TokenSequence]:
    """A test example as one (prompt side, scored side) pair per option, in the example's option order."""
    input_, _, options = _decorate(example.input, example.output, example.options, fmt, is_first)
    option_ids = [tokenize(o) for o in options]
    longest = max(len(ids) for ids in option_ids)
    input_ids = _keep_start(tokenize(input_), MAX_LENGTH_PER_EXAMPLE - 2 - longest)
    if fmt.method == "direct":
        return [(input_ids, ids) for ids in option_ids]
    return [(ids, input_ids) for ids in option_ids]


def encode_prefix(tokenize: Tokenize, demonstrations: Sequence[Example], fmt: PromptFormat,
                  instruction: str | None = None) -> list[int]:
    """Everything before the target: an optional instruction (in-context tuning), then the demonstrations.

    With an instruction, the first demonstration is no longer first and gets the usual separator."""
    ids = tokenize(instruction) if instruction else []
    for i, demo in enumerate(demonstrations):
        prompt_side, scored_side = encode_demonstration(tokenize, demo, fmt, is_first=(i == 0 and not ids))
        ids += prompt_side + scored_side
    return ids


def join(prefix: list[int], prompt_side: list[int], scored_side: list[int], max_length: int) -> TokenSequence:
    """Prefix + prompt side as context, scored side as target; drop context tokens from the left past the cap."""
    context = prefix + prompt_side
    overflow = len(context) + len(scored_side) - max_length
    if overflow > 0:
        context = context[overflow:]
    return context, list(scored_side)


def scoring_sequences(tokenize: Tokenize, prefix: list[int], k: int, example: Example, fmt: PromptFormat) -> list[TokenSequence]:
    """The sequences scoring each option of `example` after an encoded prefix (from `encode_prefix`).

    `k` is the number of demonstrations in the prefix; it sets the sequence cap. The test input is "first"
    (no separator) only when nothing precedes it."""
    pairs = encode_options(tokenize, example, fmt, is_first=not prefix)
    return [join(prefix, prompt_side, scored_side, sequence_cap(k)) for prompt_side, scored_side in pairs]


def training_sequence(tokenize: Tokenize, demonstrations: Sequence[Example], target: Example, fmt: PromptFormat,
                      instruction: str | None = None) -> TokenSequence:
    """A MetaICL training instance: k demonstrations (+ optional instruction) then the target; loss on its output
    (channel: on its input)."""
    prefix = encode_prefix(tokenize, demonstrations, fmt, instruction)
    prompt_side, scored_side = encode_demonstration(tokenize, target, fmt, is_first=not prefix)
    return join(prefix, prompt_side, scored_side, sequence_cap(len(demonstrations)))
