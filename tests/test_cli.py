"""The command line: one meaning per flag, the training method resolved from --method/--config/method= (conflicts
refused), --version, the user-facing --help, `recipes`, `--out` always a folder, provenance in results.json, and k
taken from the demonstration files present."""

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import yaml

from maml_en_llm import __version__
from maml_en_llm.cli import build_parser, main
from maml_en_llm.config import TrainConfig, packaged_recipes
from maml_en_llm.recipe_help import field_docs
from maml_en_llm.tasks import load_demonstrations, load_test

TINY_RECIPE = ["steps=1", "k=1", "tasks_per_step=1", "support_size=1", "query_size=1", "checkpoint_every=0"]


def train_args(model_dir, data_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--out", str(out),
            *extra]


def test_version_and_module_entry_point(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"maml-en-llm {__version__}"
    done = subprocess.run([sys.executable, "-m", "maml_en_llm", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"maml-en-llm {__version__}"


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Meta-train causal language models" in text and "typical use:" in text
    for command in ("data", "train", "eval", "compare", "recipes", "export"):
        assert command in text
    assert "argument parsing only" not in text and "UserError" not in text  # not the developer docstring


def test_flags_are_never_abbreviated(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["compare", "--split", "x", "--out", "o", "--meth", "maml"])
    assert stop.value.code == 2


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_old_method_flag_for_the_scoring_direction_says_prompt(command, tmp_path, capsys):
    argv = [command, "--split", "tiny", "--out", str(tmp_path / "o"), "--method", "channel"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --method channel") and "--prompt direct|channel" in err
    assert not (tmp_path / "o").exists()


def test_prompt_flag_reaches_the_evaluation(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--split", "tiny", "--k", "1",
            "--seeds", "100", "--max-test", "2", "--prompt", "channel", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["prompt"] == "channel"
    prov = results["provenance"]
    assert prov["package_version"] == __version__ and prov["device"] == "cpu"
    import torch
    import transformers

    assert prov["torch"] == torch.__version__ and prov["transformers"] == transformers.__version__
    assert "git_commit" in prov


def test_eval_out_is_a_folder_not_a_file(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    argv = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--split", "tiny", "--k", "1",
            "--seeds", "100", "--out", str(existing)]
    assert main(argv) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and existing.read_text() == "{}"


# ------------------------------------------------------------------ the training method


def test_recipe_method_is_used_without_method_flag(tiny_model_dir, tiny_data_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: fomaml\ninner_steps: 1\n")
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--config", str(recipe), *TINY_RECIPE,
                           "eval_every=1", "eval_max_test=2")) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "fomaml"
    # the default logger mirrors metrics.jsonl into TensorBoard event files next to it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == \
        [(m["step"], m["loss"]) for m in metrics]
    assert "train/inner_loss" in events.Tags()["scalars"]
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("validation/icl")] == \
        [(v["step"], v["icl"]) for v in validation]


@pytest.mark.parametrize("extra,needle", [
    (["--config", "maml", "--method", "metaicl"], "--config maml says maml, --method says metaicl"),
    (["--method", "maml", "method=fomaml"], "--method says maml, method=fomaml says fomaml"),
    ([], "no method; pass --method"),
    (["--config", "cpu-demo"], "no method"),  # cpu-demo leaves the method to the user
])
def test_train_method_conflicts_and_absence_are_errors(tiny_model_dir, tiny_data_dir, tmp_path, capsys, extra,
                                                       needle):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, *extra, *TINY_RECIPE)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert not out.exists()


def test_matching_method_flag_and_recipe_agree(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--config", "metaicl", "--method", "metaicl",
                           "--logger", "none", *TINY_RECIPE)) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "metaicl"
    assert not list(out.glob("events.out.tfevents*"))  # --logger none


def test_wandb_logger_without_wandb_is_one_line_before_loading(tiny_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    out = tmp_path / "run"
    argv = train_args(tmp_path / "no-model-needed", tiny_data_dir, out, "--method", "metaicl", "--logger", "wandb")
    assert main(argv) == 2
    assert "wandb is not installed" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------ recipes


def test_recipes_lists_every_packaged_recipe(capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    for name in packaged_recipes():
        assert f"  {name} " in listed
    assert "Second order" in listed or "second order" in listed  # each with its first comment line


def test_recipes_show_prints_every_field_with_its_meaning(capsys):
    assert main(["recipes", "show", "maml"]) == 0
    text = capsys.readouterr().out
    docs = field_docs()
    for f in dataclasses.fields(TrainConfig):
        line = next(line for line in text.splitlines() if line.startswith(f"{f.name}:"))
        assert docs[f.name] in line
    assert next(l for l in text.splitlines() if l.startswith("method:")).split("#")[1].startswith("*")
    assert next(l for l in text.splitlines() if l.startswith("seed:")).split("#")[1].startswith(" ")
    assert main(["recipes", "show", "no-such-recipe"]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_every_recipe_field_is_documented():
    undocumented = [name for name, doc in field_docs().items() if not doc]
    assert not undocumented, f"add a comment to these TrainConfig fields: {undocumented}"


def test_field_docs_reads_metadata_trailing_and_preceding_comments():
    @dataclass
    class Example:
        a: int = 1  # trailing
        # above, first line
        # above, second line
        b: str = "x"
        c: float = field(default=0.5, metadata={"help": "from metadata"})  # ignored comment
        d: tuple[int, int] = (
            1, 2)  # on the last line
        e: int = 0

    assert field_docs(Example) == {"a": "trailing", "b": "above, first line above, second line",
                                   "c": "from metadata", "d": "on the last line", "e": ""}


# ------------------------------------------------------------------ k from the files present


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_k_uses_the_smallest_demonstration_file_big_enough(tiny_data_dir, capsys):
    task = tiny_data_dir / "cls_c"
    big = [{"task": "cls_c", "input": f"w{i}", "output": "even", "options": ["even", "odd"]} for i in range(32)]
    _write(task / "cls_c_32_13_train.jsonl", big)
    _write(task / "cls_c_64_13_train.jsonl", big[::-1] * 2)
    sixteen = [json.loads(line) for line in (task / "cls_c_16_13_train.jsonl").read_text().splitlines()]
    assert [e.input for e in load_demonstrations(tiny_data_dir, "cls_c", 13, 16)] == [r["input"] for r in sixteen]
    assert [e.input for e in load_demonstrations(tiny_data_dir, "cls_c", 13, 20)] == [f"w{i}" for i in range(20)]
    assert len(load_demonstrations(tiny_data_dir, "cls_c", 13, 64)) == 64
    from maml_en_llm.errors import UserError

    with pytest.raises(UserError, match=r"cls_c_64_13_train.jsonl: k=65 .* largest .* holds 64"):
        load_demonstrations(tiny_data_dir, "cls_c", 13, 65)
    # seed 100 has the 16384 pool, which is never a demonstration file
    with pytest.raises(UserError, match=r"cls_c_16_100_train.jsonl: k=17 .* holds 16"):
        load_demonstrations(tiny_data_dir, "cls_c", 100, 17)


def test_test_file_is_the_16_one_else_the_smallest_present(tiny_data_dir):
    task = tiny_data_dir / "cls_c"
    expected = [json.loads(line)["input"] for line in (task / "cls_c_16_13_test.jsonl").read_text().splitlines()]
    (task / "cls_c_16_13_test.jsonl").rename(task / "cls_c_32_13_test.jsonl")
    assert [e.input for e in load_test(tiny_data_dir, "cls_c", 13)] == expected


@pytest.mark.parametrize("name", packaged_recipes())
def test_every_packaged_recipe_shows(name, capsys):
    assert main(["recipes", "show", name]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(shown) == len(dataclasses.fields(TrainConfig))


def test_compare_refuses_a_prompt_override_and_names_the_flag(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    argv = ["compare", "--split", "tiny", "--data-dir", str(tiny_data_dir), "--model", str(tiny_model_dir),
            "--methods", "none,metaicl", "--out", str(tmp_path / "cmp"), "prompt=channel"]
    assert main(argv) == 2
    assert "use --prompt" in capsys.readouterr().err and not (tmp_path / "cmp").exists()
