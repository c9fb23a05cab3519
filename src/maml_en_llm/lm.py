"""Token sequences -> padded batches -> the per-sequence loss every part of the project uses.

Scoring an option, MetaICL's training loss and every inner/outer MAML loss are the same quantity: the mean
cross-entropy of a sequence's target tokens given everything before them. Batches are *left*-padded so all
targets end at the last position; the model then computes logits only for the last `max target length + 1`
positions (`logits_to_keep`), which keeps the 49k-wide vocabulary projection off the prompt tokens. Position ids
are derived from the attention mask, so a padded sequence is computed exactly as it would be alone.

Under gradients, an SDPA model gets a 4D mask in which each left-pad position attends to itself
(`training_mask`). With the plain 2D mask a pad position sees no key at all, and CUDA's memory-efficient SDPA
kernel can return NaN gradients for such fully masked rows (seen at a fixed step of a bf16 LoRA run on an H200;
docs/benchmarks.md). Real tokens see exactly the keys they saw before, so losses and gradients are unchanged.
Scoring (no gradients) keeps the 2D mask. A model whose layers alternate sliding-window and full attention
(Gemma 3, Qwen2 with its window on) gets one such mask per layer type when its batch is wider than its window,
the sliding one cut to the window as transformers cuts it; a single 4D mask would stand in for both. A
sliding-window model whose forward does not take masks per layer type keeps the 2D mask there.

`params` lets algorithms run the model on a dict of tensors other than its own (adapted weights, with or without
a graph back to the originals) through `torch.func.functional_call`.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call

TokenSequence = tuple[list[int], list[int]]  # (context_ids, target_ids)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], left-padded
    attention_mask: torch.Tensor  # [B, T]
    target_mask: torch.Tensor  # [B, L] True where the last-L token is a target token (L = longest target)

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens: the unit of our tokens/s and budgets."""
        return int(self.attention_mask.sum())

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device))


def collate(sequences: Sequence[TokenSequence], pad_id: int) -> Batch:
    """Left-pad (context + target) sequences into one batch; every target must be non-empty.

    A sequence with an empty context (a zero-shot instance whose input is empty) has nothing to predict its first
    target token from (we add no BOS, like MetaICL): that token becomes context and is not scored."""
    sequences = [(c, t) if c else (t[:1], t[1:]) for c, t in sequences]
    lengths = [len(c) + len(t) for c, t in sequences]
    width = max(lengths)
    target_width = max(len(t) for _, t in sequences)
    if min(len(t) for _, t in sequences) == 0:
        raise ValueError("a sequence has no target tokens to score (an empty target, or a one-token target "
                         "with an empty context)")
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    target_mask = torch.zeros((len(sequences), target_width), dtype=torch.bool)
    for row, ((context, target), length) in enumerate(zip(sequences, lengths)):
        input_ids[row, width - length:] = torch.tensor(context + target, dtype=torch.long)
        attention_mask[row, width - length:] = 1
        target_mask[row, target_width - len(target):] = True
    return Batch(input_ids, attention_mask, target_mask)


def training_mask(attention_mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """The [B, 1, T, T] boolean SDPA mask of a left-padded batch (True = may attend): causal over real keys, as
    transformers builds it from the 2D mask, plus each position attending to itself, so that no query row (a pad
    position's) is fully masked. With `window`, a query sees only the keys less than `window` positions back, as
    in transformers' sliding-window layers (left padding keeps distances between real tokens)."""
    width = attention_mask.shape[1]
    real_keys = attention_mask.bool()[:, None, :]
    position = torch.arange(width, device=attention_mask.device)
    back = position[:, None] - position[None, :]  # query minus key
    allowed = (back >= 0) & real_keys
    if window is not None:
        allowed = allowed & (back < window)
    allowed = allowed | (back == 0)
    return allowed[:, None]


@functools.cache
def _takes_masks_per_layer_type(module_class: type) -> bool:
    """Whether this module's forward takes a {layer type: mask} dict as its attention mask, as transformers'
    decoders with sliding-window layers do (read from its source; False when unreadable, which keeps the 2D mask)."""
    try:
        source = inspect.getsource(module_class.forward)
    except (OSError, TypeError):
        return False
    return "isinstance(causal_mask_mapping := attention_mask, dict)" in source


_MODELS_TAKING_MASKS_PER_LAYER_TYPE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _model_takes_masks_per_layer_type(model: torch.nn.Module) -> bool:
    """`_takes_masks_per_layer_type` for any module of the model; looked up once per model object (the walk over
    its modules would otherwise run on every training forward)."""
    if model not in _MODELS_TAKING_MASKS_PER_LAYER_TYPE:
        _MODELS_TAKING_MASKS_PER_LAYER_TYPE[model] = any(
            _takes_masks_per_layer_type(type(module)) for module in model.modules())
    return _MODELS_TAKING_MASKS_PER_LAYER_TYPE[model]


def _attention_kwargs(model: torch.nn.Module, batch: Batch) -> dict:
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    mask = batch.attention_mask
    config = getattr(model, "config", None)
    if (torch.is_grad_enabled() and getattr(config, "_attn_implementation", None) == "sdpa"
            and not bool(mask.all()) and not getattr(config, "use_bidirectional_attention", False)):
        window = getattr(config, "sliding_window", None)
        layer_types = set(getattr(config, "layer_types", None) or ())
        if window is None or mask.shape[1] <= window or layer_types == {"full_attention"}:
            mask = training_mask(mask)
        elif ("sliding_attention" in layer_types and layer_types <= {"sliding_attention", "full_attention"}
              and _model_takes_masks_per_layer_type(model)):
            mask = {kind: training_mask(mask, window if kind == "sliding_attention" else None)
                    for kind in layer_types}
    return dict(attention_mask=mask, position_ids=position_ids)


def sequence_losses(model: torch.nn.Module, batch: Batch,
                    params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean cross-entropy over each sequence's target tokens, shape [B] (at least float32)."""
    target_width = batch.target_mask.shape[1]
    kwargs = dict(**_attention_kwargs(model, batch), logits_to_keep=target_width + 1, use_cache=False)
    if params is None:
        output = model(batch.input_ids, **kwargs)
    else:
        output = functional_call(model, dict(params), (batch.input_ids,), kwargs, strict=False, tie_weights=True)
    logits = output.logits[:, :-1]  # position i predicts token i + 1
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    targets = batch.input_ids[:, -target_width:]
    token_losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    token_losses = token_losses.view_as(targets) * batch.target_mask
    return token_losses.sum(-1) / batch.target_mask.sum(-1)


def mean_loss(model: torch.nn.Module, batch: Batch, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """MetaICL's training loss: the mean over sequences of the per-sequence mean target-token loss."""
    return sequence_losses(model, batch, params).mean()
