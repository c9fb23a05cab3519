"""Task data: the MetaICL layout loads, and every kind of bad input gives one line naming file:line (exit 2)."""

import json

import pytest

from maml_en_llm import tasks
from maml_en_llm.cli import main
from maml_en_llm.errors import UserError


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


GOOD = {"task": "t", "input": "hello", "output": "yes", "options": ["yes", "no"]}


def test_tiny_collection_loads(tiny_data_dir):
    split = tasks.load_split("tiny", tiny_data_dir)
    assert split.train == ("cls_a", "cls_b", "mc_pick") and split.unseen_domain_test == ("cls_d",)
    tasks.check_split_data(split, tiny_data_dir)
    pool = tasks.load_pool(tiny_data_dir, "cls_a")
    assert len(pool) == 48 and tasks.load_pool(tiny_data_dir, "cls_a", max_examples=5) == pool[:5]
    demos = tasks.load_demonstrations(tiny_data_dir, "cls_c", 13, 4)
    assert len(demos) == 4 and demos == tasks.load_demonstrations(tiny_data_dir, "cls_c", 13, 16)[:4]
    assert tasks.load_demonstrations(tiny_data_dir, "cls_c", 13, 0) == []
    assert len(tasks.load_test(tiny_data_dir, "cls_c", 100, max_test=5)) == 5
    assert tasks.load_task_meta(tiny_data_dir, "mc_pick").task_type == "multi-choice"
    assert tasks.load_task_meta(tiny_data_dir, "cls_d").options == ("red", "green", "blue")


def test_meta_defaults_to_classification_when_options_are_shared(tmp_path):
    shared = [tasks.Example("t", "a", "x", ("x", "y"))] * 2
    varied = shared + [tasks.Example("t", "a", "x", ("x", "z"))]
    assert tasks.load_task_meta(tmp_path, "t", shared).task_type == "classification"
    assert tasks.load_task_meta(tmp_path, "t", varied).task_type == "multi-choice"


@pytest.mark.parametrize("record, message", [
    ('{"task": "t", "input": ', "malformed JSON"),
    ({k: v for k, v in GOOD.items() if k != "output"}, "missing field 'output'"),
    ({**GOOD, "input": 3}, "field 'input' must be a string"),
    ({**GOOD, "options": "yes"}, "'options' must be a list of strings"),
    ({**GOOD, "output": " "}, "empty output"),
    ({**GOOD, "output": "maybe"}, "not among the options"),
    ({**GOOD, "options": ["yes", "yes", "no"]}, "duplicates"),
    ({**GOOD, "options": ["yes", ""]}, "empty string"),
    ({**GOOD, "task": "other"}, "does not match its folder"),
])
def test_bad_record_names_file_and_line(tmp_path, record, message):
    path = write(tmp_path / "t" / "t_16_100_test.jsonl", [GOOD, record])
    with pytest.raises(UserError) as err:
        tasks.load_test(tmp_path, "t", 100)
    assert f"{path}:2: " in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_input_is_allowed_in_pools_like_metaicl(tmp_path, capsys):
    write(tmp_path / "t" / "t_16384_100_train.jsonl", [{**GOOD, "input": ""}])
    assert tasks.load_pool(tmp_path, "t")[0].input == ""
    assert capsys.readouterr().err == ""


def test_empty_input_in_evaluation_files_is_read_with_a_warning(tmp_path, capsys):
    path = write(tmp_path / "t" / "t_16_100_test.jsonl", [GOOD, {**GOOD, "input": ""}, {**GOOD, "input": " "}])
    assert [e.input for e in tasks.load_test(tmp_path, "t", 100)] == [GOOD["input"], "", " "]
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and f"{path}:2: 2 record(s) with an empty input" in err


def test_fewer_examples_than_k(tmp_path):
    path = write(tmp_path / "t" / "t_16_13_train.jsonl", [GOOD] * 3)
    with pytest.raises(UserError, match=rf"{path}: has 3 examples, fewer than k=4"):
        tasks.load_demonstrations(tmp_path, "t", 13, 4)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        tasks.load_pool(tmp_path, "t")
    write(tmp_path / "t" / "t_16384_100_train.jsonl", [])
    with pytest.raises(UserError, match="no records"):
        tasks.load_pool(tmp_path, "t")


def test_test_example_needs_two_options(tmp_path):
    path = write(tmp_path / "t" / "t_16_100_test.jsonl", [{**GOOD, "options": ["yes"]}])
    with pytest.raises(UserError, match=rf"{path}:1: .*at least 2 options"):
        tasks.load_test(tmp_path, "t", 100)


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", ""])
def test_task_name_escaping_data_folder(tmp_path, name):
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"train": [name], "test": ["t"]}))
    with pytest.raises(UserError, match="task name"):
        tasks.load_split(str(split))


def test_split_naming_task_without_data(tiny_data_dir, tmp_path):
    split_file = tmp_path / "s.json"
    split_file.write_text(json.dumps({"train": ["cls_a", "ghost"], "test": ["cls_c"]}))
    split = tasks.load_split(str(split_file))
    with pytest.raises(UserError, match=r"train task 'ghost' has no data"):
        tasks.check_split_data(split, tiny_data_dir)


def test_bad_split_files(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(UserError, match=rf"{bad_json}:1: malformed JSON"):
        tasks.load_split(str(bad_json))
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps({"train": [], "test": ["a"], "unseen_domain_test": ["b"]}))
    with pytest.raises(UserError, match="not in 'test'"):
        tasks.load_split(str(stray))
    with pytest.raises(UserError, match="no such split file or built-in setting"):
        tasks.load_split("no_such_setting")


def test_bad_task_meta(tiny_data_dir):
    (tiny_data_dir / "config" / "tasks" / "cls_a.json").write_text(json.dumps({"task_type": "regression"}))
    with pytest.raises(UserError, match="task_type"):
        tasks.load_task_meta(tiny_data_dir, "cls_a")


def test_cli_reports_user_errors_in_one_line_with_exit_2(tmp_path, capsys):
    split = tmp_path / "s.json"
    split.write_text("[")
    code = main(["eval", "--split", str(split), "--data-dir", str(tmp_path), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_non_utf8_bytes_name_the_line_and_column(tmp_path):
    path = tmp_path / "t" / "t_16_100_test.jsonl"
    write(path, [GOOD])
    path.write_bytes(path.read_bytes() + b'{"task": "t", "input": "\xc3(", "output": "yes", "options": ["yes", "no"]}\n')
    with pytest.raises(UserError, match=rf"{path}:2: not valid UTF-8 \(byte 0xc3 at column 25\)"):
        tasks.load_test(tmp_path, "t", 100)


def test_line_length_limit_is_exact(tmp_path, monkeypatch):
    record = json.dumps(GOOD) + "\n"
    monkeypatch.setattr(tasks, "MAX_LINE_BYTES", len(record))
    path = write(tmp_path / "t" / "t_16384_100_train.jsonl", [GOOD, GOOD])
    assert len(tasks.load_pool(tmp_path, "t")) == 2  # exactly at the limit, newline included
    write(path, [GOOD, {**GOOD, "input": GOOD["input"] + "!"}])
    with pytest.raises(UserError, match=rf"{path}:2: line is longer than"):
        tasks.load_pool(tmp_path, "t")


def test_split_lists_each_task_once(tmp_path):
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"train": ["a", "b"], "test": ["c", "d", "c"], "unseen_domain_test": ["c"]}))
    with pytest.raises(UserError, match=r"'test' lists 'c' more than once"):
        tasks.load_split(str(split))


def test_train_test_overlap_is_refused_unless_allowed(tmp_path):
    split_file = tmp_path / "s.json"
    split_file.write_text(json.dumps({"train": ["a", "c", "b", "d"], "test": ["d", "c"]}))
    split = tasks.load_split(str(split_file))
    assert tasks.train_test_overlap(split) == ["c", "d"]
    with pytest.raises(UserError, match=r"\['c', 'd'\] are in both 'train' and 'test' \(2 shared\)"):
        tasks.check_train_test_overlap(split)
    assert tasks.check_train_test_overlap(split, allow=True) == ["c", "d"]
    split_file.write_text(json.dumps({"train": ["a", "b"], "test": ["c"]}))
    assert tasks.check_train_test_overlap(tasks.load_split(str(split_file))) == []


def test_task_metadata_that_is_not_utf8(tiny_data_dir):
    path = tiny_data_dir / "config" / "tasks" / "cls_a.json"
    path.write_bytes(b'{"task_type": "classification", "options": ["\xff"]}')
    with pytest.raises(UserError, match=rf"{path}: not valid UTF-8"):
        tasks.load_task_meta(tiny_data_dir, "cls_a")
