"""Gradient checkpointing (activation recomputation) that stays correct under `functional_call`.

Algorithms run the model on dicts of tensors other than its own parameters (adapted weights theta_i) through
`torch.func.functional_call`, which binds those tensors only while the forward runs. A recomputing layer replays
its forward during backward, when the binding is gone: with a stock checkpoint wrapper (transformers'
`gradient_checkpointing_enable`) the replay would silently use the module's own parameters, giving wrong
gradients for every inner step after the first and for the query loss at theta_i.

`enable(model)` therefore wraps each decoder layer so that the tensors bound to its parameters at forward time
are inputs of a non-reentrant `torch.utils.checkpoint` and are bound again for the replay. Each layer then keeps
only its inputs; its activations are recomputed in backward. Second-order MAML works too: the replay inside the
support-loss gradient (create_graph=True) is recorded for the second derivative (tested against finite
differences). RNG state is restored for the replay, so dropout masks match.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint

from .errors import UserError


@contextlib.contextmanager
def _bound(layer: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily put `tensors` in place of the layer's parameters (by qualified name)."""
    previous = []
    for name, tensor in tensors.items():
        owner, _, attr = name.rpartition(".")
        module = layer.get_submodule(owner) if owner else layer
        previous.append((module, attr, module._parameters[attr]))
        module._parameters[attr] = tensor
    try:
        yield
    finally:
        for module, attr, tensor in reversed(previous):
            module._parameters[attr] = tensor


def _wrap(layer: torch.nn.Module) -> None:
    forward = layer.forward

    def recomputed_forward(*args, **kwargs):
        if not (layer.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        named = list(layer.named_parameters(remove_duplicate=False))  # what is bound now (theta_i under
        names = [name for name, _ in named]                           # functional_call)
        count = len(args)

        def replay(*flat):
            with _bound(layer, dict(zip(names, flat[count:]))):
                return forward(*flat[:count], **kwargs)

        return checkpoint(replay, *args, *(tensor for _, tensor in named), use_reentrant=False)

    layer.forward = recomputed_forward
    layer._maml_en_llm_recompute = True


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: transformers' checkpointable layers, else the modules of the longest
    ModuleList (the usual `layers` / `h`)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer

        found = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        if found:
            return found
    except ImportError:
        pass
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def enable(model: torch.nn.Module) -> int:
    """Recompute every decoder layer's activations in backward; returns the number of layers wrapped."""
    layers = [layer for layer in decoder_layers(model) if not getattr(layer, "_maml_en_llm_recompute", False)]
    if not layers and not any(getattr(m, "_maml_en_llm_recompute", False) for m in model.modules()):
        raise UserError(f"gradient_checkpointing=true: found no decoder layers in {type(model).__name__}; "
                        "turn it off for this model")
    for layer in layers:
        _wrap(layer)
    return len(layers)
