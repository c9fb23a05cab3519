"""Option scoring for in-context evaluation: every option's loss, in padded batches, without gradients.

An option's score is `lm.sequence_losses`: the mean cross-entropy of its scored tokens given the prompt (direct:
the option's tokens after demonstrations + test input; channel: the test input's tokens after demonstrations +
option). Lower is better; the prediction is the option with the lowest loss, the first one on exact ties
(MetaICL's `np.argmin`).

All sequences of one call are sorted by length before they are cut into batches, so a batch holds sequences of
similar length and little compute goes to padding; the losses are put back in their original order.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from .lm import TokenSequence, collate, sequence_losses
from .prompts import PromptFormat, Tokenize, make_tokenize, scoring_sequences
from .tasks import Example


def pad_id_of(tokenizer) -> int:
    """Any valid id works (padding is masked out); prefer the tokenizer's own pad, then eos, then 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def score_sequences(model: torch.nn.Module, sequences: Sequence[TokenSequence], pad_id: int,
                    batch_size: int) -> list[float]:
    """`lm.sequence_losses` of each (context, target) sequence, in input order, batched by similar length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    # longest first: a batch too big for memory fails at once, not after minutes of work
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]), reverse=True)
    losses = [0.0] * len(sequences)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([sequences[i] for i in rows], pad_id).to(device)
                for i, loss in zip(rows, sequence_losses(model, batch).tolist()):
                    losses[i] = loss
    finally:
        model.train(was_training)
    return losses


def option_sequences(tokenize: Tokenize, prefix_ids: list[int], k: int, examples: Sequence[Example],
                     fmt: PromptFormat) -> list[list[TokenSequence]]:
    """Per example, one scoring sequence per option (all after the same encoded demonstrations)."""
    return [scoring_sequences(tokenize, prefix_ids, k, example, fmt) for example in examples]


def score_options(model: torch.nn.Module, tokenizer, prefix_ids: list[int], k: int, examples: Sequence[Example],
                  fmt: PromptFormat, batch_size: int, *, tokenize: Tokenize | None = None,
                  stats: dict | None = None) -> list[list[float]]:
    """Losses per option per example: `result[i][j]` scores option j of example i after the shared prefix.

    `prefix_ids` are the k demonstrations encoded once (`prompts.encode_prefix`); `tokenize` may be passed to
    reuse a memoised tokenizer across calls. `stats`, when given, accumulates "sequences", "tokens" (real,
    unpadded) and "seconds" of model time, for throughput reports."""
    tokenize = tokenize or make_tokenize(tokenizer)
    per_example = option_sequences(tokenize, prefix_ids, k, examples, fmt)
    flat = [sequence for sequences in per_example for sequence in sequences]
    started = time.perf_counter()
    flat_losses = score_sequences(model, flat, pad_id_of(tokenizer), batch_size)
    if stats is not None:
        stats["sequences"] = stats.get("sequences", 0) + len(flat)
        stats["tokens"] = stats.get("tokens", 0) + sum(len(c) + len(t) for c, t in flat)
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - started
    result, start = [], 0
    for sequences in per_example:
        result.append(flat_losses[start:start + len(sequences)])
        start += len(sequences)
    return result


def predict(option_losses: Sequence[float]) -> int:
    """Index of the lowest loss, the first one on exact ties."""
    return min(range(len(option_losses)), key=lambda j: (option_losses[j], j))
