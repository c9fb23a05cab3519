"""`eval` end to end on the tiny model and data: which demonstrations each seed gets, the metric pipeline,
results.json, bad inputs (exit 2, nothing written) and adaptation (original weights untouched, loss goes down)."""

import json
import shutil

import pytest
import torch

from maml_en_llm import evaluate
from maml_en_llm.adapt import adapt, adaptation_sequences, demonstration_loss
from maml_en_llm.cli import main
from maml_en_llm.errors import UserError
from maml_en_llm.metrics import macro_f1
from maml_en_llm.prompts import PromptFormat, encode_prefix, make_tokenize
from maml_en_llm.tasks import Example


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RecordingScorer:
    """Stands in for `score_options`: records its arguments and returns losses that favour `choose(example)`."""

    def __init__(self, choose):
        self.calls, self.choose = [], choose

    def __call__(self, model, tokenizer, prefix_ids, k, examples, fmt, batch_size, **_):
        self.calls.append({"prefix": list(prefix_ids), "k": k, "examples": list(examples), "fmt": fmt,
                           "batch_size": batch_size})
        return [[0.0 if option == self.choose(e) else 1.0 for option in e.options] for e in examples]


def test_each_seed_uses_its_first_k_demonstrations_for_all_test_examples(monkeypatch, tokenizer, tiny_data_dir):
    scorer = RecordingScorer(lambda e: e.output)
    monkeypatch.setattr(evaluate, "score_options", scorer)
    results = evaluate.evaluate_model(torch.nn.Linear(1, 1), tokenizer, data_dir=tiny_data_dir, split="tiny", k=3,
                                      seeds=[21, 87], method="channel", max_test=5, batch_size=7, progress=False)
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat("channel")
    assert [(c["examples"][0].task, len(c["examples"])) for c in scorer.calls] == \
        [("cls_c", 5), ("cls_c", 5), ("cls_d", 5), ("cls_d", 5)]  # one call per (task, seed): a shared prefix
    for call, (task, seed) in zip(scorer.calls, [("cls_c", 21), ("cls_c", 87), ("cls_d", 21), ("cls_d", 87)]):
        demos = [Example(r["task"], r["input"], r["output"], tuple(r["options"])) for r in read_jsonl(tiny_data_dir / task / f"{task}_16_{seed}_train.jsonl")[:3]]
        tests = read_jsonl(tiny_data_dir / task / f"{task}_16_{seed}_test.jsonl")[:5]
        assert call["prefix"] == encode_prefix(tokenize, demos, fmt)
        assert [e.input for e in call["examples"]] == [r["input"] for r in tests]
        assert call["k"] == 3 and call["fmt"] == fmt and call["batch_size"] == 7
    assert scorer.calls[0]["prefix"] != scorer.calls[1]["prefix"]
    # gold always chosen: 100 everywhere
    assert results["tasks"]["cls_c"]["per_seed"] == {"21": 100.0, "87": 100.0}
    assert results["average"] == {"all": 100.0, "unseen_domain": 100.0, "worst_all": 100.0,
                                  "worst_unseen_domain": 100.0, "n_tasks": 2, "unseen_domain_tasks": ["cls_d"]}


def test_zero_shot_metrics_and_averages(monkeypatch, tokenizer, tiny_data_dir):
    scorer = RecordingScorer(lambda e: e.options[0])  # always the first option
    monkeypatch.setattr(evaluate, "score_options", scorer)
    results = evaluate.evaluate_model(torch.nn.Linear(1, 1), tokenizer, data_dir=tiny_data_dir, split="tiny", k=0,
                                      seeds=[100, 13], progress=False)
    assert all(call["prefix"] == [] and call["k"] == 0 for call in scorer.calls)
    expected = {}
    for task in ("cls_c", "cls_d"):
        per_seed = {}
        for seed in (100, 13):
            tests = read_jsonl(tiny_data_dir / task / f"{task}_16_{seed}_test.jsonl")
            per_seed[str(seed)] = macro_f1([r["options"][0] for r in tests], [r["output"] for r in tests])
        expected[task] = per_seed
        entry = results["tasks"][task]
        assert entry["metric"] == "macro_f1" and entry["per_seed"] == pytest.approx(per_seed)
        assert entry["mean"] == pytest.approx(sum(per_seed.values()) / 2)
        assert entry["worst"] == pytest.approx(min(per_seed.values()))
        assert entry["n_test"] == {"100": 12, "13": 12}
    means = {t: sum(v.values()) / 2 for t, v in expected.items()}
    assert results["average"]["all"] == pytest.approx((means["cls_c"] + means["cls_d"]) / 2)
    assert results["average"]["unseen_domain"] == pytest.approx(means["cls_d"])


def test_tasks_subset_outside_unseen_domain_gives_null_average(monkeypatch, tokenizer, tiny_data_dir):
    monkeypatch.setattr(evaluate, "score_options", RecordingScorer(lambda e: e.output))
    results = evaluate.evaluate_model(torch.nn.Linear(1, 1), tokenizer, data_dir=tiny_data_dir, split="tiny", k=1,
                                      seeds=[42], tasks=["cls_c"], progress=False)
    assert list(results["tasks"]) == ["cls_c"] and results["average"]["unseen_domain"] is None


def test_real_scoring_leaves_model_unchanged(model, tokenizer, tiny_data_dir):
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    results = evaluate.evaluate_model(model, tokenizer, data_dir=tiny_data_dir, split="tiny", k=2, seeds=[13],
                                      max_test=3, progress=False)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert 0.0 <= results["tasks"]["cls_d"]["mean"] <= 100.0
    assert results["scoring"]["sequences"] == 3 * 2 + 3 * 3


def eval_args(tiny_model_dir, data_dir, out, *extra):
    return ["eval", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--k", "2",
            "--seeds", "100,13", "--max-test", "4", "--batch-size", "5", "--out", str(out), *extra]


def test_cli_end_to_end_with_adaptation(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"  # --out is a folder; results.json goes into it
    argv = eval_args(tiny_model_dir, tiny_data_dir, out, "--adapt-steps", "2", "--adapt-lr", "1e-3")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("model", "k", "prompt", "seeds", "split", "data_dir", "max_test", "tasks", "average", "command",
                "hardware", "wall_seconds", "adapted", "adaptation", "scoring"):
        assert key in results, key
    assert results["command"] == "maml-en-llm " + " ".join(argv)
    assert results["seeds"] == [100, 13] and results["k"] == 2 and results["prompt"] == "direct"
    assert results["hardware"]["device"] == "cpu" and results["hardware"]["torch"] == torch.__version__
    for block in (results, results["adapted"]):
        assert set(block["tasks"]) == {"cls_c", "cls_d"}
        for entry in block["tasks"].values():
            assert {"metric", "per_seed", "mean", "worst", "n_test"} <= set(entry)
            assert set(entry["per_seed"]) == {"100", "13"}
        assert block["average"]["all"] is not None and block["average"]["unseen_domain"] is not None
    assert results["adaptation"]["steps"] == 2 and results["adaptation"]["optimizer"] == "adam"
    loss = results["adapted"]["tasks"]["cls_c"]["demo_loss"]
    assert all(loss["after"][s] < loss["before"][s] for s in ("100", "13"))
    printed = capsys.readouterr().out
    assert "average (all)" in printed and "cls_d" in printed and "Adapted (2 steps" in printed


@pytest.mark.parametrize("extra,needle", [
    (["--tasks", "cls_c,nope"], "'nope'"),
    (["--tasks", "cls_a"], "'cls_a'"),  # a train task, not a test task
    (["--k", "17"], "k=17 needs a demonstration file"),
    (["--adapt-steps", "1", "--k", "0"], "--adapt-steps"),
    (["--seeds", "7"], "7"),
])
def test_bad_inputs_exit_2_and_write_nothing(tiny_model_dir, tiny_data_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    assert main(eval_args(tiny_model_dir, tiny_data_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not out.exists()


def test_missing_data_dir_exits_2(tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(eval_args(tiny_model_dir, tmp_path / "absent", out)) == 2
    assert "data bigbench" in capsys.readouterr().err and not out.exists()
    # the default data dir (inside the cache) is missing too
    monkeypatch.setenv("MAML_EN_LLM_CACHE", str(tmp_path / "cache"))
    argv = [a for a in eval_args(tiny_model_dir, "x", out) if a not in ("--data-dir", "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "data bigbench" in err and str(tmp_path / "cache") in err and not out.exists()


def test_adapt_lowers_demo_loss_and_never_touches_the_original(model, tokenizer, tiny_data_dir):
    from maml_en_llm.tasks import load_demonstrations

    demos = load_demonstrations(tiny_data_dir, "cls_c", 100, 4)
    fmt = PromptFormat("direct")
    snapshot = {name: p.detach().clone() for name, p in model.state_dict().items()}
    before = demonstration_loss(model, tokenizer, demos, fmt)
    for optimizer, lr in (("adam", 1e-3), ("sgd", 0.5)):
        torch.manual_seed(0)
        tuned = adapt(model, tokenizer, demos, fmt, steps=5, lr=lr, optimizer=optimizer)
        assert tuned is not model and not tuned.training
        assert demonstration_loss(tuned, tokenizer, demos, fmt) < before - 0.05, optimizer
        assert any(not torch.equal(snapshot[n], p) for n, p in tuned.state_dict().items())
    assert all(torch.equal(snapshot[n], p) for n, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert demonstration_loss(model, tokenizer, demos, fmt) == before


def test_adaptation_instances_hold_out_each_demo_in_file_order(tokenizer):
    from maml_en_llm.prompts import training_sequence

    demos = [Example("t", w, "x", ("x", "y")) for w in ("aa", "bb", "cc")]
    tokenize = make_tokenize(tokenizer)
    fmt = PromptFormat("direct")
    assert adaptation_sequences(tokenize, demos, fmt) == [
        training_sequence(tokenize, [demos[1], demos[2]], demos[0], fmt),
        training_sequence(tokenize, [demos[0], demos[2]], demos[1], fmt),
        training_sequence(tokenize, [demos[0], demos[1]], demos[2], fmt),
    ]


# --- MetaICL parity: format choice, BOS, empty inputs, missing task metadata -----------------------------------


class FakeModel(torch.nn.Linear):
    """A stand-in model with the config fields the format choice reads."""

    def __init__(self, model_type, source=""):
        super().__init__(1, 1)
        from types import SimpleNamespace

        self.config = SimpleNamespace(model_type=model_type, _name_or_path=source)


def test_format_auto_is_metaicls_choice(monkeypatch, tokenizer, tiny_data_dir, tmp_path):
    run_final = tmp_path / "run" / "final"
    run_final.mkdir(parents=True)
    (run_final.parent / "run.json").write_text("{}")
    for model, requested, expected in ((FakeModel("gpt2"), "auto", "space"), (FakeModel("llama"), "auto", "newline"),
                                       (FakeModel("gpt2", str(run_final)), "auto", "newline"),
                                       (FakeModel("gpt2", str(tmp_path)), "auto", "space"),
                                       (FakeModel("gpt2"), "newline", "newline"), (FakeModel("llama"), "space", "space")):
        scorer = RecordingScorer(lambda e: e.output)
        monkeypatch.setattr(evaluate, "score_options", scorer)
        results = evaluate.evaluate_model(model, tokenizer, data_dir=tiny_data_dir, split="tiny", k=1, seeds=[13],
                                          tasks=["cls_c"], format=requested, progress=False)
        assert results["format"] == expected and scorer.calls[0]["fmt"].name == expected, (model.config, requested)
        assert evaluate.resolve_format(model, requested) == expected


def test_bos_where_the_tokenizer_adds_one(monkeypatch, tiny_data_dir):
    from test_prompts import bos_adding_tokenizer

    tokenizer = bos_adding_tokenizer()
    for bos, expected in (("auto", 257), ("yes", 257), ("no", None)):
        scorer = RecordingScorer(lambda e: e.output)
        monkeypatch.setattr(evaluate, "score_options", scorer)
        results = evaluate.evaluate_model(FakeModel("gemma3_text"), tokenizer, data_dir=tiny_data_dir, split="tiny",
                                          k=2, seeds=[13], tasks=["cls_c"], bos=bos, progress=False)
        assert scorer.calls[0]["fmt"].bos_id == expected and results["bos"] is (expected is not None)
        assert (scorer.calls[0]["prefix"][0] == 257) is (expected is not None)
    # the same format reaches the adaptation (training) sequences
    demos = [Example("t", w, "x", ("x", "y")) for w in ("aa", "bb")]
    for context, _ in adaptation_sequences(make_tokenize(tokenizer), demos, PromptFormat("direct", bos_id=257)):
        assert context[0] == 257 and context.count(257) == 1


def test_empty_inputs_and_missing_task_metadata_warn_and_evaluate(model, tokenizer, tiny_data_dir, capsys):
    path = tiny_data_dir / "cls_c" / "cls_c_16_13_test.jsonl"
    records = read_jsonl(path)
    records[1]["input"] = ""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tiny_data_dir / "config" / "tasks" / "cls_c.json").unlink()
    results = evaluate.evaluate_model(model, tokenizer, data_dir=tiny_data_dir, split="tiny", k=2, seeds=[13],
                                      tasks=["cls_c"], max_test=3, progress=False)
    err = capsys.readouterr().err
    assert f"warning: {path}:2: 1 record(s) with an empty input" in err
    assert "cls_c.json not found; task type guessed as 'classification'" in err and "macro_f1" in err
    assert results["tasks"]["cls_c"]["task_type"] == "classification" and results["tasks"]["cls_c"]["n_test"] == {"13": 3}


def test_cli_format_bos_and_scoring_counts(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert main(eval_args(tiny_model_dir, tiny_data_dir, out, "--format", "space", "--bos", "no")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "space" and results["bos"] is False
    scoring = results["scoring"]
    assert 0 < scoring["tokens_processed"] < scoring["unique_tokens"] < scoring["tokens"]
    other = tmp_path / "other"
    assert main(eval_args(tiny_model_dir, tiny_data_dir, other, "--bos", "yes")) == 2  # the tokenizer has no BOS
    assert not (other / "results.json").exists()


def test_demo_label_diagnostics_relabel_demonstrations_and_for_symbols_the_test_too(tiny_data_dir):
    from maml_en_llm.evaluate import load_eval_data, with_demo_labels
    from maml_en_llm.labels import SYMBOLS

    data = load_eval_data(tiny_data_dir, "tiny", 8, [100, 13], max_test=5)
    same, applied = with_demo_labels(data, "gold")
    assert same is data and all(applied.values())
    rand, _ = with_demo_labels(data, "random")
    assert rand == with_demo_labels(data, "random")[0]  # fixed by (seed, task)
    changed = 0
    for before, after in zip(data.cells, rand.cells):
        assert after.test == before.test and [d.input for d in after.demonstrations] == [d.input for d in before.demonstrations]
        assert all(d.output in d.options for d in after.demonstrations)
        changed += sum(a.output != b.output for a, b in zip(after.demonstrations, before.demonstrations))
    assert changed > 0
    symbols, applied = with_demo_labels(data, "symbols")
    for before, after in zip(data.cells, symbols.cells):
        assert [e.input for e in after.test] == [e.input for e in before.test]
        assert all(e.output in SYMBOLS and set(e.options) <= set(SYMBOLS) for e in after.test + after.demonstrations)
    assert applied == {"cls_c": True, "cls_d": True}


def test_eval_demo_labels_flag_writes_the_mode_and_where_it_applied(tmp_path, tiny_model_dir, tiny_data_dir):
    split = tmp_path / "mc.json"
    split.write_text(json.dumps({"train": [], "test": ["cls_c", "mc_pick"]}))
    for mode in ("random", "symbols"):
        out = tmp_path / mode
        assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir), "--split", str(split),
                     "--k", "2", "--seeds", "100", "--max-test", "3", "--demo-labels", mode, "--out", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["demo_labels"] == mode
        # per-example options (mc_pick) have no shared label set to rename: they keep gold labels
        assert results["demo_labels_applied"] == {"cls_c": True, "mc_pick": mode == "random"}


def test_journal_is_reused_only_under_the_same_settings(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """evaluate_data records every cell in the journal; a second call with the same settings computes nothing,
    one with another k or another model computes every cell again."""
    from maml_en_llm import evaluate as ev
    from maml_en_llm.eval_journal import model_fingerprint
    from maml_en_llm.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    journal = tmp_path / "journal.jsonl"
    calls = []
    real = ev._evaluate_cell
    monkeypatch.setattr(ev, "_evaluate_cell", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def run(k, model_id):
        data = ev.load_eval_data(tiny_data_dir, "tiny", k, (100, 13), 4)
        return ev.evaluate_data(model, tokenizer, data, journal=journal, model_id=model_id, progress=False)

    first = run(2, model_fingerprint(str(tiny_model_dir)))
    cells = len(calls)
    assert cells == len(journal.read_text().splitlines()) >= 2
    again = run(2, model_fingerprint(str(tiny_model_dir)))
    assert len(calls) == cells and again["tasks"] == first["tasks"] and again["scoring"] == first["scoring"]
    run(1, model_fingerprint(str(tiny_model_dir)))
    assert len(calls) == 2 * cells
    run(2, {"source": "another model"})
    assert len(calls) == 3 * cells


def test_dev_examples_are_scored_instead_of_test_ones(monkeypatch, tokenizer, tiny_data_dir):
    """--examples dev: the same demonstrations, each seed's dev file as the scored examples (for choosing settings
    without looking at the test set)."""
    scorer = RecordingScorer(lambda e: e.output)
    monkeypatch.setattr(evaluate, "score_options", scorer)
    results = evaluate.evaluate_model(torch.nn.Linear(1, 1), tokenizer, data_dir=tiny_data_dir, split="tiny", k=2,
                                      seeds=[21], max_test=6, progress=False, examples="dev")
    for call, task in zip(scorer.calls, ["cls_c", "cls_d"], strict=True):
        dev = read_jsonl(tiny_data_dir / task / f"{task}_16_21_dev.jsonl")[:6]
        test = read_jsonl(tiny_data_dir / task / f"{task}_16_21_test.jsonl")[:6]
        assert [e.input for e in call["examples"]] == [r["input"] for r in dev] != [r["input"] for r in test]
    assert results["examples"] == "dev"
    default = evaluate.evaluate_model(torch.nn.Linear(1, 1), tokenizer, data_dir=tiny_data_dir, split="tiny", k=2,
                                      seeds=[21], max_test=6, progress=False)
    assert default["examples"] == "test"
    with pytest.raises(UserError, match="--examples"):
        evaluate.load_eval_data(tiny_data_dir, "tiny", 2, [21], examples="train")


def test_cli_dev_examples_say_so_and_a_missing_dev_file_exits_2(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(eval_args(tiny_model_dir, tiny_data_dir, out, "--examples", "dev")) == 0
    assert json.loads((out / "results.json").read_text())["examples"] == "dev"
    assert "(dev examples)" in capsys.readouterr().out

    data = tmp_path / "no_dev"
    shutil.copytree(tiny_data_dir, data)
    (data / "cls_d" / "cls_d_16_13_dev.jsonl").unlink()
    out = tmp_path / "out2"
    assert main(eval_args(tiny_model_dir, data, out, "--examples", "dev")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cls_d_16_13_dev.jsonl" in err and not out.exists()
    assert main(eval_args(tiny_model_dir, data, out)) == 0  # the test files are all there
