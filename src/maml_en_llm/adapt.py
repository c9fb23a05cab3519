"""Test-time adaptation: fine-tune a copy of the model on one seed's k demonstrations, then evaluate it in context.

Each demonstration is the target once, with the other k-1 (in file order) as its context, exactly as a MetaICL
training instance (`prompts.training_sequence`). The target is always formatted as a non-first example (with the
separator), as in MetaICL's training instances and as the test input it prepares for: at k=1 nothing precedes it. One step is one batch of all k instances under `lm.mean_loss`,
gradient norm clipped to 1.0. The caller's model is never touched: the copy is made before anything else.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from .errors import UserError
from .lm import Batch, TokenSequence, collate, mean_loss
from .precision import autocast
from .prompts import PromptFormat, Tokenize, make_tokenize, training_sequence
from .scoring import pad_id_of
from .tasks import Example

OPTIMIZERS = ("sgd", "adam")
MAX_GRAD_NORM = 1.0


def adaptation_sequences(tokenize: Tokenize, demonstrations: Sequence[Example], fmt: PromptFormat) -> list[TokenSequence]:
    """k training instances: demonstration i as target after the other k-1 in their order."""
    demonstrations = list(demonstrations)
    return [training_sequence(tokenize, demonstrations[:i] + demonstrations[i + 1:], target, fmt, target_first=False)
            for i, target in enumerate(demonstrations)]


def adaptation_batch(model: torch.nn.Module, tokenizer, demonstrations: Sequence[Example], fmt: PromptFormat,
                     tokenize: Tokenize | None = None) -> Batch:
    if not demonstrations:
        raise ValueError("adaptation needs at least one demonstration (k >= 1)")
    sequences = adaptation_sequences(tokenize or make_tokenize(tokenizer), demonstrations, fmt)
    return collate(sequences, pad_id_of(tokenizer)).to(next(model.parameters()).device)


def demonstration_loss(model: torch.nn.Module, tokenizer, demonstrations: Sequence[Example], fmt: PromptFormat,
                       *, tokenize: Tokenize | None = None) -> float:
    """The adaptation loss of `model` on these demonstrations, without gradients (eval mode)."""
    batch = adaptation_batch(model, tokenizer, demonstrations, fmt, tokenize)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return float(mean_loss(model, batch))
    finally:
        model.train(was_training)


def adapt(model: torch.nn.Module, tokenizer, demonstrations: Sequence[Example], fmt: PromptFormat, steps: int,
          lr: float, optimizer: str, *, tokenize: Tokenize | None = None) -> torch.nn.Module:
    """A copy of `model` fine-tuned for `steps` full-batch steps on the demonstrations; returned in eval mode.

    `optimizer`: "sgd" (plain) or "adam" (AdamW, weight decay 0). Seed torch beforehand for reproducible runs
    (dropout, if the model has any, is the only randomness). Precision follows training's rules (precision.py):
    the copy's weights and optimizer state are fp32 ("master weights"); a model loaded in bfloat16 runs its
    forward and backward under bf16 autocast (`compute_context`); float16 is refused."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    batch = adaptation_batch(model, tokenizer, demonstrations, fmt, tokenize)
    context = compute_context(model)
    adapted = copy.deepcopy(model).float()  # deepcopy keeps tied weights tied; fp32 master weights
    adapted.requires_grad_(True)
    adapted.train()
    params = list(adapted.parameters())
    if optimizer == "adam":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    else:
        opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with context():
            loss = mean_loss(adapted, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
    opt.zero_grad(set_to_none=True)
    adapted.eval()
    return adapted


def compute_context(model: torch.nn.Module):
    """The context a model's compute runs in when it is adapted, and when its adapted (fp32) copy is scored: bf16
    autocast for a model loaded in bfloat16, nothing for fp32. float16 cannot be adapted (no loss scaling)."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float16:
        raise UserError("--adapt-steps with --dtype float16: adaptation in float16 needs loss scaling, which is not "
                        "implemented; use --dtype bfloat16 (fp32 master weights) or float32")
    device = next(model.parameters()).device
    return lambda: autocast("bfloat16" if dtype == torch.bfloat16 else "float32", device)
