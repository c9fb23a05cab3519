"""bfloat16 means autocast compute with fp32 master weights: small steps move the weights as in fp32, the loss stays
close to fp32, and float16 is refused for anything that updates weights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from maml_en_llm.algorithms import InnerOptimizer, adapt
from maml_en_llm.cli import main
from maml_en_llm.config import make_config
from maml_en_llm.episodes import TaskEpisode
from maml_en_llm.lm import collate
from maml_en_llm.precision import autocast, storage_dtype
from maml_en_llm.train import build_model, train

SMALL = dict(method="metaicl", steps=1, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-5,
             checkpoint_every=0)


def changed_fraction(after, before):
    changed = sum(int((after[n] != before[n]).sum()) for n in before)
    return changed / sum(before[n].numel() for n in before)


def test_a_small_outer_step_moves_bf16_weights_as_it_moves_fp32_weights(tmp_path, tiny_data_dir, tiny_model_dir):
    base = load_file(tiny_model_dir / "model.safetensors")
    results = {}
    for dtype in ("float32", "bfloat16"):
        final = train(make_config(overrides=SMALL), model_name=str(tiny_model_dir), data_dir=tiny_data_dir,
                      split="tiny", out_dir=tmp_path / dtype, progress=False, dtype=dtype)
        weights = load_file(final / "model.safetensors")
        loss = json.loads((tmp_path / dtype / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        results[dtype] = weights, loss
    (w32, loss32), (w16, loss16) = results["float32"], results["bfloat16"]
    assert all(w.dtype == torch.float32 for w in w16.values())  # master weights are saved, in fp32
    fraction32, fraction16 = changed_fraction(w32, base), changed_fraction(w16, base)
    assert fraction32 > 0.5 and fraction16 > 0.98 * fraction32  # bf16-stored weights: about 15% would move
    delta32 = torch.cat([(w32[n] - base[n]).flatten() for n in base])
    delta16 = torch.cat([(w16[n] - base[n]).flatten() for n in base])
    assert float((delta16 - delta32).norm() / delta32.norm()) < 0.2
    assert loss16 == pytest.approx(loss32, rel=0.01)


def test_a_small_inner_step_under_bf16_autocast_moves_the_fp32_weights(tiny_model_dir):
    """The inner update is computed in fp32 on fp32 weights; storing the weights in bf16 would lose most of it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()
    params = {n: p for n, p in model.named_parameters()}
    batch = collate([([1, 2, 3, 4, 5, 6, 7], [8, 9]), ([11, 12, 13], [14])], 258)
    moved = {}
    for dtype in ("float32", "bfloat16"):
        with autocast(dtype, "cpu"):
            adapted, loss = adapt(model, params, batch, InnerOptimizer("sgd", 1e-5), 1, differentiable=False)
        moved[dtype] = changed_fraction({n: t.detach() for n, t in adapted.items()},
                                        {n: p.detach() for n, p in params.items()})
        assert all(t.dtype == torch.float32 for t in adapted.values())
    assert moved["float32"] > 0.3 and moved["bfloat16"] > 0.95 * moved["float32"]
    stored = {n: p.detach().bfloat16() for n, p in params.items()}
    in_bf16 = {n: (stored[n].float() - 1e-5 * torch.sign(torch.randn_like(stored[n].float()))).bfloat16()
               for n in stored}
    assert changed_fraction(in_bf16, stored) < 0.5 * moved["bfloat16"]


@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_bf16_meta_gradient_stays_close_to_fp32(tiny_model_dir, method):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").train()
    params = {n: p for n, p in model.named_parameters()}
    ep = TaskEpisode("t", [([1, 2, 3, 4, 5, 6, 7], [8, 9])], [([11, 12, 13, 21, 22], [14, 15])])
    from maml_en_llm.algorithms import maml_task

    grads = {}
    for dtype in ("float32", "bfloat16"):
        for p in params.values():
            p.grad = None
        with autocast(dtype, "cpu"):
            maml_task(model, params, ep, 258, InnerOptimizer("sgd", 0.1), 1, first_order=method == "fomaml")
        grads[dtype] = torch.cat([p.grad.flatten() for p in params.values()])
    assert float((grads["bfloat16"] - grads["float32"]).norm() / grads["float32"].norm()) < 0.05


def test_lora_under_bf16_stores_the_base_in_bf16_and_adapters_in_fp32(tiny_model_dir):
    assert storage_dtype("bfloat16", lora=True) == torch.bfloat16
    assert storage_dtype("bfloat16", lora=False) == torch.float32
    config = make_config(overrides={"lora_rank": 4})
    model, _ = build_model(config, str(tiny_model_dir), "bfloat16", torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)


def test_float16_training_is_refused_in_one_line(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    code = main(["train", "--method", "metaicl", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                 "--split", "tiny", "--out", str(tmp_path / "run"), "--dtype", "float16", "steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "float16" in err and "bfloat16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_adaptation_of_a_bf16_model_keeps_fp32_master_weights(tiny_model_dir, tokenizer):
    """eval --adapt-steps on a model loaded in bfloat16: the adapted copy is fp32 and a 1e-5 step moves it as an
    fp32 model's copy moves (bf16 storage would keep most weights where they were)."""
    from maml_en_llm.adapt import adapt
    from maml_en_llm.prompts import PromptFormat
    from maml_en_llm.tasks import Example

    demos = [Example("t", f"word{i}", "yes" if i % 2 else "no", ("yes", "no")) for i in range(4)]
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        torch.manual_seed(0)
        tuned = adapt(model, tokenizer, demos, PromptFormat(), 1, 1e-5, "adam")
        assert all(p.dtype == torch.float32 for p in tuned.parameters())
        before = {n: p.detach().float() for n, p in model.named_parameters()}
        moved[dtype] = changed_fraction({n: p.detach() for n, p in tuned.named_parameters()}, before)
        assert all(p.dtype == dtype for p in model.parameters())  # the caller's model is untouched
    assert moved[torch.float32] > 0.5 and moved[torch.bfloat16] > 0.9 * moved[torch.float32]


def test_float16_adaptation_is_refused_in_one_line(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    code = main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--split", "tiny",
                 "--k", "2", "--seeds", "100", "--max-test", "2", "--adapt-steps", "1", "--dtype", "float16",
                 "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "float16" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval" / "results.json").exists()
