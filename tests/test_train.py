"""The training loop end to end on a tiny random Llama: every method trains, resume is bit-identical, the run
folder is complete, and bad recipes are one-line errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from maml_en_llm import train as train_module
from maml_en_llm.cli import main
from maml_en_llm.config import make_config, parse_overrides
from maml_en_llm.errors import UserError
from maml_en_llm.train import train

SMALL = dict(steps=3, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-3, inner_lr=1e-2,
             checkpoint_every=2)


def run(tmp_path, data_dir, model_dir, name="run", resume=False, **fields):
    config = make_config(overrides={**SMALL, **fields})
    return train(config, model_name=str(model_dir), data_dir=data_dir, split="tiny", out_dir=tmp_path / name,
                 resume=resume, progress=False)


def weights(folder):
    return {n: t for n, t in load_file(folder / "model.safetensors").items()}


@pytest.mark.parametrize("method", ["metaicl", "maml", "fomaml", "reptile", "ict", "multitask0"])
def test_every_method_trains_and_changes_the_weights(tmp_path, tiny_data_dir, tiny_model_dir, method):
    final = run(tmp_path, tiny_data_dir, tiny_model_dir, method=method)
    before, after = weights(tiny_model_dir), weights(final)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["tokens"] > 0 and r["grad_norm"] > 0 and r["seconds"] > 0 and r["loss"] > 0
        assert ("query_loss" in r) == (method in ("maml", "fomaml"))
    AutoModelForCausalLM.from_pretrained(final)  # plain transformers loads the result
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "run.json").exists()


def test_multitask0_uses_no_demonstrations_and_metaicl_does(tmp_path, tiny_data_dir, tiny_model_dir):
    run(tmp_path, tiny_data_dir, tiny_model_dir, "zero", method="multitask0")
    run(tmp_path, tiny_data_dir, tiny_model_dir, "icl", method="metaicl")
    tokens = lambda name: json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    assert tokens("zero") < tokens("icl")


def test_resume_is_bit_identical(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    fields = dict(method="maml", steps=4, checkpoint_every=2, inner_optimizer="shared-adam")
    reference = run(tmp_path, tiny_data_dir, tiny_model_dir, "straight", **fields)

    real_step = train_module.meta_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # step 3 of 4, after the checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "meta_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "interrupted", **fields)
    monkeypatch.setattr(train_module, "meta_step", real_step)
    assert not (tmp_path / "interrupted" / "final").exists()
    resumed = run(tmp_path, tiny_data_dir, tiny_model_dir, "interrupted", resume=True, **fields)
    a, b = weights(reference), weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    lines = lambda name: [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in rs]
    assert strip(lines("interrupted")) == strip(lines("straight"))


def test_resume_skips_a_corrupt_checkpoint(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    fields = dict(method="metaicl", steps=4, checkpoint_every=1, keep_checkpoints=3)
    run(tmp_path, tiny_data_dir, tiny_model_dir, "r", **fields)
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000003", "step-00000004"]
    (ckpts[-1] / "optimizer.pt").write_bytes(b"garbage")
    from maml_en_llm.checkpoint import latest_valid
    assert latest_valid(tmp_path / "r") == ckpts[-2]
    assert "optimizer.pt does not match its checksum" in capsys.readouterr().err


def test_existing_run_needs_resume_and_same_recipe(tmp_path, tiny_data_dir, tiny_model_dir):
    run(tmp_path, tiny_data_dir, tiny_model_dir, "r", steps=1)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", steps=1)
    (tmp_path / "r" / "final" / "config.json").unlink()
    with pytest.raises(UserError, match=r"different recipe \(steps changed\)"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", resume=True, steps=2)


@pytest.mark.parametrize("overrides, message", [
    (["stepz=3"], "unknown recipe field 'stepz'"),
    (["steps=three"], "steps must be int"),
    (["inner_optimizer=lion"], "inner_optimizer='lion' is not one of"),
    (["steps=0"], "steps=0 must be at least 1"),
    (["lr"], "expected key=value"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(UserError, match=message):
        make_config(overrides=parse_overrides(overrides))


def test_yaml_recipe_and_override_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 7\nlr: 3.0e-5\nmax_examples_per_task: full\n")
    config = make_config(recipe, parse_overrides(["lr=1e-4"]), method="maml")
    assert (config.steps, config.lr, config.method, config.max_examples_per_task) == (7, 1e-4, "maml", None)
    recipe.write_text("steps: [\n")
    with pytest.raises(UserError, match=rf"{recipe}:\d+: malformed YAML"):
        make_config(recipe)


def test_pool_too_small_names_the_task(tmp_path, tiny_data_dir, tiny_model_dir):
    with pytest.raises(UserError, match="training task 'cls_a' has 3 pool examples, needs 5"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, k=4, max_examples_per_task=3)


def test_limited_data_caps_the_pool(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    seen = {}
    real = train_module.sample_episode

    def spy(tasks, step, **kw):
        seen.update({t.name: len(t.pool) for t in tasks})
        return real(tasks, step, **kw)

    monkeypatch.setattr(train_module, "sample_episode", spy)
    run(tmp_path, tiny_data_dir, tiny_model_dir, steps=1, max_examples_per_task=6)
    assert seen == {"cls_a": 6, "cls_b": 6, "mc_pick": 6}


def test_cli_train_end_to_end(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    code = main(["train", "--method", "fomaml", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                 "--split", "tiny", "--out", str(tmp_path / "cli"), "steps=2", "k=1", "tasks_per_step=2",
                 "support_size=1", "query_size=1"])
    assert code == 0 and (tmp_path / "cli" / "final" / "model.safetensors").exists()
    code = main(["train", "--method", "maml", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                 "--split", "tiny", "--out", str(tmp_path / "bad"), "inner_steps=-1"])
    assert code == 2 and "inner_steps=-1 must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_every_packaged_recipe_parses():
    from maml_en_llm.config import packaged_recipes

    names = packaged_recipes()
    assert {"metaicl", "maml", "fomaml", "reptile", "ict", "multitask0", "cpu-demo"} <= set(names)
    for name in names:
        config = make_config(name)
        if name in ("metaicl", "maml", "fomaml", "reptile", "ict", "multitask0"):
            assert config.method == name
    with pytest.raises(UserError, match="recipe not found"):
        make_config("no-such-recipe")
