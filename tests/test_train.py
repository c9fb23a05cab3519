"""The training loop end to end on a tiny random Llama: every method trains, resume is bit-identical, the run
folder is complete, and bad recipes are one-line errors."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from maml_en_llm import train as train_module
from maml_en_llm.cli import main
from maml_en_llm.config import make_config, parse_overrides
from maml_en_llm.episodes import sample_episode, sample_indices
from maml_en_llm.errors import UserError
from maml_en_llm.lm import collate, mean_loss
from maml_en_llm.train import train

SMALL = dict(steps=3, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-3, inner_lr=1e-2,
             checkpoint_every=2)


def run(tmp_path, data_dir, model_dir, name="run", resume=False, device=None, **fields):
    config = make_config(overrides={**SMALL, **fields})
    return train(config, model_name=str(model_dir), data_dir=data_dir, split="tiny", out_dir=tmp_path / name,
                 resume=resume, device=device, progress=False)


def weights(folder):
    return {n: t for n, t in load_file(folder / "model.safetensors").items()}


@pytest.mark.parametrize("method", ["metaicl", "maml", "fomaml", "reptile", "ict", "multitask0"])
def test_every_method_trains_and_changes_the_weights(tmp_path, tiny_data_dir, tiny_model_dir, method, device):
    final = run(tmp_path, tiny_data_dir, tiny_model_dir, method=method, device=str(device))
    before, after = weights(tiny_model_dir), weights(final)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["tokens"] > 0 and r["grad_norm"] > 0 and r["seconds"] > 0 and r["loss"] > 0
        assert ("query_loss" in r) == (method in ("maml", "fomaml"))
        assert "delta_w_norm" not in r  # LoRA runs only (test_lora.py)
    AutoModelForCausalLM.from_pretrained(final)  # plain transformers loads the result
    assert (tmp_path / "run" / "config.yaml").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["device"].startswith(device.type)


def first_episode(data_dir, model_dir, config):
    """The episode the loop trains on at step 0, rebuilt independently from the recipe."""
    from maml_en_llm.prompts import PromptFormat, make_tokenize
    from maml_en_llm.train import load_training_tasks

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tasks = load_training_tasks(config, data_dir, "tiny")
    return sample_episode(tasks, 0, seed=config.seed, tasks_per_step=config.tasks_per_step, k=config.demonstrations,
                          support_size=config.support_size, query_size=config.query_size,
                          tokenize=make_tokenize(tokenizer), fmt=PromptFormat(config.prompt),
                          use_instructions=config.method == "ict")


def reference_losses(model_dir, episode, method, inner_lr):
    """Per task, with plain modules: the support loss before adapting and the loss the outer update optimises
    (the query loss after one sgd inner step on the support batch for maml/fomaml; the support+query loss for
    metaicl-style methods)."""
    out = []
    for task in episode:
        model = AutoModelForCausalLM.from_pretrained(model_dir).train()
        support, query = collate(task.support, 258), collate(task.query, 258)
        support_loss = mean_loss(model, support)
        if method in ("maml", "fomaml"):
            support_loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= inner_lr * p.grad
            with torch.no_grad():
                outer = mean_loss(model, query).item()
        else:
            with torch.no_grad():
                outer = mean_loss(model, collate(task.support + task.query, 258)).item()
        out.append((support_loss.item(), outer))
    return out


@pytest.mark.parametrize("method", ["metaicl", "maml", "fomaml", "multitask0"])
def test_the_loop_adapts_on_support_and_scores_on_query(tmp_path, tiny_data_dir, tiny_model_dir, method):
    """Step 1's logged losses against an independent recomputation from the same episode: a loop that swapped
    support and query, or trained without demonstrations for metaicl (or with them for multitask0), fails.
    support_size 2 != query_size 1, so a swap changes the batches."""
    fields = dict(method=method, steps=1, support_size=2, query_size=1, inner_optimizer="sgd", inner_lr=0.5)
    run(tmp_path, tiny_data_dir, tiny_model_dir, **fields)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    config = make_config(overrides={**SMALL, **fields})
    episode = first_episode(tiny_data_dir, tiny_model_dir, config)
    expected = reference_losses(tiny_model_dir, episode, method, 0.5)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert record["loss"] == pytest.approx(mean([outer for _, outer in expected]), rel=1e-5)
    if method in ("maml", "fomaml"):
        assert record["inner_loss"] == pytest.approx(mean([inner for inner, _ in expected]), rel=1e-5)
    tokens = sum(len(c) + len(t) for task in episode for c, t in task.support + task.query)
    assert record["tokens"] == tokens


def test_multitask0_trains_without_demonstrations_and_metaicl_with_k(tmp_path, tiny_data_dir, tiny_model_dir,
                                                                     monkeypatch):
    """The instances the loop trains on are exactly MetaICL's training_sequence with 0 (multitask0) or k (metaicl)
    demonstrations from the task's pool."""
    from maml_en_llm.prompts import PromptFormat, make_tokenize, training_sequence

    seen = []
    real = train_module.sample_episode

    def spy(tasks, step, **kwargs):
        seen.append(kwargs["k"])
        return real(tasks, step, **kwargs)

    monkeypatch.setattr(train_module, "sample_episode", spy)
    for name, method in (("zero", "multitask0"), ("icl", "metaicl")):
        run(tmp_path, tiny_data_dir, tiny_model_dir, name, method=method, steps=1, k=3)
    assert seen == [0, 3]
    config = make_config(overrides={**SMALL, "method": "multitask0", "k": 3})
    tokenize = make_tokenize(AutoTokenizer.from_pretrained(tiny_model_dir))
    from maml_en_llm.train import load_training_tasks

    tasks = load_training_tasks(config, tiny_data_dir, "tiny")
    (entry, *_), = [sample_indices([len(t.pool) for t in tasks], 0, seed=config.seed,
                                   tasks_per_step=config.tasks_per_step, k=0, support_size=1, query_size=1)]
    episode = first_episode(tiny_data_dir, tiny_model_dir, config)
    target, demos = entry.support[0]
    assert demos == []
    task = tasks[entry.task]
    assert episode[0].support[0] == training_sequence(tokenize, [], task.pool[target], PromptFormat())
    zero = json.loads((tmp_path / "zero" / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    icl = json.loads((tmp_path / "icl" / "metrics.jsonl").read_text().splitlines()[0])["tokens"]
    assert zero * 2 < icl  # three demonstrations per instance more than double the tokens


def test_resume_is_bit_identical(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    fields = dict(method="maml", steps=4, checkpoint_every=2, inner_optimizer="shared-adam-chain")
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


def crash_at(monkeypatch, call):
    real_step = train_module.meta_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "meta_step", dying_step)
    return lambda: monkeypatch.setattr(train_module, "meta_step", real_step)


def test_resume_skips_a_corrupt_checkpoint_and_ends_identical(tmp_path, tiny_data_dir, tiny_model_dir, capsys,
                                                              monkeypatch):
    fields = dict(method="fomaml", steps=4, checkpoint_every=1, keep_checkpoints=3)
    reference = run(tmp_path, tiny_data_dir, tiny_model_dir, "straight", **fields)
    undo = crash_at(monkeypatch, 4)  # checkpoints of steps 1-3 exist
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", **fields)
    undo()
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000001", "step-00000002", "step-00000003"]
    (ckpts[-1] / "optimizer.pt").write_bytes(b"garbage")
    resumed = run(tmp_path, tiny_data_dir, tiny_model_dir, "r", resume=True, **fields)
    assert "step-00000003: optimizer.pt does not match its checksum" in capsys.readouterr().err
    a, b = weights(reference), weights(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)  # resumed from step 2, recomputed 3 and 4
    steps = [json.loads(l)["step"] for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_when_no_checkpoint_verifies(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    fields = dict(method="metaicl", steps=4, checkpoint_every=1, keep_checkpoints=2)
    undo = crash_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", **fields)
    undo()
    for ckpt in (tmp_path / "r" / "checkpoints").glob("step-*"):
        (ckpt / "model.safetensors").write_bytes(b"garbage")
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="none of the 2 checkpoint"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", resume=True, **fields)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics  # nothing wiped


@pytest.mark.parametrize("field, change", [("model", "other-model"), ("dtype", None), ("git_commit", "0" * 40),
                                           ("package_version", "0.0.1"), ("world_size", 8), ("split", "x")])
def test_resume_refuses_a_different_run(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch, field, change):
    fields = dict(method="metaicl", steps=2, checkpoint_every=1)
    undo = crash_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", **fields)
    undo()
    run_json = tmp_path / "r" / "run.json"
    info = json.loads(run_json.read_text())
    assert {"model", "data_dir", "split", "dtype", "world_size", "package_version", "git_commit"} <= set(info)
    if field == "dtype":  # a real mismatch through the API
        config = make_config(overrides={**SMALL, **fields})
        with pytest.raises(UserError, match="different dtype"):
            train(config, model_name=str(tiny_model_dir), data_dir=tiny_data_dir, split="tiny",
                  out_dir=tmp_path / "r", resume=True, progress=False, dtype="bfloat16")
        return
    info[field] = change  # as if recorded by another model, code version, launch or split
    run_json.write_text(json.dumps(info))
    with pytest.raises(UserError, match=f"different {field}"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, "r", resume=True, **fields)


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
    (["inner_adam_eps=0"], r"inner_adam_eps=0.0 must be > 0 \(or null for adam_eps\)"),
    (["inner_adam_eps=tiny"], "inner_adam_eps must be float, got 'tiny'"),
    (["eval_k=1.5"], "eval_k must be int, got 1.5"),
    (["lr"], "expected key=value"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(UserError, match=message):
        make_config(overrides=parse_overrides(overrides))


def test_optional_fields_take_null_or_a_value_of_their_type():
    config = make_config(overrides=parse_overrides(["inner_adam_eps=1e-4", "eval_k=3", "max_examples_per_task=null"]))
    assert (config.inner_adam_eps, config.eval_k, config.max_examples_per_task) == (1e-4, 3, None)
    assert make_config().inner_adam_eps is None


def test_yaml_recipe_and_override_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 7\nlr: 3.0e-5\nmax_examples_per_task: full\n")
    config = make_config(recipe, parse_overrides(["lr=1e-4"]), method="maml")
    assert (config.steps, config.lr, config.method, config.max_examples_per_task) == (7, 1e-4, "maml", None)
    recipe.write_text("steps: [\n")
    with pytest.raises(UserError, match=rf"{recipe}:\d+: malformed YAML"):
        make_config(recipe)


def test_pool_too_small_names_the_task(tmp_path, tiny_data_dir, tiny_model_dir):
    with pytest.raises(UserError, match="training task 'cls_a' has 9 pool examples, needs at least 10"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, k=4, max_examples_per_task=9)


def test_limited_data_caps_the_pool(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    seen = {}
    real = train_module.sample_episode

    def spy(tasks, step, **kw):
        seen.update({t.name: len(t.pool) for t in tasks})
        return real(tasks, step, **kw)

    monkeypatch.setattr(train_module, "sample_episode", spy)
    run(tmp_path, tiny_data_dir, tiny_model_dir, steps=1, max_examples_per_task=7)
    assert seen == {"cls_a": 7, "cls_b": 7, "mc_pick": 7}


@pytest.mark.parametrize("overrides, note", [
    (["method=metaicl"], "inner_adam_eps=0.0001 has no effect: metaicl takes no inner steps here"),
    (["method=maml", "inner_steps=0"], "inner_adam_eps=0.0001 has no effect: maml takes no inner steps here (inner_steps=0)"),
    (["method=fomaml", "inner_optimizer=sgd"], "inner_adam_eps=0.0001 has no effect: the inner optimizer is sgd"),
    (["method=maml", "inner_optimizer=adam"], None),
    (["method=reptile", "inner_optimizer=shared-adam-copy"], None),
])
def test_an_inner_epsilon_the_recipe_never_reads_is_noted(overrides, note):
    config = make_config(overrides=parse_overrides(["inner_adam_eps=1e-4", *overrides]))
    assert config.unused_fields() == ([note] if note else [])
    assert make_config(overrides=parse_overrides(overrides)).unused_fields() == []  # unset: nothing to say


def test_batch_tasks_trains_the_same_weights_in_one_pass_per_step(tmp_path, tiny_data_dir, tiny_model_dir, monkeypatch):
    """batch_tasks=true: one forward/backward per meta-step instead of one per task, same training up to float32
    summation order (the weights after 3 steps, the logged losses and tokens)."""
    from maml_en_llm import algorithms

    calls = []
    real = algorithms.metaicl_tasks

    def counted(model, params, episodes, pad_id):
        calls.append(len(episodes))
        return real(model, params, episodes, pad_id)

    counted.over_tasks = True
    monkeypatch.setattr(algorithms, "metaicl_tasks", counted)
    runs = {}
    for batch_tasks in ("false", "true"):
        config = make_config(overrides=parse_overrides(["method=metaicl", "steps=3", "k=1", "tasks_per_step=3",
                                                        "support_size=1", "query_size=1", "lr=1e-3",
                                                        f"batch_tasks={batch_tasks}"]))
        out = tmp_path / batch_tasks
        train(config, model_name=str(tiny_model_dir), data_dir=tiny_data_dir, split="tiny", out_dir=out,
              progress=False)
        runs[batch_tasks] = (load_file(out / "final" / "model.safetensors"),
                             [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    assert calls == [3, 3, 3]  # the batched run: one call per step, with every task of the step
    (plain, plain_metrics), (batched, batched_metrics) = runs["false"], runs["true"]
    for a, b in zip(plain_metrics, batched_metrics):
        assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name in plain:
        torch.testing.assert_close(batched[name], plain[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(plain[name], load_file(tiny_model_dir / "model.safetensors")[name]) for name in plain)


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile", "metaicl", "ict", "multitask0"])
def test_batch_tasks_is_noted_where_each_task_adapts_separately(method):
    config = make_config(overrides=parse_overrides([f"method={method}", "batch_tasks=true"]))
    adapts = method in ("maml", "fomaml", "reptile")
    assert config.unused_fields() == ([f"batch_tasks=true has no effect: {method} adapts to each task separately"]
                                      if adapts else [])


def test_train_prints_the_notes_before_training(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    code = main(["train", "--method", "metaicl", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                 "--split", "tiny", "--out", str(tmp_path / "run"), "steps=1", "k=1", "tasks_per_step=1",
                 "support_size=1", "query_size=1", "inner_adam_eps=1e-4"])
    assert code == 0
    assert "note: inner_adam_eps=0.0001 has no effect: metaicl takes no inner steps here" in capsys.readouterr().err


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


def test_learning_rate_schedule_warmup_then_linear_decay(tmp_path, tiny_data_dir, tiny_model_dir):
    from maml_en_llm.train import _schedule

    factor = _schedule(make_config(overrides={"steps": 10, "warmup_steps": 2}))
    assert [factor(s) for s in range(11)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])
    flat = _schedule(make_config(overrides={"steps": 4}))
    assert [flat(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    # the loop logs the rate each step was taken with
    run(tmp_path, tiny_data_dir, tiny_model_dir, steps=4, warmup_steps=1, lr=1e-3)
    logged = [json.loads(l)["lr"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([1e-3 / 2, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])


def test_gradient_clipping_scales_the_averaged_gradient_to_max_norm():
    from maml_en_llm.train import _clip

    params = {"a": torch.zeros(3, requires_grad=True), "b": torch.zeros(4, requires_grad=True)}
    params["a"].grad = torch.tensor([3.0, 0.0, 0.0])
    params["b"].grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    assert _clip(params, 1.0) == pytest.approx(5.0)  # the norm before clipping is what gets logged
    torch.testing.assert_close(params["a"].grad, torch.tensor([0.6, 0.0, 0.0]))
    torch.testing.assert_close(params["b"].grad, torch.tensor([0.0, 0.8, 0.0, 0.0]))
    assert _clip(params, 0) == pytest.approx(1.0)  # 0 = off: reported, untouched
    torch.testing.assert_close(params["a"].grad, torch.tensor([0.6, 0.0, 0.0]))
    assert _clip(params, 10.0) == pytest.approx(1.0)  # under the limit: untouched
    torch.testing.assert_close(params["b"].grad, torch.tensor([0.0, 0.8, 0.0, 0.0]))
    params["a"].grad[0] = float("nan")
    with pytest.raises(UserError, match="non-finite gradient norm"):
        _clip(params, 1.0)


@pytest.mark.parametrize("overrides, message", [
    (["inner_optimizer=shared-adam"], "ambiguous: choose shared-adam-copy"),
    (["method=reptile", "inner_optimizer=shared-adam-chain"], "does not fit reptile"),
])
def test_combinations_that_make_no_sense_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        make_config(overrides=parse_overrides(overrides))


def test_in_training_validation_scores_dev_files_at_step_0_and_every_n_steps(tmp_path, tiny_data_dir, tiny_model_dir):
    """validation.jsonl has a line at step 0 and every eval_every steps; its step-0 numbers equal an ordinary
    evaluation of the base model whose test files are the dev files (k-shot and zero-shot)."""
    import shutil

    from maml_en_llm.evaluate import evaluate_model

    fields = dict(method="metaicl", steps=4, eval_every=2, eval_k=2, eval_max_test=6, eval_seeds=2)
    run(tmp_path, tiny_data_dir, tiny_model_dir, **fields)
    lines = [json.loads(l) for l in (tmp_path / "run" / "validation.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [0, 2, 4]
    assert lines[0]["total_tokens"] == 0 and lines[-1]["total_tokens"] > lines[1]["total_tokens"] > 0
    assert set(lines[0]["tasks"]) == {"cls_c", "cls_d"}
    for line in lines:
        assert line["icl_gain"] == pytest.approx(line["icl"] - line["zero_shot"])

    as_test = tmp_path / "dev_as_test"
    shutil.copytree(tiny_data_dir, as_test)
    for task in ("cls_c", "cls_d"):
        for seed in (100, 13):
            shutil.copy(as_test / task / f"{task}_16_{seed}_dev.jsonl", as_test / task / f"{task}_16_{seed}_test.jsonl")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for k, key in ((2, "icl"), (0, "zero_shot")):
        result = evaluate_model(model, tokenizer, data_dir=as_test, split="tiny", k=k, seeds=[100, 13], max_test=6,
                                progress=False)
        assert lines[0][key] == pytest.approx(result["average"]["all"])
        for task in ("cls_c", "cls_d"):
            assert lines[0]["tasks"][task][key] == pytest.approx(result["tasks"][task]["mean"])


def test_validation_needs_dev_files(tmp_path, tiny_data_dir, tiny_model_dir):
    (tiny_data_dir / "cls_c" / "cls_c_16_100_dev.jsonl").unlink()
    with pytest.raises(UserError, match="cls_c_16_100_dev.jsonl: dev file not found"):
        run(tmp_path, tiny_data_dir, tiny_model_dir, eval_every=1)
    assert not (tmp_path / "run").exists()


def test_validation_reads_the_dev_file_of_the_shots_present(tiny_data_dir):
    """`data hf --shots 8` writes `_8_` files only: validation scores those instead of asking for `_16_` ones."""
    from maml_en_llm.tasks import read_examples
    from maml_en_llm.validation import load_validation

    for seed in (100, 13):
        for task in ("cls_c", "cls_d"):
            folder = tiny_data_dir / task
            (folder / f"{task}_16_{seed}_dev.jsonl").rename(folder / f"{task}_8_{seed}_dev.jsonl")
    config = make_config(None, {"eval_every": 1, "eval_seeds": 2, "eval_max_test": 3, "k": 2})
    in_context, zero_shot = load_validation(config, tiny_data_dir, "tiny")
    expected = read_examples(tiny_data_dir / "cls_c" / "cls_c_8_13_dev.jsonl", "cls_c")[:3]
    cell = next(c for c in in_context.cells if (c.task, c.seed) == ("cls_c", 13))
    assert cell.test == expected and len(cell.demonstrations) == 2 and len(zero_shot.cells) == 4


def test_compare_checks_validation_dev_files_before_training(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    (tiny_data_dir / "cls_c" / "cls_c_16_100_dev.jsonl").unlink()
    out = tmp_path / "cmp"
    code = main(["compare", "--split", "tiny", "--data-dir", str(tiny_data_dir), "--model", str(tiny_model_dir),
                 "--methods", "none,metaicl", "--steps", "1", "--k", "1", "--seeds", "100", "--out", str(out),
                 "eval_every=1"])
    assert code == 2 and "cls_c_16_100_dev.jsonl: dev file not found" in capsys.readouterr().err
    assert not out.exists()
