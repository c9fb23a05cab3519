"""Option scoring for in-context evaluation: every option's loss, in padded batches, without gradients.

An option's score is `lm.sequence_losses`: the mean cross-entropy of its scored tokens given the prompt (direct:
the option's tokens after demonstrations + test input; channel: the test input's tokens after demonstrations +
option). Lower is better; the prediction is the option with the lowest loss, the first one on exact ties
(MetaICL's `np.argmin`).

All sequences of one call are sorted by length before they are cut into batches, so a batch holds sequences of
similar length and little compute goes to padding; the losses are put back in their original order.

Prefix caching: every sequence of a seed starts with the same k demonstrations, which are most of its tokens
(about 75% at k=4 on BIG-bench, over 90% at k=16). `score_options` runs that prefix through the model once,
keeps its key/value cache, and runs only each sequence's remainder (test input + option) on top of a copy of
it. The numbers are the same as scoring whole sequences (tested to 1e-5 in float32); sequences whose prefix
was cut by the length cap fall back to whole-sequence scoring. `prefix_cache=False` turns it off.
"""

from __future__ import annotations

import copy
import inspect
import time
from contextlib import contextmanager
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


@contextmanager
def _inference(model: torch.nn.Module):
    """Eval mode and no autograd for the block; the model's previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _longest_first(sequences: Sequence[TokenSequence]) -> list[int]:
    """Indices by total length, longest first: a batch too big for memory fails at once, not after minutes."""
    return sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]), reverse=True)


def score_sequences(model: torch.nn.Module, sequences: Sequence[TokenSequence], pad_id: int,
                    batch_size: int) -> list[float]:
    """`lm.sequence_losses` of each (context, target) sequence, in input order, batched by similar length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    order = _longest_first(sequences)
    losses = [0.0] * len(sequences)
    with _inference(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collate([sequences[i] for i in rows], pad_id).to(device)
            for i, loss in zip(rows, sequence_losses(model, batch).tolist()):
                losses[i] = loss
    return losses


def score_with_prefix_cache(model: torch.nn.Module, prefix: list[int], sequences: Sequence[TokenSequence],
                            pad_id: int, batch_size: int) -> list[float]:
    """Like `score_sequences` for sequences whose context starts with `prefix` (at least 2 tokens): the prefix
    is run once; each batch runs only the remainders, right-padded, over a copy of the prefix's KV cache.

    The cache holds the prefix minus its last token; that token starts every remainder, so the first target
    token's prediction is always among the remainder's logits."""
    device = next(model.parameters()).device
    cached = prefix[:-1]
    remainders = [(context[len(cached):], target) for context, target in sequences]
    order = _longest_first(remainders)
    losses = [0.0] * len(sequences)
    with _inference(model):
        prefix_ids = torch.tensor([cached], device=device)
        output = model(prefix_ids, use_cache=True)
        prefix_cache = getattr(output, "cache", None) or output.past_key_values
        # transformers >= 5.2x calls the argument `cache`; older releases `past_key_values`
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(remainders[i][0]) + len(remainders[i][1]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), len(cached) + width), dtype=torch.long)
            mask[:, :len(cached)] = 1
            for row, i in enumerate(rows):
                context, target = remainders[i]
                input_ids[row, :len(context) + len(target)] = torch.tensor(context + target)
                mask[row, len(cached):len(cached) + len(context) + len(target)] = 1
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            positions = torch.arange(len(cached), len(cached) + width).expand(len(rows), -1)
            logits = model(input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                           use_cache=True, **{cache_arg: cache}).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(rows):
                context, target = remainders[i]
                span = torch.arange(len(context) - 1, len(context) + len(target) - 1, device=device)
                picked = log_probs[row, span, torch.tensor(target, device=device)]
                losses[i] = -picked.mean().item()
    return losses


def option_sequences(tokenize: Tokenize, prefix_ids: list[int], k: int, examples: Sequence[Example],
                     fmt: PromptFormat) -> list[list[TokenSequence]]:
    """Per example, one scoring sequence per option (all after the same encoded demonstrations)."""
    return [scoring_sequences(tokenize, prefix_ids, k, example, fmt) for example in examples]


def score_options(model: torch.nn.Module, tokenizer, prefix_ids: list[int], k: int, examples: Sequence[Example],
                  fmt: PromptFormat, batch_size: int, *, tokenize: Tokenize | None = None,
                  stats: dict | None = None, prefix_cache: bool = True) -> list[list[float]]:
    """Losses per option per example: `result[i][j]` scores option j of example i after the shared prefix.

    `prefix_ids` are the k demonstrations encoded once (`prompts.encode_prefix`); `tokenize` may be passed to
    reuse a memoised tokenizer across calls. `stats`, when given, accumulates "sequences", "tokens" (real,
    unpadded) and "seconds" of model time, for throughput reports."""
    tokenize = tokenize or make_tokenize(tokenizer)
    per_example = option_sequences(tokenize, prefix_ids, k, examples, fmt)
    flat = [sequence for sequences in per_example for sequence in sequences]
    started = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    cacheable = [i for i, (context, _) in enumerate(flat)
                 if prefix_cache and len(prefix_ids) >= 2 and len(context) > len(prefix_ids)
                 and context[:len(prefix_ids)] == prefix_ids]
    whole = sorted(set(range(len(flat))) - set(cacheable))
    flat_losses = [0.0] * len(flat)
    if cacheable:
        for i, loss in zip(cacheable, score_with_prefix_cache(model, prefix_ids, [flat[i] for i in cacheable],
                                                              pad_id, batch_size)):
            flat_losses[i] = loss
    if whole:
        for i, loss in zip(whole, score_sequences(model, [flat[i] for i in whole], pad_id, batch_size)):
            flat_losses[i] = loss
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
