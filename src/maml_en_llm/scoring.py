"""Option scoring for in-context evaluation: every option's loss, without gradients, each unique token run once.

An option's score is the mean cross-entropy of its scored tokens given everything before them (`lm.sequence_losses`
computes the same quantity on whole sequences): direct scores the option's tokens after demonstrations + test
input; channel scores the test input's tokens after demonstrations + option. Lower is better; the prediction is the
option with the lowest loss, the first one on exact ties (MetaICL's `np.argmin`).

Sharing. Every scoring sequence of one call (one task and seed) is `P + A + B`, the target being B:

* P, the prefix: the BOS (if any) and the k demonstrations, common to all sequences;
* A: direct, the test input (shared by that example's options); channel, the option (shared by every test example
  that has it: all of them in a classification task);
* B: direct, the option; channel, the test input.

P runs once (its KV cache and last logits are kept); the distinct A's run once each, batched (right-padded) over
rows of P's cache; each sequence's B then runs over a row of its A's cache, batched across A's (options across
examples in direct). B's last token predicts nothing, so only B minus its last token is run; B's first token is
scored from A's last logits (P's when A is empty). Tokens that every A starts with (the separator before each
test input) join P, and tokens that every B of one A starts with (the options' "\\n") join that A. In direct every
token is therefore run once, except tokens shared by only some of an example's options; in channel P and each
distinct option run once and each test input once per option (its context differs per option, so nothing more
can be shared). A custom attention mask is never needed: rows carry a 2D padding mask and explicit position ids,
so a padded row computes what it would alone, and a batch keeps its lengths close (`_batches`). The losses equal
whole-sequence scoring to float rounding (tests: 1e-5 in float32).

Fallbacks, decided per sequence or per call:
* a sequence whose context does not start with P (the sequence cap cut its demonstrations) is scored whole
  (`score_sequences`: left-padded batches sorted by length);
* a model with sliding-window attention (Gemma 3, Mistral) whose longest sequence exceeds the window runs each
  A + B[:-1] as one contiguous segment over P's cache (P shared, A not): a window is measured in cache slots,
  and the padding between a short A and the next segment would shift it;
* a target with no tokens gets a NaN loss (no prediction can rest on it; `predict` then takes the first option).

`share=False` scores every sequence whole. `stats` reports what was run: `tokens_processed` (real tokens fed to the
model) beside `unique_tokens` (the distinct prefixes of all sequences: what any scorer must at least run, plus each
target's last token) and `tokens` (the sum of whole-sequence lengths: what per-sequence scoring runs).
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
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


def _batches(items: list, lengths: list[int], batch_size: int) -> list[list]:
    """Consecutive runs of `items` (in the given order) of at most `batch_size`, cut early where padding would grow:
    a batch's segment lengths stay within 8 tokens or a quarter of its longest of each other."""
    batches, current, low, high = [], [], 0, 0
    for item, length in zip(items, lengths):
        new_low, new_high = min(low, length) if current else length, max(high, length) if current else length
        if current and (len(current) == batch_size or new_high - new_low > max(8, new_high // 4)):
            batches.append(current)
            current, new_low, new_high = [], length, length
        current.append(item)
        low, high = new_low, new_high
    if current:
        batches.append(current)
    return batches


def unique_tokens(sequences: Sequence[TokenSequence]) -> int:
    """Distinct token prefixes over all (context + target) sequences: the node count of their token trie."""
    ordered = sorted(tuple(context) + tuple(target) for context, target in sequences)
    total, previous = 0, ()
    for ids in ordered:
        common = 0
        for a, b in zip(ids, previous):
            if a != b:
                break
            common += 1
        total += len(ids) - common
        previous = ids
    return total


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


@dataclass
class _Frame:
    """A KV cache and, per row, which of its slots hold real tokens: what a segment run on top of it attends to."""
    cache: object | None  # None: nothing before (an empty prefix)
    mask: torch.Tensor  # [rows, slots] 1 on real tokens
    next_position: torch.Tensor  # [rows] the position id of each row's next token


def _cache_argument(model: torch.nn.Module) -> str:
    # transformers >= 5.2x calls the argument `cache`; older releases `past_key_values`
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sliding_window(model: torch.nn.Module) -> int | None:
    """The attention window of a model with sliding-window layers, else None."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def _cache_rows(cache, rows: list[int]):
    """A cache whose batch rows are `rows` of `cache`, sharing its tensors where it can; `cache` is left as is
    (a forward pass appends to the copy by concatenation, which makes new tensors)."""
    source_rows = _cache_batch(cache)
    if rows == list(range(source_rows)):
        def pick(t): return t
    elif len(set(rows)) == 1:
        def pick(t): return t[rows[0]:rows[0] + 1].expand(len(rows), *t.shape[1:])
    else:
        index = torch.tensor(rows)

        def pick(t): return t.index_select(0, index.to(t.device))
    selected = copy.copy(cache)
    selected.layers = []
    for layer in cache.layers:  # per-layer cache objects: transformers >= 4.56
        layer = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = pick(layer.keys), pick(layer.values)
        selected.layers.append(layer)
    return selected


def _cache_batch(cache) -> int:
    return next(layer.keys.shape[0] for layer in cache.layers
                if getattr(layer, "keys", None) is not None and layer.keys.numel())


def _extend(model: torch.nn.Module, frame: _Frame, parents: list[int], segments: list[list[int]], pad_id: int,
            keep: int, cache_arg: str) -> tuple[torch.Tensor, _Frame]:
    """Run `segments[i]` (right-padded) after row `parents[i]` of `frame`: the logits of the last `keep`
    positions (0 = all), and the frame of the extended rows."""
    device = frame.mask.device
    width = max(len(s) for s in segments)
    input_ids = torch.full((len(segments), width), pad_id, dtype=torch.long)
    segment_mask = torch.zeros((len(segments), width), dtype=torch.long)
    for row, segment in enumerate(segments):
        input_ids[row, :len(segment)] = torch.tensor(segment, dtype=torch.long)
        segment_mask[row, :len(segment)] = 1
    rows = torch.tensor(parents, device=device)
    mask = torch.cat([frame.mask.index_select(0, rows), segment_mask.to(device)], dim=1)
    start = frame.next_position.index_select(0, rows)
    positions = start[:, None] + torch.arange(width, device=device)
    kwargs = dict(attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep)
    if frame.cache is not None:
        kwargs[cache_arg] = _cache_rows(frame.cache, parents)
    output = model(input_ids.to(device), **kwargs)
    cache = output.cache if getattr(output, "cache", None) is not None else output.past_key_values
    lengths = segment_mask.sum(1).to(device)
    return output.logits, _Frame(cache, mask, start + lengths)


def _common_start(targets: list[list[int]]) -> list[int]:
    """The tokens every target starts with, leaving each at least one token of its own."""
    limit = min(len(t) for t in targets) - 1
    common = 0
    while common < limit and all(t[common] == targets[0][common] for t in targets):
        common += 1
    return targets[0][:common]


def _target_log_probs(logits: torch.Tensor, targets: list[list[int]]) -> list[float]:
    """Per row i, the sum of log p(targets[i][t + 1]) read at position t (all positions kept)."""
    width = logits.shape[1]
    ids = torch.zeros((len(targets), width), dtype=torch.long)
    valid = torch.zeros((len(targets), width), dtype=torch.bool)
    for row, target in enumerate(targets):
        ids[row, :len(target) - 1] = torch.tensor(target[1:], dtype=torch.long)
        valid[row, :len(target) - 1] = True
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(2, ids.to(logits.device)[..., None]).squeeze(-1)
    return torch.where(valid.to(logits.device), picked, 0.0).sum(1).tolist()


def _child_order(children: list[tuple[int, list[int]]], batch_size: int) -> list[int]:
    """The order B segments run in. Few children per A row (direct: options): option j of every row together, so
    a batch is often exactly the parent rows (no cache copy). Many (channel: every test input after each option):
    one parent row per batch (its cache is broadcast), longest first."""
    rank: dict[int, int] = {}
    keyed = []
    for index, (row, segment) in enumerate(children):
        rank[row] = rank.get(row, -1) + 1
        keyed.append((rank[row], row, -len(segment), index))
    rows = len(rank)
    if rows and len(children) / rows >= batch_size:
        return [key[3] for key in sorted(keyed, key=lambda key: (key[1], key[2], key[3]))]
    return [key[3] for key in sorted(keyed)]


def _score_tree(model: torch.nn.Module, prefix: list[int], splits: list[tuple[list[int], list[int]]], pad_id: int,
                batch_size: int) -> tuple[list[float], int]:
    """Losses of sequences prefix + A + B (B scored) with P, each distinct A and each B[:-1] run once (module doc);
    also the number of real tokens run. The tokens all A's start with run with P, and the tokens all B's of one A
    start with run with that A (direct, newline format: the test inputs' "\\n\\n\\n" and the options' "\\n")."""
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    if not prefix:  # nothing precedes A + B: B's first token becomes context (unscored), as in lm.collate
        splits = [(a, b) if a else (b[:1], b[1:]) for a, b in splits]
    shared_start = _common_start([a + [-1] for a, _ in splits])  # e.g. the test inputs' "\\n\\n\\n": run with P
    prefix = prefix + shared_start
    splits = [(a[len(shared_start):], b) for a, b in splits]
    log_likelihood = [0.0] * len(splits)
    processed = 0

    root = _Frame(None, torch.zeros((1, 0), dtype=torch.long, device=device),
                  torch.zeros(1, dtype=torch.long, device=device))
    prefix_last = None
    if prefix:
        logits, root = _extend(model, root, [0], [prefix], pad_id, 1, cache_arg)
        prefix_last = torch.log_softmax(logits[:, -1].float(), dim=-1)
        processed += len(prefix)

    def run_children(frame: _Frame, first: torch.Tensor, children: list[tuple[int, int, int]]) -> int:
        """Score children (frame row, sequence index, tokens of B already run with the row): the next B token from
        `first[row]`, the rest by running the remaining B tokens but the last over the row."""
        if not children:
            return 0
        rows = torch.tensor([row for row, _, _ in children], device=first.device)
        ids = torch.tensor([splits[i][1][done] for _, i, done in children], device=first.device)
        for (_, i, _), value in zip(children, first[rows, ids].tolist()):
            log_likelihood[i] += value
        unique: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for row, i, done in children:
            if len(splits[i][1]) - done > 1:
                unique.setdefault((row, tuple(splits[i][1][done:])), []).append(i)
        keys = list(unique)
        order = _child_order([(row, list(rest)) for row, rest in keys], batch_size)
        count = 0
        for chunk in _batches([keys[j] for j in order], [len(keys[j][1]) - 1 for j in order], batch_size):
            logits, _ = _extend(model, frame, [row for row, _ in chunk], [list(rest[:-1]) for _, rest in chunk],
                                pad_id, 0, cache_arg)
            for key, total in zip(chunk, _target_log_probs(logits, [list(rest) for _, rest in chunk])):
                for i in unique[key]:
                    log_likelihood[i] += total
            count += sum(len(rest) - 1 for _, rest in chunk)
        return count

    window = _sliding_window(model)
    longest = len(prefix) + max(len(a) for a, _ in splits) + max(len(b) for _, b in splits)
    if window is not None and longest > window:
        processed += _score_contiguous(model, root, prefix_last, splits, pad_id, batch_size, cache_arg, log_likelihood)
    else:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (a, b) in enumerate(splits):
            if b:
                groups.setdefault(tuple(a), []).append(i)
        if () in groups:  # B right after P: P's cache and last logits stand in for A's
            processed += run_children(root, prefix_last, [(0, i, 0) for i in groups.pop(())])
        segments = {a: list(a) + _common_start([splits[i][1] for i in groups[a]]) for a in groups}
        distinct = sorted(groups, key=lambda a: len(segments[a]), reverse=True)
        for chunk in _batches(distinct, [len(segments[a]) for a in distinct], batch_size):
            lengths = [len(segments[a]) for a in chunk]
            keep = max(lengths) - min(len(a) for a in chunk) + 1
            logits, frame = _extend(model, root, [0] * len(chunk), [segments[a] for a in chunk], pad_id, keep,
                                    cache_arg)
            processed += sum(lengths)
            offset = max(lengths) - logits.shape[1]
            firsts, children = [], []
            for row, a in enumerate(chunk):
                shared = segments[a][len(a):]  # the targets' common start, scored here for all of them
                positions = torch.arange(len(a) - 1, len(segments[a]), device=logits.device) - offset
                log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                on = log_probs.device
                common = float(log_probs[torch.arange(len(shared), device=on), torch.tensor(shared, device=on)].sum()) \
                    if shared else 0.0
                firsts.append(log_probs[-1])
                for i in groups[a]:
                    log_likelihood[i] += common
                    children.append((row, i, len(shared)))
            processed += run_children(frame, torch.stack(firsts), children)
    losses = [-log_likelihood[i] / len(b) if b else math.nan for i, (_, b) in enumerate(splits)]
    return losses, processed


def _score_contiguous(model, root: _Frame, prefix_last, splits, pad_id: int, batch_size: int, cache_arg: str,
                      log_likelihood: list[float]) -> int:
    """The sliding-window fallback: A + B[:-1] of each sequence as one segment over the prefix's cache."""
    for i, (a, b) in enumerate(splits):
        if not a and len(b) == 1:  # nothing to run: P's last logits predict it
            log_likelihood[i] = float(prefix_last[0, b[0]])
    runs = [i for i, (a, b) in enumerate(splits) if len(a) + len(b) > 1]
    runs.sort(key=lambda i: len(splits[i][0]) + len(splits[i][1]), reverse=True)
    processed = 0
    for chunk in _batches(runs, [len(splits[i][0]) + len(splits[i][1]) - 1 for i in runs], batch_size):
        segments = [splits[i][0] + splits[i][1][:-1] for i in chunk]
        logits, _ = _extend(model, root, [0] * len(chunk), segments, pad_id, 0, cache_arg)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(chunk):
            a, b = splits[i]
            ids = torch.tensor(b, device=logits.device)
            if a:
                positions = torch.arange(len(a) - 1, len(a) - 1 + len(b), device=logits.device)
                log_likelihood[i] = float(log_probs[row, positions, ids].sum())
            else:
                rest = torch.arange(len(b) - 1, device=logits.device)
                log_likelihood[i] = float(prefix_last[0, b[0]]) + float(log_probs[row, rest, ids[1:]].sum())
        processed += sum(len(s) for s in segments)
    return processed


def score_shared(model: torch.nn.Module, prefix: list[int], sequences: Sequence[TokenSequence], pad_id: int,
                 batch_size: int) -> tuple[list[float], int]:
    """Losses of (context, target) sequences, sharing what they have in common (module doc), in input order;
    also the number of real tokens run through the model."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    losses = [math.nan] * len(sequences)
    shared = [i for i, (context, target) in enumerate(sequences) if target and context[:len(prefix)] == prefix]
    shared_set = set(shared)
    whole = [i for i, (_, target) in enumerate(sequences) if target and i not in shared_set]
    processed = 0
    with _inference(model):
        if shared:
            splits = [(list(sequences[i][0][len(prefix):]), list(sequences[i][1])) for i in shared]
            tree_losses, processed = _score_tree(model, list(prefix), splits, pad_id, batch_size)
            for i, loss in zip(shared, tree_losses):
                losses[i] = loss
    if whole:
        for i, loss in zip(whole, score_sequences(model, [sequences[i] for i in whole], pad_id, batch_size)):
            losses[i] = loss
        processed += sum(len(sequences[i][0]) + len(sequences[i][1]) for i in whole)
    return losses, processed


def option_sequences(tokenize: Tokenize, prefix_ids: list[int], k: int, examples: Sequence[Example],
                     fmt: PromptFormat) -> list[list[TokenSequence]]:
    """Per example, one scoring sequence per option (all after the same encoded demonstrations)."""
    return [scoring_sequences(tokenize, prefix_ids, k, example, fmt) for example in examples]


def score_options(model: torch.nn.Module, tokenizer, prefix_ids: list[int], k: int, examples: Sequence[Example],
                  fmt: PromptFormat, batch_size: int, *, tokenize: Tokenize | None = None,
                  stats: dict | None = None, share: bool = True) -> list[list[float]]:
    """Losses per option per example: `result[i][j]` scores option j of example i after the shared prefix.

    `prefix_ids` are the BOS and k demonstrations encoded once (`prompts.encode_prefix`); `tokenize` may be passed
    to reuse a memoised tokenizer across calls. `stats`, when given, accumulates "sequences", "tokens" (sum of
    whole-sequence lengths), "tokens_processed", "unique_tokens" and "seconds" of model time."""
    tokenize = tokenize or make_tokenize(tokenizer)
    per_example = option_sequences(tokenize, prefix_ids, k, examples, fmt)
    flat = [sequence for sequences in per_example for sequence in sequences]
    started = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    if share:
        flat_losses, processed = score_shared(model, prefix_ids, flat, pad_id, batch_size)
    else:
        scored = [i for i, (_, target) in enumerate(flat) if target]
        flat_losses = [math.nan] * len(flat)
        for i, loss in zip(scored, score_sequences(model, [flat[i] for i in scored], pad_id, batch_size)):
            flat_losses[i] = loss
        processed = sum(len(flat[i][0]) + len(flat[i][1]) for i in scored)
    if stats is not None:
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - started
        stats["sequences"] = stats.get("sequences", 0) + len(flat)
        stats["tokens"] = stats.get("tokens", 0) + sum(len(c) + len(t) for c, t in flat)
        stats["tokens_processed"] = stats.get("tokens_processed", 0) + processed
        stats["unique_tokens"] = stats.get("unique_tokens", 0) + unique_tokens(flat)
    result, start = [], 0
    for sequences in per_example:
        result.append(flat_losses[start:start + len(sequences)])
        start += len(sequences)
    return result


def predict(option_losses: Sequence[float]) -> int:
    """Index of the lowest loss, the first one on exact ties (and when every loss is NaN)."""
    best = 0
    for j, loss in enumerate(option_losses):
        if loss < option_losses[best] or (math.isnan(option_losses[best]) and not math.isnan(loss)):
            best = j
    return best
