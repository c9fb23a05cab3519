"""The meta-gradient math, checked on a float64 toy causal LM against independent references.

The toy model is float64 end to end (HF Llama computes RMSNorm and rotary in float32 even in a float64 model,
which would limit finite differences to ~1e-5), nonlinear (tanh) so second-order terms matter, and takes the
same call signature as an HF causal LM, so the real `lm.sequence_losses` and `algorithms` code run unchanged.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from maml_en_llm.algorithms import (
    InnerOptimizer, adapt, ensure_adam_state, maml_task as _maml_task, metaicl_task as _metaicl_task,
    reptile_task as _reptile_task,
)
from maml_en_llm.episodes import TaskEpisode
from maml_en_llm.lm import collate, mean_loss
from maml_en_llm.train import meta_step

PAD = 0
VOCAB = 24


class ToyLM(nn.Module):
    """Embedding -> causal running mean -> tanh layer -> vocabulary, in float64."""

    def __init__(self, seed=0, width=6):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)
        self.double()

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, use_cache=False):
        mask = attention_mask[..., None].to(torch.float64)
        h = self.embed(input_ids) * mask
        running_mean = h.cumsum(1) / mask.cumsum(1).clamp(min=1)
        logits = self.head(torch.tanh(self.mix(running_mean)) + h)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


@pytest.fixture()
def model():
    return ToyLM()


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


maml_task, metaicl_task, reptile_task = collected(_maml_task), collected(_metaicl_task), collected(_reptile_task)


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
    support = collate(ep.support, PAD)
    adapted, _ = adapt(model, params, support, inner, steps, differentiable=False)
    with torch.no_grad():
        value = mean_loss(model, collate(ep.query, PAD), adapted).item()
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
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}


def dot(a, b):
    return sum((a[n] * b[n]).sum() for n in a).item()


def filled_adamw(params, seed=2):
    """An AdamW whose moments hold earlier history (positive second moments, step 3)."""
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=0.0)
    ensure_adam_state(opt)
    g = torch.Generator().manual_seed(seed)
    for p in params.values():
        state = opt.state[p]
        state["exp_avg"].copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2)
        state["exp_avg_sq"].copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 1e-3 + 1e-4)
        state["step"].fill_(3)
    return opt


# Fresh Adam is nearly sign(g): smooth only where |g| >> eps, so its case uses a large eps to keep finite
# differences meaningful; shared-adam starts from moments with history, which are smooth at the default eps.
@pytest.mark.parametrize("kind, lr, steps, eps", [
    ("sgd", 0.5, 1, 1e-8), ("sgd", 0.3, 2, 1e-8), ("adam", 1e-2, 1, 1e-1), ("shared-adam", 1e-2, 2, 1e-8)])
def test_second_order_meta_gradient_matches_finite_differences(model, kind, lr, steps, eps):
    params = params_of(model)
    ep = episode()
    shared = filled_adamw(params) if kind == "shared-adam" else None
    inner = InnerOptimizer(kind, lr, eps=eps, shared=shared, shared_params=params)
    saved = snapshot(shared) if shared else None
    result = maml_task(model, params, ep, PAD, inner, steps, first_order=False)
    if shared:
        restore(shared, saved)
    direction = random_direction(params)
    analytic = dot(result.grads, direction)
    numeric = directional_fd(model, params, ep, inner, steps, direction)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    # and it is not the first-order answer: the second-order term matters at this learning rate
    if shared:
        restore(shared, saved)
    first = maml_task(model, params, ep, PAD, inner, steps, first_order=True)
    assert abs(dot(first.grads, direction) - analytic) > 1e-6 * max(1.0, abs(analytic))


def test_first_order_is_the_gradient_at_the_adapted_weights(model):
    params = params_of(model)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    result = maml_task(model, params, ep, PAD, inner, 1, first_order=True)
    # independent reference: adapt a copy of the module by hand, then backprop the query loss normally
    ref = copy.deepcopy(model)
    support_loss = mean_loss(ref, collate(ep.support, PAD))
    support_loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
            p.grad = None
    mean_loss(ref, collate(ep.query, PAD)).backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(result.grads[name], p.grad, rtol=1e-9, atol=1e-12)


def test_zero_inner_steps_reduce_maml_to_the_multitask_gradient(model):
    params = params_of(model)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    maml = maml_task(model, params, ep, PAD, inner, 0, first_order=False)
    fomaml = maml_task(model, params, ep, PAD, inner, 0, first_order=True)
    plain = metaicl_task(model, params, TaskEpisode("t", [], ep.query), PAD)
    for name in params:
        torch.testing.assert_close(maml.grads[name], plain.grads[name], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(fomaml.grads[name], plain.grads[name], rtol=1e-10, atol=1e-13)


def test_reptile_pseudo_gradient_is_theta_minus_adapted(model):
    params = params_of(model)
    ep = episode()
    before = {n: p.detach().clone() for n, p in params.items()}
    result = reptile_task(model, params, ep, PAD, InnerOptimizer("sgd", 0.1), 2)
    ref = copy.deepcopy(model)
    batch = collate(ep.support + ep.query, PAD)
    for _ in range(2):
        mean_loss(ref, batch).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
                p.grad = None
    for name, p in ref.named_parameters():
        torch.testing.assert_close(result.grads[name], before[name] - p.detach(), rtol=1e-9, atol=1e-12)
        assert torch.equal(params[name].detach(), before[name])  # theta itself is untouched


def test_shared_adam_moments_updated_by_inner_and_outer_steps(model):
    """Documented semantics: one set of moments. Task 1's inner step updates the outer AdamW's moments and step;
    task 2's inner step starts from those; then AdamW's own step with the mean meta-gradient."""
    params = params_of(model)
    opt = filled_adamw(params)
    b1, b2, eps, inner_lr, outer_lr = 0.9, 0.999, 1e-8, 1e-2, 1e-3
    m = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    v = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in params.items()}
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    episodes = [episode(1), episode(2)]

    # reference, by hand: each task's support gradient at theta0 updates the running moments in order;
    # the adapted weights use them with bias correction at steps 4 and 5; first-order query gradients
    meta = []
    for t, ep in zip((4, 5), episodes):
        ref = copy.deepcopy(model)
        mean_loss(ref, collate(ep.support, PAD)).backward()
        g = {n: p.grad.clone() for n, p in ref.named_parameters()}
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in g}
        v = {n: b2 * v[n] + (1 - b2) * g[n] ** 2 for n in g}
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(theta0[n] - inner_lr / (1 - b1 ** t) * m[n] / (v[n].sqrt() / (1 - b2 ** t) ** 0.5 + eps))
                p.grad = None
        mean_loss(ref, collate(ep.query, PAD)).backward()
        meta.append({n: p.grad.clone() for n, p in ref.named_parameters()})
    G = {n: (meta[0][n] + meta[1][n]) / 2 for n in params}
    expect_m = {n: b1 * m[n] + (1 - b1) * G[n] for n in params}
    expect_v = {n: b2 * v[n] + (1 - b2) * G[n] ** 2 for n in params}
    expect_theta = {n: theta0[n] - outer_lr / (1 - b1 ** 6) * expect_m[n] / (expect_v[n].sqrt() / (1 - b2 ** 6) ** 0.5 + eps)
                    for n in params}

    inner = InnerOptimizer("shared-adam", inner_lr, (b1, b2), eps, shared=opt, shared_params=params)
    step_task = lambda mdl, prm, ep, pad: _maml_task(mdl, prm, ep, pad, inner, 1, True)
    meta_step(model, params, episodes, step_task, opt, PAD, shares_moments=True, max_grad_norm=0)
    for n, p in params.items():
        state = opt.state[p]
        assert int(state["step"]) == 6  # 3 before + 2 tasks x 1 inner step + 1 outer
        torch.testing.assert_close(state["exp_avg"], expect_m[n], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(state["exp_avg_sq"], expect_v[n], rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(p.detach(), expect_theta[n], rtol=1e-8, atol=1e-10)


def test_separate_adam_and_sgd_leave_outer_moments_alone(model):
    params = params_of(model)
    opt = filled_adamw(params)
    before = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    for kind in ("adam", "sgd"):
        maml_task(model, params, episode(), PAD, InnerOptimizer(kind, 1e-2, shared=opt, shared_params=params), 1,
                  first_order=False)
    for n, p in params.items():
        assert torch.equal(opt.state[p]["exp_avg"], before[n]) and int(opt.state[p]["step"]) == 3


def test_second_order_on_a_real_llama_is_finite_and_reaches_every_parameter(tiny_model_dir):
    """Fresh shared-adam state (v = 0) and zero gradients (embedding rows of unseen tokens) must not turn into
    NaN through the second-order graph; padded batches included."""
    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").train()
    params = params_of(llama)
    opt = torch.optim.AdamW(list(params.values()))
    ensure_adam_state(opt)
    g = torch.Generator().manual_seed(0)
    seq = lambda n, t: (torch.randint(0, 250, (n,), generator=g).tolist(), torch.randint(0, 250, (t,), generator=g).tolist())
    ep = TaskEpisode("t", [seq(9, 2), seq(3, 1)], [seq(5, 3), seq(12, 1)])
    result = maml_task(llama, params, ep, 258, InnerOptimizer("shared-adam", 1e-3, shared=opt, shared_params=params),
                       1, first_order=False)
    assert all(torch.isfinite(g).all() for g in result.grads.values())
    assert all(result.grads[n].abs().sum() > 0 for n in params if "embed" not in n)


@pytest.mark.parametrize("steps", [1, 2])
def test_adam_step_backward_is_finite_when_g_squared_underflows(steps):
    """float32: g = 1e-25 gives g^2 = 0, so v' = 0 while g != 0; the derivative must stay finite (it is
    bounded analytically), as must g = 0 exactly."""
    from maml_en_llm.algorithms import _AdamStep

    p = torch.ones(3, requires_grad=True)
    g = torch.tensor([1e-25, 0.0, 1.0], requires_grad=True)
    m, v = torch.zeros(3), torch.zeros(3)
    out = p
    for _ in range(steps):
        out, m, v = _AdamStep.apply(out, g * 1.0, m, v, 1e-3, 0.03, 0.9, 0.999, 1e-8)
    out.sum().backward()
    assert torch.isfinite(g.grad).all() and torch.isfinite(p.grad).all()
