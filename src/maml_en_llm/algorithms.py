"""Where the (meta-)gradient is computed. One small function per method, over (params, one task's episode).

Each `*_task` function returns that task's contribution to the outer update; the training loop averages the
contributions over the meta-batch's tasks (and, later, across ranks) and lets the outer AdamW step.

* metaicl / ict / multitask0 — gradient of the mean instance loss over the task's support+query instances
  (ict differs only in its instances, which carry the task instruction; multitask0 in k = 0).
* maml (MAML-en-LLM, second order) — theta_i = inner_steps updates of theta on the support batch; the gradient
  of the query loss at theta_i with respect to theta, *through* the inner updates (create_graph=True). Runs the
  model with `torch.func.functional_call` on the dict of adapted tensors; needs eager attention (no double
  backward in SDPA/flash).
* fomaml — the same inner updates with their gradients treated as constants: the gradient of the query loss
  taken at theta_i (d theta_i / d theta := I).
* reptile — inner_steps first-order updates on the task's support+query instances; the pseudo-gradient
  theta - theta_i, which the outer optimizer steps like a gradient.

Inner optimizers (`inner_optimizer=`), for maml, fomaml and reptile:
* sgd — theta_i = theta - inner_lr * g, per inner step. No state.
* adam — Adam with fresh zero moments for every task (step count from 0), lr inner_lr, no weight decay; the
  moments are discarded after the task.
* shared-adam — the paper's "consolidated" optimizer: the inner Adam steps *read* the outer AdamW's first and
  second moments and step count (bias correction included), update copies of them step by step with the inner
  gradients, and the inner update is theta - inner_lr * m_hat / (sqrt(v_hat) + eps). After all tasks of the
  meta-step, the outer AdamW's moments are *written* with the mean over tasks of each task's updated moments
  and its step count advances by inner_steps; then the outer step updates the same moments once more with the
  meta-gradient. The mean (rather than one task after another) makes the result independent of task order and
  of how tasks are sharded across ranks. In second-order MAML the graph runs through the moment updates of the
  inner steps (m, v are functions of the inner gradients); the write-back itself is detached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .episodes import TaskEpisode
from .lm import collate, mean_loss

Params = dict[str, torch.Tensor]


@dataclass
class TaskResult:
    grads: Params  # this task's contribution to the outer "gradient"
    loss: float  # the loss the outer update optimises (query loss for the MAML family)
    tokens: int  # real tokens of the task's sampled instances (support + query): the unit of budgets
    inner_loss: float | None = None  # support loss before adaptation (MAML family)
    moments: tuple[Params, Params] | None = None  # shared-adam: the task's updated (m, v)


@dataclass
class InnerOptimizer:
    """A functional optimizer for inner updates: returns new tensors, never mutates its inputs."""

    kind: str  # sgd | adam | shared-adam
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    shared: torch.optim.Optimizer | None = None  # the outer AdamW whose state shared-adam reads ...
    shared_params: dict[str, torch.Tensor] = field(default_factory=dict)  # ... keyed by these parameters' names

    def start(self, params: Params):
        """The state one task's inner loop starts from."""
        if self.kind == "sgd":
            return None
        if self.kind == "adam":
            zeros = {n: torch.zeros_like(p) for n, p in params.items()}
            return zeros, {n: torch.zeros_like(p) for n, p in params.items()}, {n: 0 for n in params}
        m, v, t = {}, {}, {}
        for name in params:
            state = self.shared.state[self.shared_params[name]]
            m[name], v[name], t[name] = state["exp_avg"], state["exp_avg_sq"], int(state["step"])
        return m, v, t

    def step(self, params: Params, grads: Params, state, differentiable: bool):
        """One inner update. With `differentiable`, the result keeps the graph to params and grads."""
        if not differentiable:
            grads = {n: g.detach() for n, g in grads.items()}
        if self.kind == "sgd":
            return {n: p - self.lr * grads[n] for n, p in params.items()}, None
        m, v, t = state
        beta1, beta2 = self.betas
        new_params, new_m, new_v, new_t = {}, {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            new_t[name] = t[name] + 1
            new_m[name] = beta1 * m[name] + (1 - beta1) * g
            new_v[name] = beta2 * v[name] + (1 - beta2) * g * g
            bias1 = 1 - beta1 ** new_t[name]
            bias2 = 1 - beta2 ** new_t[name]
            denom = _sqrt(new_v[name], differentiable) / math.sqrt(bias2) + self.eps
            new_params[name] = p - (self.lr / bias1) * new_m[name] / denom
        return new_params, (new_m, new_v, new_t)


def _sqrt(x: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """sqrt whose second-order graph stays finite where x == 0 (embedding rows of unseen tokens have g = 0)."""
    if not differentiable:
        return x.sqrt()
    positive = x > 0
    return torch.where(positive, x, torch.ones_like(x)).sqrt() * positive


def ensure_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's per-parameter state up front (zeros, step 0), so inner steps can read it before the first
    outer step. Uses AdamW's own keys; AdamW then finds the state and does not re-create it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def write_shared_moments(optimizer: torch.optim.Optimizer, params: Params, mean_m: Params, mean_v: Params,
                         inner_steps: int) -> None:
    """shared-adam's write-back: the outer state takes the tasks' mean moments; its step advances by
    inner_steps."""
    with torch.no_grad():
        for name, p in params.items():
            state = optimizer.state[p]
            state["exp_avg"].copy_(mean_m[name])
            state["exp_avg_sq"].copy_(mean_v[name])
            state["step"] += inner_steps


def _grad(loss: torch.Tensor, params: Params, create_graph: bool = False) -> Params:
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return dict(zip(params.keys(), grads))


def metaicl_task(model, params: Params, episode: TaskEpisode, pad_id: int) -> TaskResult:
    """MetaICL (and ict, multitask0): the plain gradient of the mean loss over all the task's instances."""
    batch = collate(episode.support + episode.query, pad_id).to(_device(params))
    loss = mean_loss(model, batch)
    return TaskResult(_grad(loss, params), loss.item(), batch.num_tokens)


def adapt(model, params: Params, batch, inner: InnerOptimizer, steps: int, differentiable: bool):
    """theta_i: `steps` inner updates on `batch`. Returns (adapted params, first support loss, final state)."""
    state = inner.start(params)
    adapted, first_loss = params, None
    for _ in range(steps):
        loss = mean_loss(model, batch, adapted)
        first_loss = loss.item() if first_loss is None else first_loss
        grads = _grad(loss, adapted, create_graph=differentiable)
        if differentiable:
            adapted, state = inner.step(adapted, grads, state, differentiable=True)
        else:
            with torch.no_grad():
                adapted, state = inner.step(adapted, grads, state, differentiable=False)
            adapted = {n: p.requires_grad_() for n, p in adapted.items()}
    return adapted, first_loss, state


def maml_task(model, params: Params, episode: TaskEpisode, pad_id: int, inner: InnerOptimizer, inner_steps: int,
              first_order: bool) -> TaskResult:
    """MAML-en-LLM (second order) or FOMAML: the query-loss gradient after adapting on the support batch."""
    device = _device(params)
    support = collate(episode.support, pad_id).to(device)
    query = collate(episode.query, pad_id).to(device)
    adapted, inner_loss, state = adapt(model, params, support, inner, inner_steps, differentiable=not first_order)
    if first_order:
        at = {n: p.detach().requires_grad_() for n, p in adapted.items()}
        query_loss = mean_loss(model, query, at)
        grads = _grad(query_loss, at)
    else:
        query_loss = mean_loss(model, query, adapted)
        grads = _grad(query_loss, params)
    return TaskResult(grads, query_loss.item(), support.num_tokens + query.num_tokens, inner_loss,
                      _detached_moments(state))


def reptile_task(model, params: Params, episode: TaskEpisode, pad_id: int, inner: InnerOptimizer,
                 inner_steps: int) -> TaskResult:
    """Reptile: the pseudo-gradient theta - theta_i after inner_steps first-order updates on all instances."""
    batch = collate(episode.support + episode.query, pad_id).to(_device(params))
    adapted, inner_loss, state = adapt(model, params, batch, inner, inner_steps, differentiable=False)
    with torch.no_grad():
        pseudo = {n: params[n].detach() - adapted[n].detach() for n in params}
    return TaskResult(pseudo, inner_loss, batch.num_tokens, inner_loss, _detached_moments(state))


def _detached_moments(state):
    if state is None:
        return None
    m, v, _ = state
    return {n: t.detach() for n, t in m.items()}, {n: t.detach() for n, t in v.items()}


def _device(params: Params) -> torch.device:
    return next(iter(params.values())).device


def task_function(method: str, inner: InnerOptimizer, inner_steps: int) -> Callable[..., TaskResult]:
    """The per-task function of a method, with its inner-loop settings bound: f(model, params, episode, pad_id)."""
    if method in ("metaicl", "ict", "multitask0"):
        return metaicl_task
    if method in ("maml", "fomaml"):
        first_order = method == "fomaml"
        return lambda model, params, episode, pad_id: maml_task(model, params, episode, pad_id, inner, inner_steps,
                                                                first_order)
    if method == "reptile":
        return lambda model, params, episode, pad_id: reptile_task(model, params, episode, pad_id, inner, inner_steps)
    raise ValueError(f"unknown method {method!r}")
