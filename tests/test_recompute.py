"""Gradient checkpointing gives the same (meta-)gradients as storing activations, for every method, second order
included. A stock checkpoint wrapper fails these tests: its replay uses the module's own weights instead of the
adapted ones that functional_call bound during the forward (transformers' `gradient_checkpointing_enable` gives a
FOMAML gradient off by about its own size on the tiny model)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from maml_en_llm import recompute
from maml_en_llm.algorithms import InnerOptimizer, ensure_adam_state, maml_task, metaicl_task, reptile_task
from maml_en_llm.config import make_config
from maml_en_llm.episodes import TaskEpisode
from maml_en_llm.errors import UserError
from maml_en_llm.lora import apply_lora
from maml_en_llm.train import train
from toy import PAD, ToyLM, collected, directional_fd, dot, episode, params_of, random_direction

EPISODE = TaskEpisode("t", [([5, 9, 13, 2, 7, 1, 99, 23, 4], [8, 9]), ([11, 12, 13], [14])],
                      [([1, 2, 3, 4, 70], [6, 6, 7]), ([40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51], [52])])


def task_gradients(model_dir, method, checkpointing, lora=False):
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    if lora:
        torch.manual_seed(0)  # the same random adapters for both runs
        model = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets="all-linear", init_weights=False)
    if checkpointing:
        assert recompute.enable(model) == 2
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if method == "metaicl":
        metaicl_task(model, params, EPISODE, 258)
    elif method == "reptile":
        reptile_task(model, params, EPISODE, 258, InnerOptimizer("sgd", 0.3), 2)
    elif method == "maml-shared-adam-copy":
        opt = torch.optim.AdamW(list(params.values()))
        ensure_adam_state(opt)
        for p in params.values():
            opt.state[p]["exp_avg_sq"].fill_(1e-4)
            opt.state[p]["step"].fill_(2)
        maml_task(model, params, EPISODE, 258, InnerOptimizer("shared-adam-copy", 1e-3, shared=opt,
                                                               shared_params=params), 2, first_order=False)
    else:
        maml_task(model, params, EPISODE, 258, InnerOptimizer("sgd", 0.3), 2, first_order=method == "fomaml")
    return {n: p.grad for n, p in params.items()}


@pytest.mark.parametrize("method, lora", [("metaicl", False), ("fomaml", False), ("reptile", False), ("maml", False),
                                          ("maml-shared-adam-copy", False), ("fomaml", True), ("maml", True)])
def test_checkpointing_gives_the_same_gradients(tiny_model_dir, method, lora):
    stored = task_gradients(tiny_model_dir, method, checkpointing=False, lora=lora)
    recomputed = task_gradients(tiny_model_dir, method, checkpointing=True, lora=lora)
    assert set(stored) == set(recomputed)
    for name in stored:
        torch.testing.assert_close(recomputed[name], stored[name], rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in stored.values())


def test_second_order_through_recomputed_layers_matches_finite_differences():
    """The float64 toy model with a stack of blocks, each recomputed: the second-order part of the meta-gradient
    against finite differences (the replay inside the support gradient is differentiated a second time)."""
    model = ToyLM(blocks=3)
    assert recompute.enable(model) == 3
    params = params_of(model)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    second = collected(maml_task)(model, params, ep, PAD, inner, 2, first_order=False)
    first = collected(maml_task)(model, params, ep, PAD, inner, 2, first_order=True)
    direction = random_direction(params)
    numeric = directional_fd(model, params, ep, inner, 2, direction)
    analytic, first_order = dot(second.grads, direction), dot(first.grads, direction)
    assert abs(analytic - first_order) > 1e-3 * abs(first_order)
    assert analytic - first_order == pytest.approx(numeric - first_order, rel=1e-5)


def test_training_with_checkpointing_ends_where_training_without_it_ends(tmp_path, tiny_data_dir, tiny_model_dir):
    fields = dict(method="maml", steps=2, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-3,
                  inner_lr=1e-2, checkpoint_every=0)
    finals = [train(make_config(overrides={**fields, "gradient_checkpointing": flag}), model_name=str(tiny_model_dir),
                    data_dir=tiny_data_dir, split="tiny", out_dir=tmp_path / str(flag), progress=False)
              for flag in (False, True)]
    plain, recomputed = (load_file(final / "model.safetensors") for final in finals)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_a_model_without_layers_is_refused():
    with pytest.raises(UserError, match="found no decoder layers"):
        recompute.enable(torch.nn.Linear(3, 3))
