"""MetaICL-exact prompts, built as token ids.

These rules are read from MetaICL's data code (`_prepro_each_datapoint`, `prepro_sentence_pair_single`, and
`test.py` for the format choice) and are pinned by golden tests:

* Every piece (an input, an output, an option) is tokenized on its own, without special tokens (no BOS/EOS),
  and the pieces' ids are concatenated. Tokenizing "\\n" + output separately is not the same as tokenizing the
  whole prompt at once, and MetaICL's numbers depend on the former.
* direct, newline format: demonstration 1 is tok(input) + tok("\\n" + output); every later demonstration and the
  test input get "\\n\\n\\n" before the input ("\\n\\n" when the input is empty); options are tok("\\n" + option).
* channel, newline format: output and input swap roles: tok(output) + tok("\\n" + input); later demonstrations
  and the options get "\\n\\n\\n" before the output/option; the loss falls on the input.
* space format (MetaICL's raw GPT-2 baselines): " " takes the place of every separator above, and direct
  outputs/options (channel inputs) always get a leading space. MetaICL evaluates a model that was not
  meta-trained in the space format when it is a GPT-2 and in the newline format otherwise, and trains (and
  evaluates its checkpoints) in the newline format: `default_format`.
* Per example (MetaICL's `max_length_per_example` = 256, 2 tokens reserved): a labelled example (demonstration,
  training target) keeps its output and has its input cut to its first 254 - len(output) tokens; a test input is
  cut to 254 - len(longest option) tokens; options are never cut. The bound is a Python slice bound, as in
  MetaICL: for an option or output of 255+ tokens it is negative and drops that many tokens from the end of the
  input instead of emptying it. MetaICL's task-name rules apply too: `inst:piqa*` / `inst:yahoo_answers_topics*`
  examples that do not fit keep 128 input and 126 output tokens; other `inst:*` examples whose input is shorter
  than their output cut the output instead. Where MetaICL would stop with an assertion (an output of 255+ tokens
  that these rules cannot fit), the `inst:` rule is applied (the piqa rule when the input is not the shorter).
* Per sequence: min(256*k, 1024) tokens (256 when k=0); when the prompt is longer, tokens are dropped from the
  left (never the BOS, see below); the scored part (output/option) is never cut.
* BOS: MetaICL adds none. Where the tokenizer's own settings prepend one (`tokenizer("x")` starts with the BOS id,
  as Gemma's does), it goes first in every sequence, as lm-evaluation-harness does (`tokenizer_bos_id`,
  `prompt_format(bos="auto")`; "yes"/"no" override). It counts towards the sequence cap.

A sequence here is `(context_ids, target_ids)`: the model reads both, the loss (or the option's score) is the mean
cross-entropy of `target_ids` given everything before them. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from .errors import UserError
from .tasks import Example

Tokenize = Callable[[str], list[int]]
TokenSequence = tuple[list[int], list[int]]  # (context_ids, target_ids)

MAX_LENGTH_PER_EXAMPLE = 256
MAX_LENGTH = 1024
FORMATS = ("newline", "space")
BOS_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class PromptFormat:
    method: str = "direct"  # "direct": score the output given the input; "channel": the input given the output
    newlines: bool = True  # MetaICL's newline format; False = its space format
    bos_id: int | None = None  # when set, the first token of every sequence (see `prompt_format`)

    def __post_init__(self) -> None:
        if self.method not in ("direct", "channel"):
            raise ValueError(f"method must be 'direct' or 'channel', got {self.method!r}")

    @property
    def name(self) -> str:
        """"newline" or "space", as `--format` spells it."""
        return "newline" if self.newlines else "space"

    @property
    def bos_ids(self) -> list[int]:
        return [] if self.bos_id is None else [self.bos_id]


def tokenizer_bos_id(tokenizer) -> int | None:
    """The BOS id the tokenizer's own settings prepend to a text (Gemma's do, GPT-2's and SmolLM2's do not), else None.

    Read from what the tokenizer does, not from flags: `tokenizer("a")` against `tokenizer("a",
    add_special_tokens=False)`, as lm-evaluation-harness's default encoding would differ."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_specials = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return int(bos) if len(with_specials) > len(plain) and with_specials[0] == bos else None


def default_format(model_type: str | None, meta_trained: bool = False) -> str:
    """MetaICL's choice (`test.py`): "space" for a GPT-2 that was not meta-trained, else "newline"."""
    return "space" if model_type == "gpt2" and not meta_trained else "newline"


def prompt_format(tokenizer, method: str = "direct", *, format: str = "newline", bos: str = "auto") -> PromptFormat:
    """The `PromptFormat` a model with this tokenizer is trained and evaluated with.

    `format`: "newline" (MetaICL's training format) or "space". `bos`: "auto" = a BOS first exactly where the
    tokenizer's own settings add one (`tokenizer_bos_id`); "yes" = always the tokenizer's BOS; "no" = never
    (MetaICL)."""
    if format not in FORMATS:
        raise UserError(f"--format must be one of {list(FORMATS)}, got {format!r}")
    if bos not in BOS_CHOICES:
        raise UserError(f"--bos must be one of {list(BOS_CHOICES)}, got {bos!r}")
    if bos == "yes":
        if tokenizer.bos_token_id is None:
            raise UserError("--bos yes: the tokenizer has no BOS token; use --bos auto or no")
        bos_id = int(tokenizer.bos_token_id)
    else:
        bos_id = tokenizer_bos_id(tokenizer) if bos == "auto" else None
    return PromptFormat(method, newlines=format == "newline", bos_id=bos_id)


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


def _cut_input(ids: list[int], bound: int) -> list[int]:
    """MetaICL's `if len(ids) >= bound: ids = ids[:bound]`, Python slice semantics included (negative bound)."""
    return ids[:bound] if len(ids) >= bound else ids


def fit_example(task: str, input_ids: list[int], output_ids: list[int]) -> tuple[list[int], list[int]]:
    """MetaICL's per-example cap on a labelled example: at most 254 tokens of input + output (see module doc)."""
    budget = MAX_LENGTH_PER_EXAMPLE - 2
    half_input, half_output = MAX_LENGTH_PER_EXAMPLE // 2, MAX_LENGTH_PER_EXAMPLE // 2 - 2
    if task.startswith(("inst:piqa", "inst:yahoo_answers_topics")) and len(input_ids) + len(output_ids) > budget:
        return input_ids[:half_input], output_ids[:half_output]
    if len(input_ids) < budget - len(output_ids):
        return input_ids, output_ids
    if task.startswith("inst:") and len(input_ids) < len(output_ids):
        cut_input, cut_output = input_ids, output_ids[:budget - len(input_ids)]
    else:
        cut_input, cut_output = _cut_input(input_ids, budget - len(output_ids)), output_ids
    if len(cut_input) + len(cut_output) <= budget:
        return cut_input, cut_output
    # MetaICL stops with an assertion here (an output of 255+ tokens); fit the example with its inst: rules instead.
    if len(input_ids) < len(output_ids) and len(input_ids) < budget:
        return input_ids, output_ids[:budget - len(input_ids)]
    return input_ids[:half_input], output_ids[:half_output]


def encode_demonstration(tokenize: Tokenize, example: Example, fmt: PromptFormat, is_first: bool) -> TokenSequence:
    """One labelled example as (prompt side, scored side): direct (input, output), channel (output, input).

    Used for demonstrations and for training targets; cut to the per-example cap by `fit_example`."""
    input_, output, _ = _decorate(example.input, example.output, example.options, fmt, is_first)
    input_ids, output_ids = fit_example(example.task, tokenize(input_), tokenize(output))
    return (input_ids, output_ids) if fmt.method == "direct" else (output_ids, input_ids)


def encode_options(tokenize: Tokenize, example: Example, fmt: PromptFormat, is_first: bool) -> list[TokenSequence]:
    """A test example as one (prompt side, scored side) pair per option, in the example's option order."""
    input_, _, options = _decorate(example.input, example.output, example.options, fmt, is_first)
    option_ids = [tokenize(o) for o in options]
    longest = max(len(ids) for ids in option_ids)
    input_ids = _cut_input(tokenize(input_), MAX_LENGTH_PER_EXAMPLE - 2 - longest)
    if fmt.method == "direct":
        return [(input_ids, ids) for ids in option_ids]
    return [(ids, input_ids) for ids in option_ids]


def encode_prefix(tokenize: Tokenize, demonstrations: Sequence[Example], fmt: PromptFormat,
                  instruction: str | None = None) -> list[int]:
    """Everything before the target: the BOS (if the format has one), an optional instruction (in-context
    tuning), then the demonstrations.

    With an instruction, the first demonstration is no longer first and gets the usual separator."""
    ids = fmt.bos_ids + (tokenize(instruction) if instruction else [])
    for i, demo in enumerate(demonstrations):
        prompt_side, scored_side = encode_demonstration(tokenize, demo, fmt, is_first=(i == 0 and not instruction))
        ids += prompt_side + scored_side
    return ids


def join(prefix: list[int], prompt_side: list[int], scored_side: list[int], max_length: int,
         keep: int = 0) -> TokenSequence:
    """Prefix + prompt side as context, scored side as target; past the cap, drop context tokens from the left,
    after the first `keep` (the BOS)."""
    context = prefix + prompt_side
    overflow = len(context) + len(scored_side) - max_length
    if overflow > 0:
        context = context[:keep] + context[keep + overflow:]
    return context, list(scored_side)


def _kept(prefix: Sequence[int], fmt: PromptFormat) -> int:
    """1 when the prefix starts with the format's BOS (never dropped by the cap), else 0."""
    return 1 if fmt.bos_id is not None and list(prefix[:1]) == fmt.bos_ids else 0


def scoring_sequences(tokenize: Tokenize, prefix: list[int], k: int, example: Example, fmt: PromptFormat) -> list[TokenSequence]:
    """The sequences scoring each option of `example` after an encoded prefix (from `encode_prefix`).

    `k` is the number of demonstrations in the prefix; it sets the sequence cap. The test input is "first"
    (no separator) only when nothing but the BOS precedes it."""
    keep = _kept(prefix, fmt)
    pairs = encode_options(tokenize, example, fmt, is_first=len(prefix) <= keep)
    return [join(prefix, prompt_side, scored_side, sequence_cap(k), keep) for prompt_side, scored_side in pairs]


def training_sequence(tokenize: Tokenize, demonstrations: Sequence[Example], target: Example, fmt: PromptFormat,
                      instruction: str | None = None, target_first: bool | None = None) -> TokenSequence:
    """A MetaICL training instance: k demonstrations (+ optional instruction) then the target; loss on its output
    (channel: on its input).

    The target is formatted as a first example (no separator) when nothing precedes it, unless `target_first`
    says otherwise: adaptation at k=1 passes False so its target looks like the test input it prepares for."""
    prefix = encode_prefix(tokenize, demonstrations, fmt, instruction)
    first = not (demonstrations or instruction) if target_first is None else target_first
    prompt_side, scored_side = encode_demonstration(tokenize, target, fmt, is_first=first)
    return join(prefix, prompt_side, scored_side, sequence_cap(len(demonstrations)), _kept(prefix, fmt))
