"""Mistakes in model and output paths, through the real CLI entry: exit code 2, one `error: ...` line, no traceback,
nothing written (see cli_checks.py); a read-only output folder; and the tokenizer without a pad token, which is
handled (pad = eos, else id 0: padding is masked) rather than refused. Also checks that there are at least 30
cases in all and that docs/reliability.md lists every one."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

import test_bad_inputs
from cli_checks import Cases, Ctx, assert_one_line_error, compare, evaluate, places, registry, train

CASES: Cases = {}
case = registry(CASES)


# ---------------------------------------------------------------- model paths

@case("model-folder-without-config")
def _(ctx):
    model = ctx.model_copy()
    (model / "config.json").unlink()
    return evaluate(ctx, model=model), [f"--model {model}", "no config.json"]


@case("model-folder-without-weights")
def _(ctx):
    model = ctx.model_copy()
    (model / "model.safetensors").unlink()
    return train(ctx, "--model", str(model)), [f"--model {model}", "no file named model.safetensors"]


@case("model-weights-corrupt")
def _(ctx):
    model = ctx.model_copy()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    return evaluate(ctx, model=model), [f"--model {model}", "cannot load it"]


@case("model-folder-without-tokenizer")
def _(ctx):
    model = ctx.model_copy()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    return evaluate(ctx, model=model), [f"--model {model}", "cannot load it"]


@case("model-not-found")
def _(ctx):
    return train(ctx, "--model", "./no-such-model"), ["--model ./no-such-model", "not a local folder"]


# ---------------------------------------------------------------- output paths

@case("out-train-is-a-file")
def _(ctx):
    ctx.out.write_text("notes")
    return train(ctx), [f"--out {ctx.out}", "is a file, not a folder"]


@case("out-compare-is-a-file")
def _(ctx):
    ctx.out.write_text("notes")
    return compare(ctx), [f"--out {ctx.out}", "is a file, not a folder"]


@case("out-eval-under-a-file")
def _(ctx):
    ctx.out.write_text("notes")
    return evaluate(ctx), [f"--out {ctx.eval_dir}", f"{ctx.out} is a file"]


@case("out-eval-is-a-file")
def _(ctx):
    ctx.eval_dir.parent.mkdir(parents=True)
    ctx.eval_dir.write_text("notes")
    return evaluate(ctx), [f"--out {ctx.eval_dir}", "is a file, not a folder"]


@case("out-train-under-a-file")
def _(ctx):
    (ctx.tmp / "runs").write_text("notes")
    argv = train(ctx)
    argv[argv.index("--out") + 1] = str(ctx.tmp / "runs" / "r1")
    return argv, [f"{ctx.tmp / 'runs'} is a file"]


@case("out-train-not-empty")
def _(ctx):
    ctx.out.mkdir()
    (ctx.out / "notes.txt").write_text("mine")
    return train(ctx), [str(ctx.out), "folder exists and is not empty"]


@case("out-train-holds-a-run")
def _(ctx):
    ctx.out.mkdir()
    (ctx.out / "config.yaml").write_text("steps: 1\n")
    return train(ctx), [str(ctx.out), "already holds a run; pass --resume"]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_path_is_one_line_and_writes_nothing(name, tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    ctx = Ctx(tmp_path, tiny_data_dir, tiny_model_dir)
    argv, needles = CASES[name](ctx)
    assert_one_line_error(capsys, argv, needles, tmp_path, case=name, places=places(ctx))


def _make_read_only(folder: Path) -> Callable[[], None] | None:
    """Make `folder` refuse new files, even for root; returns the undo, or None when this machine cannot."""
    folder.chmod(0o555)
    if not _writable(folder):
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        if not _writable(folder):
            return lambda: (subprocess.run(["chattr", "-i", str(folder)], check=True), folder.chmod(0o755))
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)
    return None


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.mark.parametrize("command", ["train", "eval", "compare"])
def test_read_only_output_folder(command, tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    ctx = Ctx(tmp_path, tiny_data_dir, tiny_model_dir)
    locked = tmp_path / "locked"
    locked.mkdir()
    undo = _make_read_only(locked)
    if undo is None:
        pytest.skip("running as root where chmod does not block writes, and chattr +i is unavailable")
    try:
        argv = {"train": train, "eval": evaluate, "compare": compare}[command](ctx)
        target = locked / ("eval" if command == "eval" else "run")
        argv[argv.index("--out") + 1] = str(target)
        assert_one_line_error(capsys, argv, [f"--out {target}", f"cannot write in {locked}"], tmp_path,
                              case=f"out-read-only-{command}", places=places(ctx))
    finally:
        undo()


# ---------------------------------------------------------------- handled, not refused


def _strip_special_tokens(model: Path, *names: str) -> None:
    """Remove pad/eos from a saved tokenizer, as some checkpoints ship it."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = model / file
        if path.exists():
            config = json.loads(path.read_text())
            for name in names:
                config.pop(name, None)
            path.write_text(json.dumps(config))


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_model_dir):
    from maml_en_llm.models import load_tokenizer

    model = Ctx(tmp_path, tmp_path, tiny_model_dir).model_copy()
    _strip_special_tokens(model, "pad_token")
    tokenizer = load_tokenizer(str(model))
    assert tokenizer.pad_token == tokenizer.eos_token == "<eos>"


def test_tokenizer_without_pad_or_eos_trains_and_evaluates_the_same(tmp_path, tiny_data_dir, tiny_model_dir):
    """Padding is masked out of attention and loss, so the id it uses cannot matter: a tokenizer with neither pad
    nor eos pads with id 0 and gives exactly the weights and scores of the same model padding with <pad>."""
    from transformers import AutoTokenizer

    from maml_en_llm.cli import main

    bare = Ctx(tmp_path, tiny_data_dir, tiny_model_dir).model_copy()
    _strip_special_tokens(bare, "pad_token", "eos_token")
    loaded = AutoTokenizer.from_pretrained(bare)
    assert loaded.pad_token is None and loaded.eos_token is None
    finals, scores = {}, {}
    for name, model in (("padded", tiny_model_dir), ("bare", bare)):
        ctx = Ctx(tmp_path / name, tiny_data_dir, model)
        assert main(train(ctx, "steps=2", method="maml")) == 0
        finals[name] = load_file(ctx.out / "final" / "model.safetensors")
        assert main(evaluate(ctx, "--batch-size", "3", model=model)) == 0
        scores[name] = json.loads(ctx.results.read_text())["tasks"]
    assert all(torch.equal(finals["padded"][n], finals["bare"][n]) for n in finals["padded"])
    assert scores["padded"] == scores["bare"]


# ---------------------------------------------------------------- coverage


def all_case_names() -> list[str]:
    return [*test_bad_inputs.CASES, *CASES, *(f"out-read-only-{c}" for c in ("train", "eval", "compare"))]


def test_there_are_at_least_30_distinct_cases():
    names = all_case_names()
    assert len(names) == len(set(names)) >= 30
    assert {"data", "split", "override", "recipe", "flag", "model", "out"} <= {n.split("-")[0] for n in names}


def test_docs_list_every_case():
    doc = (Path(__file__).parent.parent / "docs" / "reliability.md").read_text()
    missing = [name for name in all_case_names() if f"`{name}`" not in doc]
    assert not missing, f"docs/reliability.md does not list {missing}"
