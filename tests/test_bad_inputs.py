"""Every mistake in data files, split files, recipes, key=value overrides and command-line flags, through the real
CLI entry: exit code 2, one `error: ...` line naming the file, line, field or flag, no traceback, and nothing
written (see cli_checks.py). Model and output paths: test_bad_paths.py. docs/reliability.md lists each case id
with the message it produced."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cli_checks import (Cases, Ctx, assert_one_line_error, compare, evaluate, places, registry, set_line, set_record,
                        train)

CASES: Cases = {}
case = registry(CASES)


# ---------------------------------------------------------------- data files

@case("data-not-utf8")
def _(ctx):
    path = ctx.pool("cls_a")
    set_line(path, 3, b'{"task": "cls_a", "input": "caf\xe9", "output": "yes", "options": ["yes", "no"]}')
    return train(ctx), [f"{path}:3:", "not valid UTF-8", "byte 0xe9"]


@case("data-100mb-line")
def _(ctx):
    path = ctx.pool("cls_b")
    record = {"task": "cls_b", "input": "x" * (100 << 20), "output": "long", "options": ["short", "long"]}
    set_line(path, 2, json.dumps(record).encode())
    return train(ctx), [f"{path}:2:", "longer than 1 MiB"]


@case("data-malformed-json")
def _(ctx):
    path = ctx.test_file("cls_c")
    set_line(path, 1, b'{"task": "cls_c", "input": ')
    return evaluate(ctx), [f"{path}:1:", "malformed JSON"]


@case("data-missing-field")
def _(ctx):
    path = ctx.demo_file("cls_d")
    set_record(path, 1, output=...)
    return evaluate(ctx), [f"{path}:1:", "missing field 'output'"]


@case("data-field-not-string")
def _(ctx):
    path = ctx.pool("cls_a")
    set_record(path, 5, input=42)
    return train(ctx), [f"{path}:5:", "field 'input' must be a string"]


@case("data-output-not-an-option")
def _(ctx):
    path = ctx.test_file("cls_c")
    set_record(path, 2, output="maybe")
    return evaluate(ctx), [f"{path}:2:", "'maybe' is not among the options"]


@case("data-duplicate-options")
def _(ctx):
    path = ctx.test_file("cls_d")
    set_record(path, 1, options=["red", "red", "blue"], output="red")
    return evaluate(ctx), [f"{path}:1:", "duplicates ['red']"]


@case("data-task-field-mismatch")
def _(ctx):
    path = ctx.pool("mc_pick")
    set_record(path, 4, task="cls_a")
    return train(ctx), [f"{path}:4:", "does not match its folder 'mc_pick'"]


@case("data-empty-task")
def _(ctx):
    ctx.pool("cls_b").write_text("\n\n")
    return train(ctx), [str(ctx.pool("cls_b")), "no records"]


@case("data-missing-file")
def _(ctx):
    ctx.test_file("cls_d", 100).unlink()
    return evaluate(ctx), ["test task 'cls_d' has no data", "cls_d_16_100_test.jsonl"]


@case("data-one-option")
def _(ctx):
    path = ctx.test_file("cls_c")
    set_record(path, 3, options=["even"], output="even")
    return evaluate(ctx), [f"{path}:3:", "at least 2 options"]


@case("data-task-meta-malformed")
def _(ctx):
    path = ctx.data / "config" / "tasks" / "cls_c.json"
    path.write_text('{"task_type": ')
    return evaluate(ctx), [f"{path}:1:", "malformed JSON"]


@case("data-task-meta-bad-type")
def _(ctx):
    path = ctx.data / "config" / "tasks" / "cls_d.json"
    path.write_text(json.dumps({"task_type": "regression"}))
    return evaluate(ctx), [str(path), "'task_type' must be one of"]


@case("data-dir-missing")
def _(ctx):
    argv = train(ctx)
    argv[argv.index("--data-dir") + 1] = str(ctx.tmp / "no-such-data")
    return argv, [str(ctx.tmp / "no-such-data"), "data folder not found"]


@case("data-k-larger-than-demonstrations")
def _(ctx):
    argv = evaluate(ctx)
    argv[argv.index("--k") + 1] = "17"
    return argv, ["cls_c_16_100_train.jsonl", "k=17 needs a demonstration file"]


# ---------------------------------------------------------------- split files

@case("split-malformed-json")
def _(ctx):
    split = ctx.split(b'{"train": ["cls_a"],\n "test": [')
    return evaluate(ctx, split=split), [f"{split}:2:", "malformed JSON"]


@case("split-not-utf8")
def _(ctx):
    split = ctx.split(b'{"train": [], "test": ["cls_\xff"]}')
    return evaluate(ctx, split=split), [split, "not valid UTF-8"]


@case("split-not-an-object")
def _(ctx):
    split = ctx.split(["cls_a", "cls_c"])
    return evaluate(ctx, split=split), [split, "JSON object with 'train' and 'test'"]


@case("split-unknown-name")
def _(ctx):
    return evaluate(ctx, split="no_such_split"), ["--split 'no_such_split'", "no such split file"]


@case("split-missing-file")
def _(ctx):
    missing = str(ctx.tmp / "missing.json")
    return evaluate(ctx, split=missing), [missing, "split file not found"]


@case("split-duplicated-train-task")
def _(ctx):
    split = ctx.split({"train": ["cls_a", "cls_b", "cls_a"], "test": ["cls_c"]})
    return train(ctx, split=split), [split, "'train' lists 'cls_a' more than once"]


@case("split-duplicated-test-task")
def _(ctx):
    split = ctx.split({"train": ["cls_a"], "test": ["cls_c", "cls_d", "cls_c"]})
    return evaluate(ctx, split=split), [split, "'test' lists 'cls_c' more than once"]


@case("split-task-name-dotdot")
def _(ctx):
    split = ctx.split({"train": ["../cls_a"], "test": ["cls_c"]})
    return train(ctx, split=split), [split, "'../cls_a' would escape the data folder"]


@case("split-task-name-slash")
def _(ctx):
    split = ctx.split({"train": ["cls_a"], "test": ["cls_c/sub"]})
    return evaluate(ctx, split=split), [split, "'cls_c/sub' would escape the data folder"]


@case("split-task-name-not-string")
def _(ctx):
    split = ctx.split({"train": ["cls_a", 7], "test": ["cls_c"]})
    return train(ctx, split=split), [split, "task name 7 is empty or not a string"]


@case("split-train-test-overlap-train")
def _(ctx):
    split = ctx.split({"train": ["cls_a", "cls_c"], "test": ["cls_c", "cls_d"]})
    return train(ctx, split=split), [split, "['cls_c'] are in both 'train' and 'test'", "--allow-train-test-overlap"]


@case("split-train-test-overlap-compare")
def _(ctx):
    split = ctx.split({"train": ["cls_a", "cls_b", "cls_d"], "test": ["cls_c", "cls_d"]})
    return compare(ctx, split=split), [split, "['cls_d'] are in both", "--allow-train-test-overlap"]


@case("split-empty-test")
def _(ctx):
    split = ctx.split({"train": ["cls_a"], "test": []})
    return evaluate(ctx, split=split), [split, "'test' is empty"]


@case("split-empty-train")
def _(ctx):
    split = ctx.split({"train": [], "test": ["cls_c"]})
    return train(ctx, split=split), [split, "'train' is empty"]


@case("split-unseen-not-in-test")
def _(ctx):
    split = ctx.split({"train": ["cls_a"], "test": ["cls_c"], "unseen_domain_test": ["cls_d"]})
    return evaluate(ctx, split=split), [split, "['cls_d'] are not in 'test'"]


@case("split-train-task-without-data")
def _(ctx):
    split = ctx.split({"train": ["cls_a", "ghost"], "test": ["cls_c"]})
    return train(ctx, split=split), [split, "train task 'ghost' has no data"]


# ---------------------------------------------------------------- recipes and key=value overrides

@case("override-unknown-field")
def _(ctx):
    return train(ctx, "stepz=3"), ["stepz=3", "unknown recipe field 'stepz'"]


@case("override-not-numeric")
def _(ctx):
    return train(ctx, "lr=fast"), ["lr=fast", "lr must be float, got 'fast'"]


@case("override-int-given-a-float")
def _(ctx):
    return train(ctx, "steps=2.5"), ["steps=2.5", "steps must be int"]


@case("override-nan")
def _(ctx):
    return train(ctx, "max_grad_norm=nan"), ["max_grad_norm=nan", "must be a finite number"]


@case("override-infinite")
def _(ctx):
    return train(ctx, "lr=inf"), ["lr=inf", "must be a finite number"]


@case("override-negative")
def _(ctx):
    return train(ctx, "warmup_steps=-1"), ["warmup_steps=-1", "must be >= 0"]


@case("override-negative-lr")
def _(ctx):
    return train(ctx, "inner_lr=-1e-5"), ["inner_lr=-1e-05", "must be > 0"]


@case("override-zero-steps")
def _(ctx):
    return train(ctx, "steps=0"), ["steps=0", "must be at least 1"]


@case("override-bad-betas")
def _(ctx):
    return train(ctx, "adam_betas=[0.9, 1.5]"), ["adam_betas", "two numbers in [0, 1)"]


@case("override-bad-choice")
def _(ctx):
    return train(ctx, "inner_optimizer=lion"), ["inner_optimizer='lion' is not one of"]


@case("override-without-equals")
def _(ctx):
    return train(ctx, "lr"), ["argument 'lr'", "expected key=value"]


@case("recipe-missing")
def _(ctx):
    return train(ctx, "--config", str(ctx.tmp / "nope.yaml")), [str(ctx.tmp / "nope.yaml"), "recipe not found"]


@case("recipe-malformed-yaml")
def _(ctx):
    recipe = ctx.tmp / "recipe.yaml"
    recipe.write_text("steps: 3\nlr: [1e-5\n")
    return train(ctx, "--config", str(recipe)), [f"{recipe}:3:", "malformed YAML"]


@case("recipe-not-a-mapping")
def _(ctx):
    recipe = ctx.tmp / "recipe.yaml"
    recipe.write_text("- steps\n- 3\n")
    return train(ctx, "--config", str(recipe)), [str(recipe), "a recipe is a mapping"]


@case("recipe-unknown-field")
def _(ctx):
    recipe = ctx.tmp / "recipe.yaml"
    recipe.write_text("steps: 3\nlearning_rate: 1e-5\n")
    return train(ctx, "--config", str(recipe)), [str(recipe), "unknown recipe field 'learning_rate'"]


@case("k-larger-than-pool")
def _(ctx):
    return train(ctx, "max_examples_per_task=4", "k=8"), []  # task and pool size: checked below


@case("support-query-pool-too-small")
def _(ctx):
    return train(ctx, "max_examples_per_task=3", "k=0", "support_size=2", "query_size=2"), []


# ---------------------------------------------------------------- command-line flags

@case("flag-negative-k")
def _(ctx):
    argv = evaluate(ctx)
    argv[argv.index("--k") + 1] = "-1"
    return argv, ["--k must be >= 0", "got -1"]


@case("flag-repeated-seed")
def _(ctx):
    return evaluate(ctx, "--seeds", "13,13"), ["--seeds [13, 13] repeats a seed"]


@case("flag-max-test-zero")
def _(ctx):
    return evaluate(ctx, "--max-test", "0"), ["--max-test must be >= 1"]


@case("flag-batch-size-zero")
def _(ctx):
    return evaluate(ctx, "--batch-size", "0"), ["--batch-size must be >= 1"]


@case("flag-adapt-without-demonstrations")
def _(ctx):
    argv = evaluate(ctx, "--adapt-steps", "2")
    argv[argv.index("--k") + 1] = "0"
    return argv, ["--adapt-steps needs demonstrations"]


@case("flag-unknown-test-task")
def _(ctx):
    return evaluate(ctx, "--tasks", "cls_a"), ["--tasks: 'cls_a' is not a test task of split 'tiny'"]


@case("flag-unknown-device")
def _(ctx):
    return train(ctx, "--device", "tpu"), ["--device tpu"]


@case("flag-cuda-unavailable")
def _(ctx):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda is valid here")
    return evaluate(ctx, "--device", "cuda"), ["--device cuda: CUDA is not available"]


@case("flag-not-an-integer")
def _(ctx):
    argv = evaluate(ctx)
    argv[argv.index("--k") + 1] = "four"
    return argv, ["maml-en-llm eval: argument --k: invalid int value: 'four'", "see `maml-en-llm eval --help`"]


@case("flag-bad-seed-list")
def _(ctx):
    return evaluate(ctx, "--seeds", "100,x"), ["argument --seeds: expected comma-separated integers, got '100,x'"]


@case("flag-invalid-choice")
def _(ctx):
    return evaluate(ctx, "--dtype", "float8"), ["argument --dtype: invalid choice: 'float8'"]


@case("flag-unknown")
def _(ctx):
    return train(ctx, "--k", "4"), ["maml-en-llm: unrecognized arguments: --k"]


@case("flag-required-missing")
def _(ctx):
    argv = train(ctx)
    del argv[argv.index("--method"):argv.index("--method") + 2]
    return argv, ["train: no method; pass --method"]


@case("flag-compare-unknown-method")
def _(ctx):
    return compare(ctx, "--methods", "none,mamll"), ["--methods: unknown method 'mamll'"]


@case("flag-compare-bad-sweep")
def _(ctx):
    argv = compare(ctx, "--methods", "maml", "--sweep", "inner_lrr=1e-3,1e-2")
    return argv, ["--sweep inner_lrr: not a recipe field"]


@case("flag-compare-sweep-prompt")
def _(ctx):
    argv = compare(ctx, "--methods", "metaicl", "--sweep", "prompt=direct,channel")
    return argv, ["--sweep prompt: every row is evaluated with one prompt"]


@case("flag-compare-train-seeds-with-seed")
def _(ctx):
    argv = compare(ctx, "--methods", "none,metaicl", "--train-seeds", "100,13", "seed=7")
    return argv, ["seed=7: conflicts with --train-seeds"]


@case("flag-compare-jobs-with-seconds-budget")
def _(ctx):
    argv = compare(ctx, "--jobs", "4")
    at = argv.index("--steps")
    argv[at:at + 2] = ["--budget", "seconds=60"]
    return argv, ["--jobs 4 with --budget seconds"]


@case("flag-compare-train-jobs-without-jobs")
def _(ctx):
    return compare(ctx, "--train-jobs", "1"), ["--train-jobs 1:", "add --jobs N"]


@case("recipe-multitask0-random-labels")
def _(ctx):
    argv = train(ctx, "train_labels=random")
    argv[argv.index("--method") + 1] = "multitask0"
    return argv, ["train_labels", "not allowed with multitask0", "use gold"]


# ---------------------------------------------------------------- the check

@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(name, tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    ctx = Ctx(tmp_path, tiny_data_dir, tiny_model_dir)
    argv, needles = CASES[name](ctx)
    message = assert_one_line_error(capsys, argv, needles, tmp_path, case=name, places=places(ctx))
    if name in ("k-larger-than-pool", "support-query-pool-too-small"):
        # wording belongs to episodes.py; what must hold is: the task, its pool size, exit 2, nothing written
        pool = {"k-larger-than-pool": 4, "support-query-pool-too-small": 3}[name]
        assert "cls_a" in message and re.search(rf"\b{pool}\b", message), message


def test_overlap_is_accepted_with_the_flag_and_recorded(tmp_path, tiny_data_dir, tiny_model_dir):
    from maml_en_llm.cli import main

    ctx = Ctx(tmp_path, tiny_data_dir, tiny_model_dir)
    split = ctx.split({"train": ["cls_a", "cls_c"], "test": ["cls_c", "cls_d"]})
    assert main([*train(ctx, split=split), "--allow-train-test-overlap"]) == 0
    run = json.loads((ctx.out / "run.json").read_text())
    assert run["allow_train_test_overlap"] is True and run["train_test_overlap"] == ["cls_c"]
    assert main([*compare(ctx, "--methods", "metaicl", split=split), "--allow-train-test-overlap",
                 "--out", str(tmp_path / "cmp")]) == 0
    compared = json.loads(next((tmp_path / "cmp" / "runs").glob("metaicl-*/run.json")).read_text())
    assert compared["train_test_overlap"] == ["cls_c"]
