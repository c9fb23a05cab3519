"""LoRA meta-training: only adapters are learned, the second-order meta-gradient on adapters is right, and the saved
adapter reloads through peft to the same logits as the merged folder."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from maml_en_llm.algorithms import InnerOptimizer, maml_task as _maml_task
from maml_en_llm.config import make_config
from maml_en_llm.lora import apply_lora, weight_change_norm
from maml_en_llm.models import load_model_and_tokenizer
from maml_en_llm.train import train
from toy import PAD, ToyLM, collected, directional_fd, dot, episode, params_of, random_direction

maml_task = collected(_maml_task)
SMALL = dict(steps=2, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-2, inner_lr=1e-2,
             checkpoint_every=0, lora_rank=4)


def run(tmp_path, data_dir, model_dir, name="run", **fields):
    config = make_config(overrides={**SMALL, **fields})
    return train(config, model_name=str(model_dir), data_dir=data_dir, split="tiny", out_dir=tmp_path / name,
                 progress=False)


@pytest.mark.parametrize("method", ["metaicl", "maml", "fomaml", "reptile", "ict", "multitask0"])
def test_every_method_learns_only_adapter_weights(tmp_path, tiny_data_dir, tiny_model_dir, method):
    """The merged result equals the base model plus the saved adapters' delta, and every weight peft did not
    target (embeddings, norms, output head) is bit-identical to the base."""
    final = run(tmp_path, tiny_data_dir, tiny_model_dir, method=method)
    adapter = tmp_path / "run" / "adapter"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)
    base, merged = load_file(tiny_model_dir / "model.safetensors"), load_file(final / "model.safetensors")
    assert set(base) == set(merged)
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed and all(n.endswith("proj.weight") for n in changed)  # all-linear: attention and MLP only
    untouched = [n for n in base if "embed" in n or "norm" in n or "lm_head" in n]
    assert untouched and not changed & set(untouched)
    # the checkpoints and the optimizer hold adapters only
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4


def test_saved_adapter_reloads_through_peft_to_the_merged_logits(tmp_path, tiny_data_dir, tiny_model_dir):
    final = run(tmp_path, tiny_data_dir, tiny_model_dir, method="fomaml")
    adapter = tmp_path / "run" / "adapter"
    ids = torch.tensor([[5, 17, 99, 120, 3, 44]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        through_peft = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(final).eval()(ids).logits
        ours, _ = load_model_and_tokenizer(str(adapter))  # what `eval --model RUN/adapter` loads
        loaded = ours.eval()(ids).logits
        untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    torch.testing.assert_close(through_peft, merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded, merged, rtol=1e-5, atol=1e-5)
    assert (merged - untrained).abs().max() > 1e-4  # training moved the model


def distance(a: dict, b: dict) -> float:
    """The Frobenius norm of a - b over every weight of two state dicts with the same names."""
    return sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in b) ** 0.5


@pytest.mark.parametrize("method", ["metaicl", "maml"])
def test_each_step_logs_how_far_the_adapters_moved_the_model(tmp_path, tiny_data_dir, tiny_model_dir, method):
    """metrics.jsonl's delta_w_norm is ||merged - base|| of the adapters after that step: at the last step it is the
    norm of the difference between the saved merged folder and the base model, computed here from those files."""
    final = run(tmp_path, tiny_data_dir, tiny_model_dir, method=method, steps=3)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["delta_w_norm"] for r in records]
    base, merged = load_file(tiny_model_dir / "model.safetensors"), load_file(final / "model.safetensors")
    moved = distance(merged, base)
    assert moved > 1e-3
    assert norms[-1] == pytest.approx(moved, rel=1e-4)
    assert 0 < norms[0] < norms[-1] and len(set(norms)) == len(norms)  # each step's own value, growing here


def test_weight_change_norm_matches_peft_merge_with_any_scale(tiny_model_dir):
    """Against peft's own merge, on adapters with random A and B (not the zero-B start), for alpha / r and for
    rsLoRA's alpha / sqrt(r); a model without adapters gives None."""
    from peft import LoraConfig, get_peft_model

    assert weight_change_norm(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) is None
    for rslora in (False, True):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        before = {n: p.detach().clone() for n, p in base.state_dict().items()}
        config = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "down_proj"], init_lora_weights=False,
                            use_rslora=rslora)
        peft_model = get_peft_model(base, config)
        norm = weight_change_norm(peft_model)
        merged = peft_model.merge_and_unload().state_dict()
        expected = distance(merged, before)
        assert expected > 1e-3
        assert norm == pytest.approx(expected, rel=1e-5)


def test_second_order_meta_gradient_on_adapters_matches_finite_differences():
    """LoRA on the float64 toy model (random A and B so every term is non-zero): the meta-gradient with respect
    to the adapters, and its second-order part on its own, against finite differences through the inner steps."""
    model = apply_lora(ToyLM(), rank=2, alpha=4.0, dropout=0.0, targets="mix,head", task_type=None,
                       init_weights=False)
    model.double()
    params = params_of(model)
    assert params and all("lora_" in name for name in params)
    ep = episode()
    inner = InnerOptimizer("sgd", 0.5)
    second = maml_task(model, params, ep, PAD, inner, 2, first_order=False)
    first = maml_task(model, params, ep, PAD, inner, 2, first_order=True)
    direction = random_direction(params)
    numeric = directional_fd(model, params, ep, inner, 2, direction)
    analytic, first_order = dot(second.grads, direction), dot(first.grads, direction)
    assert analytic == pytest.approx(numeric, rel=1e-6)
    assert abs(analytic - first_order) > 1e-3 * abs(first_order)
    assert analytic - first_order == pytest.approx(numeric - first_order, rel=1e-4)


def test_bad_lora_targets_are_one_line_errors(tmp_path, tiny_data_dir, tiny_model_dir):
    from maml_en_llm.errors import UserError

    with pytest.raises(UserError, match="lora_targets='no_such_module'"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, lora_targets="no_such_module")
    with pytest.raises(UserError, match="lora_rank=-1 must be >= 0"):
        make_config(overrides={"lora_rank": -1})
