"""The meta-gradient math, checked on a float64 toy causal LM (tests/toy.py) against independent references."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from maml_en_llm.algorithms import (
    InnerOptimizer, adapt, ensure_adam_state, maml_task as _maml_task, metaicl_task as _metaicl_task,
    metaicl_tasks as _metaicl_tasks, reptile_task as _reptile_task, task_function,
)
from maml_en_llm.episodes import TaskEpisode
from maml_en_llm.lm import collate, mean_loss
from maml_en_llm.train import meta_step
from toy import (
    PAD, ToyLM, collected, directional_fd, dot, episode, params_of, random_direction, restore, snapshot,
)


@pytest.fixture()
def model(device):
    return ToyLM().to(device)


maml_task, metaicl_task, reptile_task = collected(_maml_task), collected(_metaicl_task), collected(_reptile_task)


def filled_adamw(params, seed=2):
    """An AdamW whose moments hold earlier history (positive second moments, step 3)."""
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, weight_decay=0.0)
    ensure_adam_state(opt)
    g = torch.Generator().manual_seed(seed)
    for p in params.values():
        state = opt.state[p]
        state["exp_avg"].copy_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) * 1e-2)
        state["exp_avg_sq"].copy_(torch.rand(p.shape, generator=g, dtype=p.dtype).to(p.device) * 1e-3 + 1e-4)
        state["step"].fill_(3)
    return opt


# Fresh Adam is nearly sign(g): smooth only where |g| >> eps, so its case uses a large eps to keep finite
# differences meaningful; the shared kinds start from moments with history, which are smooth at the default eps.
INNER_CASES = [("sgd", 0.5, 1, 1e-8), ("sgd", 0.3, 2, 1e-8), ("adam", 0.2, 1, 1e-1), ("adam", 0.2, 2, 1e-1),
               ("shared-adam-copy", 1e-2, 2, 1e-8), ("shared-adam-chain", 1e-2, 2, 1e-8)]


@pytest.mark.parametrize("kind, lr, steps, eps", INNER_CASES)
def test_second_order_part_matches_finite_differences(model, kind, lr, steps, eps):
    """The second-order part on its own: (analytic - first-order) against (finite difference - first-order),
    along a random direction. The first-order part is computed the same way in both, so this isolates the
    derivative through the inner updates (Hessian terms, and the Adam step's backward)."""
    params = params_of(model)
    ep = episode()
    shared = filled_adamw(params) if kind.startswith("shared") else None
    inner = InnerOptimizer(kind, lr, eps=eps, shared=shared, shared_params=params)
    saved = snapshot(shared) if shared else None
    second = maml_task(model, params, ep, PAD, inner, steps, first_order=False)
    if shared:
        restore(shared, saved)
    first = maml_task(model, params, ep, PAD, inner, steps, first_order=True)
    if shared:
        restore(shared, saved)
    direction = random_direction(params)
    analytic, first_order = dot(second.grads, direction), dot(first.grads, direction)
    numeric = directional_fd(model, params, ep, inner, steps, direction)
    second_part, numeric_second_part = analytic - first_order, numeric - first_order
    assert abs(second_part) > 1e-3 * abs(first_order)  # the term matters at this learning rate
    assert second_part == pytest.approx(numeric_second_part, rel=2e-5, abs=1e-10)


def test_first_order_is_the_gradient_at_the_adapted_weights(model, device):
    params = params_of(model)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    result = maml_task(model, params, ep, PAD, inner, 1, first_order=True)
    # independent reference: adapt a copy of the module by hand, then backprop the query loss normally
    ref = copy.deepcopy(model)
    support_loss = mean_loss(ref, collate(ep.support, PAD).to(device))
    support_loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
            p.grad = None
    mean_loss(ref, collate(ep.query, PAD).to(device)).backward()
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


def test_task_function_binds_each_method_to_its_rule(model):
    """maml is second order, fomaml first order, metaicl the plain gradient, reptile theta - theta_i: the loop gets
    its per-task function here, so a mix-up (maml run first order, say) fails."""
    params = params_of(model)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    got = {method: collected(task_function(method, inner, 1))(model, params, ep, PAD).grads
           for method in ("maml", "fomaml", "metaicl", "reptile")}
    expected = {"maml": maml_task(model, params, ep, PAD, inner, 1, first_order=False).grads,
                "fomaml": maml_task(model, params, ep, PAD, inner, 1, first_order=True).grads,
                "metaicl": metaicl_task(model, params, ep, PAD).grads,
                "reptile": reptile_task(model, params, ep, PAD, inner, 1).grads}
    for method, grads in got.items():
        for name in params:
            torch.testing.assert_close(grads[name], expected[method][name], rtol=0, atol=0)
    assert not torch.allclose(got["maml"]["mix.weight"], got["fomaml"]["mix.weight"])


def test_reptile_pseudo_gradient_is_theta_minus_adapted(model, device):
    params = params_of(model)
    ep = episode()
    before = {n: p.detach().clone() for n, p in params.items()}
    result = reptile_task(model, params, ep, PAD, InnerOptimizer("sgd", 0.1), 2)
    ref = copy.deepcopy(model)
    batch = collate(ep.support + ep.query, PAD).to(device)
    for _ in range(2):
        mean_loss(ref, batch).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
                p.grad = None
    for name, p in ref.named_parameters():
        torch.testing.assert_close(result.grads[name], before[name] - p.detach(), rtol=1e-9, atol=1e-12)
        assert torch.equal(params[name].detach(), before[name])  # theta itself is untouched


def test_shared_adam_chain_moments_updated_by_inner_and_outer_steps(model, device):
    """shared-adam-chain: one set of moments. Task 1's inner step updates the outer AdamW's moments and step;
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
        mean_loss(ref, collate(ep.support, PAD).to(device)).backward()
        g = {n: p.grad.clone() for n, p in ref.named_parameters()}
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in g}
        v = {n: b2 * v[n] + (1 - b2) * g[n] ** 2 for n in g}
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(theta0[n] - inner_lr / (1 - b1 ** t) * m[n] / (v[n].sqrt() / (1 - b2 ** t) ** 0.5 + eps))
                p.grad = None
        mean_loss(ref, collate(ep.query, PAD).to(device)).backward()
        meta.append({n: p.grad.clone() for n, p in ref.named_parameters()})
    G = {n: (meta[0][n] + meta[1][n]) / 2 for n in params}
    expect_m = {n: b1 * m[n] + (1 - b1) * G[n] for n in params}
    expect_v = {n: b2 * v[n] + (1 - b2) * G[n] ** 2 for n in params}
    expect_theta = {n: theta0[n] - outer_lr / (1 - b1 ** 6) * expect_m[n] / (expect_v[n].sqrt() / (1 - b2 ** 6) ** 0.5 + eps)
                    for n in params}

    inner = InnerOptimizer("shared-adam-chain", inner_lr, (b1, b2), eps, shared=opt, shared_params=params)
    step_task = lambda mdl, prm, ep, pad: _maml_task(mdl, prm, ep, pad, inner, 1, True)
    meta_step(model, params, episodes, step_task, opt, PAD, shares_moments=True, max_grad_norm=0)
    for n, p in params.items():
        state = opt.state[p]
        assert int(state["step"]) == 6  # 3 before + 2 tasks x 1 inner step + 1 outer
        torch.testing.assert_close(state["exp_avg"], expect_m[n], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(state["exp_avg_sq"], expect_v[n], rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(p.detach(), expect_theta[n], rtol=1e-8, atol=1e-10)


def test_shared_adam_copy_reads_the_outer_moments_and_leaves_them_to_the_meta_gradient(model, device):
    """shared-adam-copy: both tasks' inner steps start from the same outer moments and step count (bias correction
    at step 4); the outer AdamW then updates its moments with the mean meta-gradient alone, as plain AdamW would."""
    params = params_of(model)
    opt = filled_adamw(params)
    b1, b2, eps, inner_lr, outer_lr = 0.9, 0.999, 1e-8, 1e-2, 1e-3
    m0 = {n: opt.state[p]["exp_avg"].clone() for n, p in params.items()}
    v0 = {n: opt.state[p]["exp_avg_sq"].clone() for n, p in params.items()}
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    episodes = [episode(1), episode(2)]
    meta = []
    for ep in episodes:
        ref = copy.deepcopy(model)
        mean_loss(ref, collate(ep.support, PAD).to(device)).backward()
        with torch.no_grad():
            for n, p in ref.named_parameters():
                m = b1 * m0[n] + (1 - b1) * p.grad
                v = b2 * v0[n] + (1 - b2) * p.grad ** 2
                p.copy_(theta0[n] - inner_lr / (1 - b1 ** 4) * m / (v.sqrt() / (1 - b2 ** 4) ** 0.5 + eps))
                p.grad = None
        mean_loss(ref, collate(ep.query, PAD).to(device)).backward()
        meta.append({n: p.grad.clone() for n, p in ref.named_parameters()})
    G = {n: (meta[0][n] + meta[1][n]) / 2 for n in params}
    expect_m = {n: b1 * m0[n] + (1 - b1) * G[n] for n in params}
    expect_v = {n: b2 * v0[n] + (1 - b2) * G[n] ** 2 for n in params}
    expect_theta = {n: theta0[n] - outer_lr / (1 - b1 ** 4) * expect_m[n] / (expect_v[n].sqrt() / (1 - b2 ** 4) ** 0.5 + eps)
                    for n in params}

    inner = InnerOptimizer("shared-adam-copy", inner_lr, (b1, b2), eps, shared=opt, shared_params=params)
    step_task = lambda mdl, prm, ep, pad: _maml_task(mdl, prm, ep, pad, inner, 1, True)
    meta_step(model, params, episodes, step_task, opt, PAD, shares_moments=False, max_grad_norm=0)
    for n, p in params.items():
        state = opt.state[p]
        assert int(state["step"]) == 4  # 3 before + the outer step only
        torch.testing.assert_close(state["exp_avg"], expect_m[n], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(state["exp_avg_sq"], expect_v[n], rtol=1e-8, atol=1e-14)
        torch.testing.assert_close(p.detach(), expect_theta[n], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["sgd", "adam", "shared-adam-copy"])
def test_adam_sgd_and_shared_adam_copy_leave_every_outer_state_tensor_alone(model, kind):
    """exp_avg, exp_avg_sq and step, after maml and, on the first-order paths (fomaml, reptile), non-final inner
    steps whose private moments are updated without a graph."""
    params = params_of(model)
    opt = filled_adamw(params)
    before = snapshot(opt)
    inner = InnerOptimizer(kind, 1e-2, shared=opt, shared_params=params)
    for first_order in (True, False):
        maml_task(model, params, episode(), PAD, inner, 3, first_order=first_order)
    reptile_task(model, params, episode(), PAD, inner, 3)
    for p in params.values():
        for key, value in before[p].items():
            assert torch.equal(opt.state[p][key], value), key


def test_second_order_on_a_real_llama_equals_an_independent_hessian_vector_product(tiny_model_dir, device):
    """One sgd inner step: d/dtheta L_q(theta - a grad L_s(theta)) = g_q - a H_s g_q with g_q the query gradient
    at the adapted weights. The reference uses plain modules and a double backward on a fresh graph; the
    second-order part (maml - fomaml) must equal -a H_s g_q. Padded batches of unequal lengths included."""
    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").train().to(device)
    params = params_of(llama)
    g = torch.Generator().manual_seed(0)
    seq = lambda n, t: (torch.randint(0, 250, (n,), generator=g).tolist(), torch.randint(0, 250, (t,), generator=g).tolist())
    ep = TaskEpisode("t", [seq(9, 2), seq(3, 1)], [seq(5, 3), seq(12, 1)])
    lr = 0.5
    inner = InnerOptimizer("sgd", lr)
    second = maml_task(llama, params, ep, 258, inner, 1, first_order=False)
    first = maml_task(llama, params, ep, 258, inner, 1, first_order=True)

    adapted = copy.deepcopy(llama)
    mean_loss(adapted, collate(ep.support, 258).to(device)).backward()
    with torch.no_grad():
        for p in adapted.parameters():
            p -= lr * p.grad
            p.grad = None
    mean_loss(adapted, collate(ep.query, 258).to(device)).backward()
    g_query = {n: p.grad for n, p in adapted.named_parameters()}
    names = list(params)
    support_loss = mean_loss(llama, collate(ep.support, 258).to(device))
    support_grads = torch.autograd.grad(support_loss, [params[n] for n in names], create_graph=True)
    hvp = torch.autograd.grad(sum((sg * g_query[n]).sum() for sg, n in zip(support_grads, names)),
                              [params[n] for n in names])
    scale = max(float(h.abs().max()) for h in hvp) * lr
    for n, h in zip(names, hvp):
        torch.testing.assert_close(first.grads[n], g_query[n], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(second.grads[n] - first.grads[n], -lr * h, rtol=1e-3, atol=1e-4 * scale)
    assert scale > 1e-3  # the second-order part is not negligible here


def test_second_order_survives_a_fresh_optimizer_and_unseen_tokens(tiny_model_dir, device):
    """Fresh shared-adam state (v = 0) and zero gradients (embedding rows of unseen tokens) must not turn into
    NaN through the second-order graph."""
    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").train().to(device)
    params = params_of(llama)
    opt = torch.optim.AdamW(list(params.values()))
    ensure_adam_state(opt)
    ep = TaskEpisode("t", [([1, 2, 3, 4], [5, 6])], [([1, 2, 7], [8])])
    for kind in ("shared-adam-copy", "shared-adam-chain"):
        result = maml_task(llama, params, ep, 258, InnerOptimizer(kind, 1e-3, shared=opt, shared_params=params),
                           1, first_order=False)
        assert all(torch.isfinite(g).all() for g in result.grads.values())


def test_adam_step_backward_equals_autograd_of_the_formula():
    """The hand-written backward of the fused Adam step against torch.autograd.gradcheck in float64, for the
    one-step fast path (only the new parameters are used downstream) and the general path (m', v' used too,
    m and v themselves differentiable, as in a second inner step)."""
    from maml_en_llm.algorithms import _AdamLastStep, _AdamStep

    g = torch.Generator().manual_seed(0)
    p = torch.randn(7, generator=g, dtype=torch.float64)
    grad = torch.randn(7, generator=g, dtype=torch.float64)
    m = torch.randn(7, generator=g, dtype=torch.float64) * 0.1
    v = torch.rand(7, generator=g, dtype=torch.float64) * 0.1 + 0.01
    constants = (0.1, 0.5, 0.9, 0.999, 1e-3)
    fast = lambda p, grad: _AdamStep.apply(p, grad, m, v, *constants)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fast, (p.clone().requires_grad_(), grad.clone().requires_grad_()))
    full = lambda p, grad, m, v: _AdamStep.apply(p, grad, m, v, *constants)  # noqa: E731
    assert torch.autograd.gradcheck(full, tuple(t.clone().requires_grad_() for t in (p, grad, m, v)))
    # the last-step variant (m', v' recomputed in backward), with constant and with differentiable moments
    last = lambda p, grad, m, v: _AdamLastStep.apply(p, grad, m, v, *constants)  # noqa: E731
    assert torch.autograd.gradcheck(last, (p.clone().requires_grad_(), grad.clone().requires_grad_(), m, v))
    assert torch.autograd.gradcheck(last, tuple(t.clone().requires_grad_() for t in (p, grad, m, v)))
    torch.testing.assert_close(last(p, grad, m, v), full(p, grad, m, v)[0], rtol=0, atol=1e-15)


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that keeps the (averaged, clipped) gradient it was stepped with."""

    def step(self, closure=None):
        self.seen = {p: p.grad.clone() for group in self.param_groups for p in group["params"]}
        return super().step(closure)


@pytest.mark.parametrize("kind, lr, eps", [("sgd", 0.3, 1e-8), ("adam", 0.2, 1e-1), ("shared-adam-copy", 1e-2, 1e-8),
                                           ("shared-adam-chain", 1e-2, 1e-8)])
def test_two_task_two_step_meta_step_matches_finite_differences_of_the_objective(model, kind, lr, eps, device):
    """The gradient `meta_step` hands the outer optimizer, for two tasks and two inner steps, against finite
    differences of the whole objective F(theta) = mean_i L_query_i(theta_i(theta)). For shared-adam-chain the
    second task's starting moments are what the first task left at theta (constants, as documented: no gradient
    flows between tasks)."""
    params = params_of(model)
    episodes = [episode(1), episode(2)]
    opt = RecordingAdamW(list(params.values()), lr=1e-3, weight_decay=0.0)
    ensure_adam_state(opt)
    for p in params.values():  # earlier history, as in filled_adamw
        opt.state[p]["exp_avg_sq"].fill_(1e-3)
        opt.state[p]["exp_avg"].fill_(1e-3)
        opt.state[p]["step"].fill_(3)
    start = snapshot(opt)
    theta0 = {n: p.detach().clone() for n, p in params.items()}
    inner = InnerOptimizer(kind, lr, eps=eps, shared=opt, shared_params=params)

    # the moments each task starts from (chain: task 2 starts after task 1's inner steps at theta0)
    starts = [snapshot(opt)]
    if kind == "shared-adam-chain":
        adapt(model, params, collate(episodes[0].support, PAD).to(device), inner, 2, differentiable=False)
        starts.append(snapshot(opt))
    else:
        starts.append(starts[0])

    def objective(theta):
        total = 0.0
        for ep, state in zip(episodes, starts):
            restore(opt, state)
            adapted, _ = adapt(model, theta, collate(ep.support, PAD).to(device), inner, 2, differentiable=False)
            with torch.no_grad():
                total += mean_loss(model, collate(ep.query, PAD).to(device), adapted).item()
        return total / len(episodes)

    direction = random_direction(params)
    h = 1e-6
    plus = {n: (theta0[n] + h * direction[n]).requires_grad_() for n in params}
    minus = {n: (theta0[n] - h * direction[n]).requires_grad_() for n in params}
    numeric = (objective(plus) - objective(minus)) / (2 * h)

    restore(opt, start)
    step_task = lambda mdl, prm, ep, pad: _maml_task(mdl, prm, ep, pad, inner, 2, False)
    meta_step(model, params, episodes, step_task, opt, PAD, shares_moments=kind == "shared-adam-chain",
              max_grad_norm=0)
    analytic = sum((opt.seen[p] * direction[n]).sum() for n, p in params.items()).item()
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-10)


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


def test_batched_metaicl_gives_the_sum_of_the_per_task_losses_and_gradients(model):
    """batch_tasks: one padded batch over all tasks must equal metaicl_task task by task, also when the tasks hold
    different numbers of sequences (each task's mean keeps its own weight) and different lengths (padding)."""
    params = params_of(model)
    short = TaskEpisode("s", support=episode(3).support[:1], query=episode(3).query)  # 3 sequences, not 4
    episodes = [episode(1), short, episode(2)]
    separate = [metaicl_task(model, params, ep, PAD) for ep in episodes]
    together = collected(_metaicl_tasks)(model, params, episodes, PAD)
    assert together.tasks == 3
    assert together.tokens == sum(r.tokens for r in separate)
    assert together.loss == pytest.approx(sum(r.loss for r in separate), rel=1e-12)
    for name in params:
        torch.testing.assert_close(together.grads[name], sum(r.grads[name] for r in separate), rtol=1e-10, atol=1e-13)


def test_meta_step_hands_a_batched_task_function_all_its_tasks_at_once():
    """The loop's outer update is the same with and without batch_tasks: same averaged gradient, same step."""
    results = []
    for batch_tasks in (False, True):
        fresh = ToyLM()
        params = params_of(fresh)
        opt = torch.optim.AdamW(list(params.values()), lr=1e-2, weight_decay=0.0)
        step_task = task_function("metaicl", InnerOptimizer("sgd", 0.5), 1, batch_tasks=batch_tasks)
        stats = meta_step(fresh, params, [episode(1), episode(2), episode(4)], step_task, opt, PAD,
                          shares_moments=False, max_grad_norm=0)
        results.append((stats, {n: p.detach().clone() for n, p in params.items()}))
    (plain_stats, plain), (batched_stats, batched) = results
    assert batched_stats["tokens"] == plain_stats["tokens"]
    assert batched_stats["loss"] == pytest.approx(plain_stats["loss"], rel=1e-12)
    assert batched_stats["grad_norm"] == pytest.approx(plain_stats["grad_norm"], rel=1e-10)
    for name in plain:
        torch.testing.assert_close(batched[name], plain[name], rtol=1e-10, atol=1e-13)


def test_fresh_inner_adam_matches_torch_adam_and_starts_over_for_every_task(model, device):
    """inner_optimizer=adam against torch.optim.Adam on a copy of the module (zero moments, bias correction from
    step 1), two inner steps; a second task gets the same fresh start, not the first task's moments."""
    params = params_of(model)
    ep = episode()
    lr, betas, eps = 1e-2, (0.9, 0.999), 1e-8
    inner = InnerOptimizer("adam", lr, betas, eps)
    ref = copy.deepcopy(model)
    opt = torch.optim.Adam(ref.parameters(), lr=lr, betas=betas, eps=eps)
    for _ in range(2):
        opt.zero_grad()
        mean_loss(ref, collate(ep.support, PAD).to(device)).backward()
        opt.step()
    ref.zero_grad()
    mean_loss(ref, collate(ep.query, PAD).to(device)).backward()
    for _ in range(2):  # the same InnerOptimizer twice: each task starts from zero moments
        result = maml_task(model, params, ep, PAD, inner, 2, first_order=True)
        for name, p in ref.named_parameters():
            torch.testing.assert_close(result.grads[name], p.grad, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_inner_loss_is_the_loss_before_adapting(model, device, method):
    """TaskResult.inner_loss is the support loss at theta (reptile: support + query), before the first of
    several inner steps, not after one of them."""
    params = params_of(model)
    ep = episode()
    step_task = task_function(method, InnerOptimizer("sgd", 0.5), 3)
    result = collected(step_task)(model, params, ep, PAD)
    batch = ep.support + ep.query if method == "reptile" else ep.support
    with torch.no_grad():
        expected = mean_loss(model, collate(batch, PAD).to(device)).item()
    assert result.inner_loss == pytest.approx(expected, rel=1e-12)
