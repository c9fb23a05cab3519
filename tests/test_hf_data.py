"""`data hf` on local datasets saved with `save_to_disk`: MetaICL's sampling reproduced literally, labels from
ClassLabel or --label-names, multi-choice options, dropped rows counted, bad input in one line, and the output
readable by eval."""

import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from maml_en_llm.cli import main  # noqa: E402
from maml_en_llm.evaluate import load_eval_data  # noqa: E402
from maml_en_llm.tasks import read_examples  # noqa: E402

SEEDS = (100, 13, 21, 42, 87)


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory):
    """A two-split dataset like GLUE SST-2: sentence, ClassLabel label; one unlabelled and one empty row."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"sentence": datasets.Value("string"), "extra": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def split(n, offset):
        return datasets.Dataset.from_dict({
            "sentence": [f"sentence number {offset + i} \\n ok " for i in range(n)],
            "extra": [f"x{i}" for i in range(n)],
            "label": [int(v) for v in rng.integers(0, 2, n)]}, features=features)

    train = split(70, 0)
    validation = split(20, 1000)
    # an unlabelled row and an empty input in train (dropped before shuffling)
    train = datasets.concatenate_datasets([train, datasets.Dataset.from_dict(
        {"sentence": ["unlabelled", "   "], "extra": ["", ""], "label": [-1, 1]}, features=features)])
    path = tmp_path_factory.mktemp("hf") / "sst"
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(str(path))
    return path


def hf_args(source, out, *extra):
    return ["data", "hf", "--dataset", str(source), "--task", "sst", "--text-fields", "sentence",
            "--label-field", "label", "--out", str(out), *extra]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def metaicl_reference(lines, k, seed):
    """MetaICL's generate_k_shot_data, literally: global seed, shuffle the list of lines, slice."""
    lines = list(lines)
    np.random.seed(seed)
    np.random.shuffle(lines)
    return lines[:k], lines[k:2 * k]


def test_sampling_is_metaicl_exact(sentiment_dir, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(hf_args(sentiment_dir, out, "--shots", "4,16", "--max-pool", "50")) == 0
    source = datasets.load_from_disk(str(sentiment_dir))
    usable = [(f"sentence number {i} \\n ok".strip().replace("\\n", " "), ["negative", "positive"][row["label"]])
              for i, row in enumerate(source["train"]) if row["label"] >= 0 and row["sentence"].strip()]
    assert len(usable) == 70
    for seed in SEEDS:
        for k in (4, 16):
            train, dev = metaicl_reference(usable, k, seed)
            got = records(out / "sst" / f"sst_{k}_{seed}_train.jsonl")
            assert [(r["input"], r["output"]) for r in got] == train
            assert [(r["input"], r["output"]) for r in records(out / "sst" / f"sst_{k}_{seed}_dev.jsonl")] == dev
            test = records(out / "sst" / f"sst_{k}_{seed}_test.jsonl")
            assert [r["input"] for r in test] == [f"sentence number {1000 + i}   ok" for i in range(20)]
    pool, _ = metaicl_reference(usable, 50, 100)
    assert [(r["input"], r["output"]) for r in records(out / "sst" / "sst_16384_100_train.jsonl")] == pool
    assert records(out / "sst" / "sst_16_13_train.jsonl")[0]["options"] == ["negative", "positive"]
    meta = json.loads((out / "config" / "tasks" / "sst.json").read_text())
    assert meta["task_type"] == "classification" and meta["options"] == ["negative", "positive"]
    assert meta["source"]["skipped"]["train"] == {"no_label": 1, "empty_input": 1}
    printed = capsys.readouterr().out
    assert "72 rows, 70 usable" in printed and "no_label 1" in printed
    for path in (out / "sst").iterdir():  # every file passes the reader's validation
        read_examples(path, "sst", allow_empty_input=False)
    # eval can read it: k=10 comes from the 16-file, k=4 from the 4-file
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "test": ["sst"]}))
    data = load_eval_data(out, str(split), 10, [13], None)
    assert [e.input for e in data.cells[0].demonstrations] == [r["input"] for r in
                                                               records(out / "sst" / "sst_16_13_train.jsonl")[:10]]


def test_label_names_template_and_rebuild(sentiment_dir, tmp_path):
    out = tmp_path / "data"
    argv = ["data", "hf", "--dataset", str(sentiment_dir), "--task", "sst", "--text-fields", "sentence,extra",
            "--label-field", "label", "--label-names", "bad,good", "--out", str(out), "--seeds", "13",
            "--max-test", "5"]
    assert main(argv) == 0
    first = records(out / "sst" / "sst_16_13_train.jsonl")
    assert {r["output"] for r in first} <= {"bad", "good"} and " [SEP] x" in first[0]["input"]
    test = records(out / "sst" / "sst_16_13_test.jsonl")
    assert len(test) == 5 and [r["input"] for r in test] == sorted((r["input"] for r in test),
                                                                   key=lambda t: int(t.split()[2]))
    assert not (out / "sst" / "sst_16_100_train.jsonl").exists()  # only the seeds asked for
    # a rebuild replaces the task folder whole (no stale files from the first build)
    assert main(argv[:-4] + ["--template", "review: {sentence}", "--seeds", "21"]) == 0
    assert not (out / "sst" / "sst_16_13_train.jsonl").exists()
    assert records(out / "sst" / "sst_16_21_train.jsonl")[0]["input"].startswith("review: sentence number")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_multi_choice_with_an_options_column(tmp_path):
    rows = {"question": [f"q{i}" for i in range(40)],
            "choices": [[f"a{i}", f"b{i}", f"c{i}"] for i in range(40)],
            "answer": [i % 3 for i in range(40)]}
    path = tmp_path / "mc"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(path))
    out = tmp_path / "data"
    assert main(["data", "hf", "--dataset", str(path), "--task", "mc", "--text-fields", "question",
                 "--label-field", "answer", "--options-field", "choices", "--out", str(out)]) == 0
    first = records(out / "mc" / "mc_16_100_test.jsonl")[4]
    assert first == {"task": "mc", "input": "q4", "output": "b4", "options": ["a4", "b4", "c4"]}
    assert json.loads((out / "config" / "tasks" / "mc.json").read_text())["task_type"] == "multi-choice"


@pytest.mark.parametrize("extra,needle", [
    (["--text-fields", "sentense"], "no column 'sentense'"),
    (["--label-names", "a,b,c"], "3 names for 2 classes"),
    (["--test-split", "dev"], "--test-split dev: no such split"),
    (["--test-split", "train"], "the same as --train-split"),
    (["--shots", "100"], "fewer than --shots 100"),
    (["--template", "{nope}"], "'nope'"),
    (["--task", "../escape"], "escape the data folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(sentiment_dir, tmp_path, capsys, extra, needle):
    out = tmp_path / "data"
    assert main(hf_args(sentiment_dir, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def test_metaicl_shuffle_depends_only_on_length_and_seed():
    from maml_en_llm.hf_data import metaicl_shuffle

    lines = [("text", i) for i in range(30)]
    np.random.seed(42)
    np.random.shuffle(lines)
    assert [i for _, i in lines] == metaicl_shuffle(30, 42)
