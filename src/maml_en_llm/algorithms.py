"""Where the (meta-)gradient is computed. One small function per method, over (params, one task's episode).

Each `*_task` function *adds* its task's contribution to the outer update into `param.grad` (like `backward()`
does) and returns the losses it saw; the training loop divides the sum by the number of tasks (after summing
across ranks) and lets the outer AdamW step. Accumulating in `.grad` instead of returning gradient dicts keeps
one parameter-sized buffer per method rather than three.

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

Inner optimizers (`inner_optimizer=`), for maml, fomaml and reptile. Inner gradients are never clipped
(`max_grad_norm` clips only the outer (meta-)gradient), and inner updates never apply weight decay.
* sgd — theta_i = theta - inner_lr * g, per inner step. No state.
* adam — Adam with fresh zero moments for every task (step count from 0), lr inner_lr; the moments are
  discarded after the task.
* shared-adam-copy (default) — the paper's shared moments, read-only: each task's inner Adam steps start from
  the outer AdamW's current first and second moments and step count t (bias correction continues from t), but
  update private copies that are discarded after the task. The outer AdamW's state is updated by the
  meta-gradient alone, exactly as in a plain AdamW, so maml's and fomaml's outer updates differ only by their
  meta-gradients. Every task of a meta-step starts from the same state, so the update does not depend on task
  order or on how tasks are sharded over ranks. In second-order MAML the graph runs through the private moment
  update (m', v' are functions of the inner gradient); the starting moments are constants.
* shared-adam-chain — one set of moments written by every step, inner and outer: each inner step of each task
  (tasks in episode order) updates the outer AdamW's own m, v and step count in place, as an AdamW step would,
  and moves theta_i by -inner_lr * m_hat / (sqrt(v_hat) + eps); the next task starts from the moments the
  previous one left; then the outer step updates them again with the meta-gradient. After a meta-step of n
  tasks and J inner steps the step count has advanced n*J + 1, and most of the outer momentum is first-order
  support gradient, which pulls maml's outer update toward fomaml's. Tasks read the moments detached (no
  gradient flows between tasks). With several torchrun ranks each rank chains its own tasks and the moments of
  the ranks that ran a task are then averaged (step count: the largest), so one rank is the exact sequential
  rule and several an average of per-rank chains. reptile refuses it: its pseudo-gradient would be stepped with moments made of its
  own raw inner gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from .config import INNER_OPTIMIZERS
from .episodes import TaskEpisode
from .lm import collate, mean_loss, sequence_losses

Params = dict[str, torch.Tensor]


@dataclass
class TaskResult:
    loss: float  # the loss the outer update optimises (query loss for maml/fomaml)
    tokens: int  # real tokens of the task's sampled instances (support + query): the unit of budgets
    inner_loss: float | None = None  # support loss before adaptation (MAML family)
    tasks: int = 1  # how many tasks `loss` sums over (several for metaicl_tasks)


def _new_moments(g, m, v, b1: float, b2: float, m_out=None, v_out=None):
    """m' = b1 m + (1 - b1) g and v' = b2 v + (1 - b2) g^2 on one chunk, into m_out, v_out when given: the one
    formula the forward and the recomputing backward of the differentiable Adam steps share."""
    m_new = torch.lerp(g, m, b1, out=m_out)
    v_new = torch.mul(g, g, out=v_out).lerp_(v, b2)
    return m_new, v_new


class _AdamStep(torch.autograd.Function):
    """One elementwise Adam update with a hand-written backward:

        m' = b1 m + (1 - b1) g,   v' = b2 v + (1 - b2) g^2,   p' = p - c m' / (sqrt(v') / s + eps)

    with c = lr / (1 - b1^t), s = sqrt(1 - b2^t). Autograd would keep about five parameter-sized intermediates
    per tensor in the second-order graph; this keeps g and its outputs m', v' (which shared-adam-chain then uses
    as the optimizer's state, so they cost nothing extra) and recomputes the rest in backward. The
    backward itself is not differentiable, which is never needed: the meta-gradient is a first derivative of
    the query loss. Where v' = 0 (g = v = 0, e.g. embedding rows of unseen tokens at a fresh optimizer) the
    derivative through sqrt(v') is taken as 0 instead of 0 * inf."""

    @staticmethod
    def forward(ctx, p, g, m, v, c: float, s: float, b1: float, b2: float, eps: float):
        p_new, m_new, v_new = torch.empty_like(p), torch.empty_like(p), torch.empty_like(p)
        for ps, gs, ms, vs, pn, mn, vn in _chunked(p, g, m, v, p_new, m_new, v_new):
            _new_moments(gs, ms, vs, b1, b2, mn, vn)
            torch.addcdiv(ps, mn, vn.sqrt().div_(s).add_(eps), value=-c, out=pn)
        ctx.save_for_backward(g, m_new, v_new)
        ctx.constants = (c, s, b1, b2, eps)
        ctx.set_materialize_grads(False)
        return p_new, m_new, v_new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_p, grad_m_new, grad_v_new):
        g, m_new, v_new = ctx.saved_tensors
        return _adam_step_backward(g, m_new, v_new, grad_p, grad_m_new, grad_v_new, ctx.needs_input_grad,
                                   ctx.constants)


class _AdamLastStep(torch.autograd.Function):
    """The same update when nothing downstream reads m' and v' (the last inner step of a task whose moments are
    discarded: shared-adam-copy and adam). Only p' is returned; backward saves the *incoming* m and v (the outer
    optimizer's state or the previous step's outputs, alive anyway) and recomputes m', v' from them, so the
    second-order graph holds no new moment tensors."""

    @staticmethod
    def forward(ctx, p, g, m, v, c: float, s: float, b1: float, b2: float, eps: float):
        p_new = torch.empty_like(p)
        for ps, gs, ms, vs, pn in _chunked(p, g, m, v, p_new):
            mn, vn = _new_moments(gs, ms, vs, b1, b2)  # chunk-sized temporaries
            torch.addcdiv(ps, mn, vn.sqrt_().div_(s).add_(eps), value=-c, out=pn)
        ctx.save_for_backward(g, m, v)
        ctx.constants = (c, s, b1, b2, eps)
        ctx.set_materialize_grads(False)
        return p_new

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_p):
        g, m, v = ctx.saved_tensors
        c, s, b1, b2, eps = ctx.constants
        m_new, v_new = torch.empty_like(g), torch.empty_like(g)
        for gs, ms, vs, mn, vn in _chunked(g, m, v, m_new, v_new):
            _new_moments(gs, ms, vs, b1, b2, mn, vn)
        return _adam_step_backward(g, m_new, v_new, grad_p, None, None, ctx.needs_input_grad, ctx.constants)


def _adam_step_backward(g, m_new, v_new, grad_p, grad_m_new, grad_v_new, need, constants):
    """Gradients of (p', m', v') = AdamStep(p, g, m, v) with respect to (p, g, m, v), given the upstream gradients
    of p', m' and v' (None where unused)."""
    c, s, b1, b2, eps = constants
    bound = 1 / math.sqrt(1 - b2)  # |g| / sqrt(v') <= 1 / sqrt(1 - b2) since v' >= (1 - b2) g^2
    if grad_p is None and grad_m_new is None and grad_v_new is None:  # no output was used downstream
        return None, None, None, None, None, None, None, None, None
    if grad_m_new is None and grad_v_new is None and not need[2] and not need[3]:
        # the common case (one inner step): dp'/dg only:
        # grad_g = c q ((1 - b2) / s * (g / sqrt(v')) m' / denom - (1 - b1)),  q = grad_p / denom
        grad_g = torch.empty_like(g)
        for gs, ms, vs, gps, out in _chunked(g, m_new, v_new, grad_p, grad_g):
            root = vs.sqrt()
            denom = root.add(eps * s).div_(s)
            _safe_ratio(gs, root, bound, out=out).mul_(ms).div_(denom)
            out.mul_(c * (1 - b2) / s).sub_(c * (1 - b1)).mul_(gps).div_(denom)
        return grad_p, grad_g, None, None, None, None, None, None, None
    root = v_new.sqrt()
    denom = root.add(eps * s).div_(s)
    total_m = torch.zeros_like(g) if grad_m_new is None else grad_m_new.clone()
    total_v = torch.zeros_like(g) if grad_v_new is None else grad_v_new.clone()
    if grad_p is not None:
        q = grad_p / denom
        total_m.sub_(q, alpha=c)
        # d p'/d v' = c m' / (2 s sqrt(v') denom^2), taken as 0 where v' = 0
        inverse_root = torch.where(root > 0, root.reciprocal(), torch.zeros_like(root))
        total_v.add_(q * m_new * inverse_root / denom, alpha=c / (2 * s))
    grad_g = (1 - b1) * total_m + (2 * (1 - b2)) * g * total_v
    return (grad_p if need[0] else None, grad_g, b1 * total_m if need[2] else None,
            b2 * total_v if need[3] else None, None, None, None, None, None)


def _safe_ratio(g: torch.Tensor, root: torch.Tensor, bound: float, out: torch.Tensor) -> torch.Tensor:
    """g / sqrt(v') without 0/0 or underflow blow-ups: where v' = 0 (or has underflowed, g tiny) it is 0, and
    it is clamped to its analytic bound."""
    torch.div(g, root, out=out)
    return out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).clamp_(-bound, bound)


CHUNK = 1 << 17  # elements: a chunk of each operand fits in cache, so a chain of elementwise ops reads memory once


def _chunked(*tensors: torch.Tensor):
    """Matching flat slices of same-shaped contiguous tensors (None passes through as None), CHUNK elements at a
    time. Running a sequence of elementwise ops chunk by chunk instead of tensor by tensor cuts memory traffic
    several-fold on CPU."""
    flat = [None if t is None else t.view(-1) for t in tensors]
    total = flat[0].numel()
    for start in range(0, total, CHUNK):
        yield tuple(None if f is None else f[start:start + CHUNK] for f in flat)


@dataclass
class InnerOptimizer:
    """A functional optimizer for inner updates: returns new parameter tensors, never mutates parameters.
    The shared-adam kinds read the outer AdamW's state; shared-adam-chain also writes it (module docstring)."""

    kind: str  # one of INNER_OPTIMIZERS
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    shared: torch.optim.Optimizer | None = None  # the outer AdamW whose state the shared kinds use ...
    shared_params: dict[str, torch.Tensor] = field(default_factory=dict)  # ... keyed by these parameters' names

    def __post_init__(self) -> None:
        if self.kind not in INNER_OPTIMIZERS:
            raise ValueError(f"inner optimizer must be one of {INNER_OPTIMIZERS}, got {self.kind!r}")

    @property
    def writes_outer_state(self) -> bool:
        return self.kind == "shared-adam-chain"

    def start(self, params: Params):
        """The state one task's inner loop starts from: None (sgd) or (m, v, step, owned) with per-name dicts;
        `owned` says whether the moment tensors may be updated in place."""
        if self.kind == "sgd":
            return None
        if self.kind == "adam":
            zeros = {n: torch.zeros_like(p) for n, p in params.items()}
            return zeros, {n: torch.zeros_like(p) for n, p in params.items()}, {n: 0 for n in params}, True
        m, v, t = {}, {}, {}
        for name in params:
            state = self.shared.state[self.shared_params[name]]
            m[name], v[name], t[name] = state["exp_avg"], state["exp_avg_sq"], int(state["step"])
        # chain: the outer state itself is updated (in place on the first-order path); copy: never touched
        return m, v, t, self.writes_outer_state

    def step(self, params: Params, grads: Params, state, differentiable: bool, last: bool = False):
        """One inner update. With `differentiable`, the result keeps the graph to params and grads. Gradients
        are consumed (popped) as each tensor is updated, so the first-order path never holds two full copies.
        `last`: no further inner step will read the state, so unless the state is the outer optimizer's
        (shared-adam-chain) the new moments are never materialised (on the second-order path, `_AdamLastStep`
        recomputes them in backward)."""
        new_params, new_m, new_v, new_t = {}, {}, {}, {}
        for name in list(params):
            p, g = params[name], grads.pop(name).contiguous()
            if not differentiable:
                g = g.detach()
            if self.kind == "sgd":
                new_params[name] = p - self.lr * g
                continue
            # popped so a superseded moment tensor is freed as soon as its replacement exists
            m, v, t = state[0].pop(name), state[1].pop(name), state[2][name] + 1
            beta1, beta2 = self.betas
            step_size = self.lr / (1 - beta1 ** t)
            root_bias = math.sqrt(1 - beta2 ** t)
            if differentiable and last and not self.writes_outer_state:  # m', v' would be discarded
                new_params[name] = _AdamLastStep.apply(p, g, m, v, step_size, root_bias, beta1, beta2, self.eps)
                new_m[name] = new_v[name] = None
            elif differentiable:
                new_params[name], new_m[name], new_v[name] = _AdamStep.apply(p, g, m, v, step_size, root_bias,
                                                                             beta1, beta2, self.eps)
            else:  # no graph: moments in place when owned, into fresh tensors when not, nowhere when unused
                p_new = torch.empty_like(p)
                discard = last and not self.writes_outer_state
                if discard:
                    m_out, v_out = None, None
                elif state[3]:
                    m_out, v_out = m, v
                else:
                    m_out, v_out = torch.empty_like(m), torch.empty_like(v)
                for ps, gs, ms, vs, pn, mn, vn in _chunked(p, g.contiguous(), m, v, p_new, m_out, v_out):
                    mn = torch.lerp(ms, gs, 1 - beta1, out=mn)  # m' (out=None: a chunk-sized temporary)
                    vn = torch.lerp(vs, gs * gs, 1 - beta2, out=vn)  # v'
                    torch.addcdiv(ps, mn, vn.sqrt().div_(root_bias).add_(self.eps), value=-step_size, out=pn)
                new_params[name], new_m[name], new_v[name] = p_new, m_out, v_out
            new_t[name] = t
            if self.writes_outer_state:
                # The new moments *become* the optimizer's state (same storage, no copy): the next inner step,
                # the next task and the outer step read them.
                outer = self.shared.state[self.shared_params[name]]
                outer["exp_avg"], outer["exp_avg_sq"] = new_m[name].detach(), new_v[name].detach()
                outer["step"].fill_(t)
        return new_params, (None if self.kind == "sgd" else (new_m, new_v, new_t, True))


def sync_shared_moments(optimizer: torch.optim.Optimizer, world: int, tasks: int) -> None:
    """Several ranks: average the moments of the ranks that ran a task (with fewer tasks than ranks, the idle
    ranks' untouched moments must not dilute the average), take the largest step count. No-op for one rank."""
    if world == 1:
        return
    from . import distributed

    active = min(world, tasks)  # tasks are sharded round robin: ranks 0 .. active-1 have at least one
    states = [optimizer.state[p] for group in optimizer.param_groups for p in group["params"]]
    moments = [s[key] for s in states for key in ("exp_avg", "exp_avg_sq")]
    if distributed.rank() >= active:
        for moment in moments:
            moment.zero_()
    distributed.all_reduce_sum_(moments)
    steps = torch.stack([s["step"] for s in states])
    distributed.all_reduce_max_(steps)
    for state, step in zip(states, steps):
        state["exp_avg"].div_(active)
        state["exp_avg_sq"].div_(active)
        state["step"].copy_(step)


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


def _grad(loss: torch.Tensor, params: Params, create_graph: bool = False) -> Params:
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return dict(zip(params.keys(), grads))


def _accumulate(params: Params, contribution: Params) -> None:
    """param.grad += contribution, consuming the contribution dict as it goes."""
    with torch.no_grad():
        for name in list(contribution):
            value = contribution.pop(name)
            p = params[name]
            if p.grad is None:
                p.grad = value.detach().clone()
            else:
                p.grad += value


def adapt(model, params: Params, batch, inner: InnerOptimizer, steps: int, differentiable: bool):
    """theta_i: `steps` inner updates on `batch`. Returns (adapted params, support loss before adapting)."""
    state = inner.start(params)
    adapted, first_loss = params, None
    for step in range(steps):
        loss = mean_loss(model, batch, adapted)
        first_loss = loss.item() if first_loss is None else first_loss
        grads = _grad(loss, adapted, create_graph=differentiable)
        del loss
        if differentiable:
            adapted, state = inner.step(adapted, grads, state, differentiable=True, last=step == steps - 1)
        else:
            with torch.no_grad():
                adapted, state = inner.step(adapted, grads, state, differentiable=False, last=step == steps - 1)
            adapted = {n: p.requires_grad_() for n, p in adapted.items()}
    return adapted, first_loss


def metaicl_task(model, params: Params, episode: TaskEpisode, pad_id: int) -> TaskResult:
    """MetaICL (and ict, multitask0): the plain gradient of the mean loss over all the task's instances."""
    batch = collate(episode.support + episode.query, pad_id).to(_device(params))
    loss = mean_loss(model, batch)
    loss.backward()
    return TaskResult(loss.item(), batch.num_tokens)


def metaicl_tasks(model, params: Params, episodes: list[TaskEpisode], pad_id: int) -> TaskResult:
    """metaicl_task over several tasks in one padded batch (`batch_tasks=true`): the sum over tasks of each task's
    mean loss, so the same loss and gradient as calling metaicl_task task by task, from one forward and one
    backward pass. Fewer, larger kernels: faster where a step is bound by dispatching operators (a small model on
    a GPU), at the cost of padding every task's sequences to the longest of the step."""
    per_task = [episode.support + episode.query for episode in episodes]
    batch = collate([sequence for task in per_task for sequence in task], pad_id).to(_device(params))
    losses = sequence_losses(model, batch)
    weights = torch.tensor([1 / len(task) for task in per_task for _ in task], dtype=losses.dtype,
                           device=losses.device)
    loss = (losses * weights).sum()
    loss.backward()
    return TaskResult(loss.item(), batch.num_tokens, tasks=len(episodes))


metaicl_tasks.over_tasks = True  # meta_step hands it all of this rank's tasks at once


def maml_task(model, params: Params, episode: TaskEpisode, pad_id: int, inner: InnerOptimizer, inner_steps: int,
              first_order: bool) -> TaskResult:
    """MAML-en-LLM (second order) or FOMAML: the query-loss gradient after adapting on the support batch."""
    device = _device(params)
    support = collate(episode.support, pad_id).to(device)
    query = collate(episode.query, pad_id).to(device)
    adapted, inner_loss = adapt(model, params, support, inner, inner_steps, differentiable=not first_order)
    if first_order:
        at = {n: p.detach().requires_grad_() for n, p in adapted.items()}
        del adapted
        query_loss = mean_loss(model, query, at)
        _accumulate(params, _grad(query_loss, at))
    else:
        query_loss = mean_loss(model, query, adapted)
        query_loss.backward(inputs=list(params.values()))
    return TaskResult(query_loss.item(), support.num_tokens + query.num_tokens, inner_loss)


def reptile_task(model, params: Params, episode: TaskEpisode, pad_id: int, inner: InnerOptimizer,
                 inner_steps: int) -> TaskResult:
    """Reptile: the pseudo-gradient theta - theta_i after inner_steps first-order updates on all instances."""
    batch = collate(episode.support + episode.query, pad_id).to(_device(params))
    adapted, inner_loss = adapt(model, params, batch, inner, inner_steps, differentiable=False)
    with torch.no_grad():
        _accumulate(params, {n: params[n].detach() - adapted.pop(n).detach() for n in list(adapted)})
    return TaskResult(inner_loss, batch.num_tokens, inner_loss)


def _device(params: Params) -> torch.device:
    return next(iter(params.values())).device


def task_function(method: str, inner: InnerOptimizer, inner_steps: int,
                  batch_tasks: bool = False) -> Callable[..., TaskResult]:
    """The per-task function of a method with its inner-loop settings bound:
    f(model, params, episode, pad_id) -> TaskResult, contribution added to param.grad. With `batch_tasks`, the
    methods without inner steps get metaicl_tasks, which takes a list of episodes instead (`over_tasks`)."""
    if method in ("metaicl", "ict", "multitask0"):
        return metaicl_tasks if batch_tasks else metaicl_task
    if method in ("maml", "fomaml"):
        first_order = method == "fomaml"
        return lambda model, params, episode, pad_id: maml_task(model, params, episode, pad_id, inner, inner_steps,
                                                                first_order)
    if method == "reptile":
        return lambda model, params, episode, pad_id: reptile_task(model, params, episode, pad_id, inner,
                                                                   inner_steps)
    raise ValueError(f"unknown method {method!r}")
