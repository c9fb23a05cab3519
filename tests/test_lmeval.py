"""lm-evaluation-harness interop: `export lm-eval` writes tasks whose demonstrations, separators and metric are
MetaICL's; lm-eval (run as a user would, offline) gives the same per-seed numbers as `maml-en-llm eval` on a tiny
model, loads a training run's `final/` folder, and loads a peft LoRA adapter with `peft=`."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import yaml

from maml_en_llm import lmeval_utils
from maml_en_llm.cli import main
from maml_en_llm.evaluate import evaluate_model
from maml_en_llm.metrics import accuracy, macro_f1
from maml_en_llm.prompts import PromptFormat, encode_options, make_tokenize
from maml_en_llm.tasks import load_demonstrations, load_test

SEEDS = [100, 13]


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_yaml(path):
    return yaml.load(path.read_text(), Loader=_Loader)


def export(data_dir, out, *extra):
    return main(["export", "lm-eval", "--data-dir", str(data_dir), "--split", "tiny", "--k", "4", "--seeds",
                 ",".join(map(str, SEEDS)), "--out", str(out), *extra])


def test_export_layout_demonstrations_and_option_tokens(tiny_data_dir, tiny_model_dir, tokenizer, tmp_path):
    out = tmp_path / "tasks"
    assert export(tiny_data_dir, out, "--tokenizer", str(tiny_model_dir)) == 0
    split = read_yaml(out / "metaicl_tiny.yaml")
    assert split["task"] == ["metaicl_tiny__cls_c", "metaicl_tiny__cls_d"]
    assert split["aggregate_metric_list"] == [{"metric": "metaicl", "aggregation": "mean", "weight_by_size": False}]
    assert read_yaml(out / "metaicl_tiny__cls_c.yaml")["task"] == ["metaicl_tiny__cls_c__100", "metaicl_tiny__cls_c__13"]
    task = read_yaml(out / "metaicl_tiny__cls_c__13.yaml")
    assert task["num_fewshot"] == 4 and task["fewshot_config"] == {"sampler": "first_n"}
    assert task["target_delimiter"] == "\n" and task["fewshot_delimiter"] == "\n\n\n"
    assert task["dataset_kwargs"] == {"task": "cls_c", "seed": 13}
    assert task["process_results"] == "!function utils.process_results"
    demos = [json.loads(line) for line in (out / "data" / "cls_c" / "13_train.jsonl").read_text().splitlines()]
    assert [d["input"] for d in demos[:4]] == [e.input for e in load_demonstrations(tiny_data_dir, "cls_c", 13, 4)]
    tests = [json.loads(line) for line in (out / "data" / "cls_c" / "13_test.jsonl").read_text().splitlines()]
    expected = load_test(tiny_data_dir, "cls_c", 13)
    assert [d["input"] for d in tests] == [e.input for e in expected]
    assert all(d["options"][d["label"]] == e.output for d, e in zip(tests, expected))
    tokenize = make_tokenize(tokenizer)
    assert tests[0]["option_tokens"] == [len(target) for _, target in
                                         encode_options(tokenize, expected[0], PromptFormat("direct"), is_first=False)]
    assert (out / "utils.py").read_text() == open(lmeval_utils.__file__).read()
    # the loader reads the copies next to utils.py, wherever the folder is
    moved = tmp_path / "moved"
    out.rename(moved)
    spec = __import__("importlib.util").util.spec_from_file_location("exported_utils", moved / "utils.py")
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs = module.load_docs(task="cls_c", seed=13, version=1.0)
    assert docs["test"][0]["input"] == expected[0].input and len(docs["train"]) == 16


def test_export_refuses_a_folder_that_is_not_an_export(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export(tiny_data_dir, out) == 2
    assert "not an earlier export" in capsys.readouterr().err and (out / "notes.txt").exists()
    fresh = tmp_path / "fresh"
    assert export(tiny_data_dir, fresh) == 0 and export(tiny_data_dir, fresh) == 0  # re-export replaces
    assert json.loads((fresh / "export.json").read_text())["prediction"].startswith("summed")


def test_prediction_rule_and_metric_match_metaicl():
    assert lmeval_utils.predict([-4.0, -3.0]) == 1  # summed log-likelihood
    assert lmeval_utils.predict([-4.0, -3.0], [4, 2]) == 0  # per token: -1.0 beats -1.5
    assert lmeval_utils.predict([-2.0, -2.0, -1.0], [2, 2, 1]) == 0  # ties: the first option
    rng = random.Random(0)
    for _ in range(50):
        labels = ["a", "b", "c"][: rng.randint(2, 3)]
        golds = [rng.choice(labels) for _ in range(rng.randint(1, 12))]
        preds = [rng.choice(labels) for _ in golds]
        items = [(g, p, "classification") for g, p in zip(golds, preds)]
        assert lmeval_utils.metaicl_score(items) == pytest.approx(macro_f1(preds, golds))
        items = [(g, p, "multi-choice") for g, p in zip(golds, preds)]
        assert lmeval_utils.metaicl_score(items) == pytest.approx(accuracy(preds, golds))


# ------------------------------------------------------------------ lm-eval itself, offline, as a user runs it

lm_eval = pytest.importorskip("lm_eval")


def run_lm_eval(model_args: str, include: str, group: str, out_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args,
                           "--include_path", include, "--tasks", group, "--device", "cpu", "--batch_size", "8",
                           "--output_path", str(out_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = list(out_dir.rglob("results_*.json"))
    assert len(found) == 1
    return json.loads(found[0].read_text())["results"]


def ours(model_dir, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return evaluate_model(model, AutoTokenizer.from_pretrained(model_dir), data_dir=data_dir, split="tiny", k=4,
                          seeds=SEEDS, progress=False)


def assert_same_numbers(lm_results, our_results):
    for task, entry in our_results["tasks"].items():
        for seed, value in entry["per_seed"].items():
            assert lm_results[f"metaicl_tiny__{task}__{seed}"]["metaicl,none"] == pytest.approx(value, abs=1e-9)
        assert lm_results[f"metaicl_tiny__{task}"]["metaicl,none"] == pytest.approx(entry["mean"], abs=1e-9)
    assert lm_results["metaicl_tiny"]["metaicl,none"] == pytest.approx(our_results["average"]["all"], abs=1e-9)


@pytest.mark.slow
def test_lm_eval_matches_eval_on_a_trained_run_final(tiny_model_dir, tiny_data_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "metaicl", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
                 "--split", "tiny", "--out", str(run), "--logger", "none", "steps=2", "k=1", "tasks_per_step=2",
                 "support_size=1", "query_size=1", "lr=1e-3", "checkpoint_every=0"]) == 0
    tasks = tmp_path / "tasks"
    assert export(tiny_data_dir, tasks, "--tokenizer", str(run / "final")) == 0
    results = run_lm_eval(f"pretrained={run / 'final'},dtype=float32", str(tasks), "metaicl_tiny", tmp_path / "lm")
    assert_same_numbers(results, ours(run / "final", tiny_data_dir))


@pytest.mark.slow
def test_lm_eval_loads_a_peft_lora_adapter(tiny_model_dir, tiny_data_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))  # random B: the adapter changes the model
    lora.save_pretrained(tmp_path / "adapter")
    merged = lora.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "merged")
    tasks = tmp_path / "tasks"
    assert export(tiny_data_dir, tasks, "--tokenizer", str(tiny_model_dir)) == 0
    results = run_lm_eval(f"pretrained={tiny_model_dir},peft={tmp_path / 'adapter'},dtype=float32", str(tasks),
                          "metaicl_tiny", tmp_path / "lm")
    with_adapter = ours(tmp_path / "merged", tiny_data_dir)
    assert_same_numbers(results, with_adapter)
    assert with_adapter["tasks"] != ours(tiny_model_dir, tiny_data_dir)["tasks"]  # the adapter was really applied
