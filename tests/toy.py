"""A float64 toy causal LM and helpers for checking meta-gradients against finite differences.

The toy model is float64 end to end (HF Llama computes RMSNorm and rotary in float32 even in a float64 model,
which would limit finite differences to ~1e-5), nonlinear (tanh) so second-order terms matter, and takes the
same call signature as an HF causal LM, so the real `lm.sequence_losses` and `algorithms` code run unchanged.
With `blocks > 0` it has a ModuleList of residual tanh blocks, the "decoder layers" that activation
recomputation wraps.
"""

from types import SimpleNamespace

import torch
from torch import nn

from maml_en_llm.algorithms import adapt
from maml_en_llm.episodes import TaskEpisode
from maml_en_llm.lm import collate, mean_loss

PAD = 0
VOCAB = 24


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, h):
        return h + torch.tanh(self.linear(h))


class ToyLM(nn.Module):
    """Embedding -> causal running mean -> tanh layer [-> tanh blocks] -> vocabulary, in float64."""

    def __init__(self, seed=0, width=6, blocks=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, VOCAB)
        self.double()

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=False):
        mask = attention_mask[..., None].to(torch.float64)
        h = self.embed(input_ids) * mask
        running_mean = h.cumsum(1) / mask.cumsum(1).clamp(min=1)
        h = torch.tanh(self.mix(running_mean)) + h
        for layer in self.layers:
            h = layer(h)
        logits = self.head(h)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def collected(task_fn):
    """Run a task function from zero gradients and return its contribution (what it added to .grad)."""

    def run(model, params, *args, **kwargs):
        for p in params.values():
            p.grad = None
        result = task_fn(model, params, *args, **kwargs)
        result.grads = {n: p.grad.clone() for n, p in params.items()}
        for p in params.values():
            p.grad = None
        return result

    return run


def params_of(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def episode(seed=0):
    g = torch.Generator().manual_seed(seed)

    def seq(n_ctx, n_tgt):
        ids = torch.randint(1, VOCAB, (n_ctx + n_tgt,), generator=g).tolist()
        return ids[:n_ctx], ids[n_ctx:]

    return TaskEpisode("t", support=[seq(7, 2), seq(4, 3)], query=[seq(6, 2), seq(9, 1)])


def snapshot(optimizer):
    return {p: {k: v.clone() for k, v in state.items()} for p, state in optimizer.state.items()}


def restore(optimizer, saved):
    for p, state in saved.items():
        optimizer.state[p] = {k: v.clone() for k, v in state.items()}


def loss_after_adaptation(model, params, ep, inner, steps):
    """L_query(theta_i) as a plain number, theta_i computed without a graph. shared-adam's optimizer state is
    put back afterwards (adapting writes to it)."""
    saved = snapshot(inner.shared) if inner.shared is not None else None
    device = next(iter(params.values())).device
    support = collate(ep.support, PAD).to(device)
    adapted, _ = adapt(model, params, support, inner, steps, differentiable=False)
    with torch.no_grad():
        value = mean_loss(model, collate(ep.query, PAD).to(device), adapted).item()
    if saved is not None:
        restore(inner.shared, saved)
    return value


def directional_fd(model, params, ep, inner, steps, direction, eps=1e-6):
    plus = {n: (p + eps * direction[n]).detach().requires_grad_() for n, p in params.items()}
    minus = {n: (p - eps * direction[n]).detach().requires_grad_() for n, p in params.items()}
    return (loss_after_adaptation(model, plus, ep, inner, steps)
            - loss_after_adaptation(model, minus, ep, inner, steps)) / (2 * eps)


def random_direction(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for n, p in params.items()}


def dot(a, b):
    return sum((a[n] * b[n]).sum() for n in a).item()


