"""Metrics against hand-computed cases (MetaICL's Macro-F1 and accuracy, in percent) and the comparison stats."""

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import load_script
from scipy import stats

from maml_en_llm.metrics import (
    accuracy, macro_f1, mean_ci95, paired_test, result_cells, seed_test, summarize, task_metric,
)

SCRIPTS = Path(__file__).parents[1] / "scripts"


def test_macro_f1_class_never_predicted_scores_zero():
    # a: P = 2/4, R = 2/2 -> F1 = 2/3;  b: never predicted -> F1 = 0;  macro = 1/3
    assert macro_f1(["a", "a", "a", "a"], ["a", "a", "b", "b"]) == pytest.approx(100 / 3)


def test_macro_f1_predicted_class_absent_from_gold_has_no_f1_of_its_own():
    # a: P = 1/1, R = 1/2 -> 2/3;  b: P = 2/2, R = 2/2 -> 1;  c is never gold, so it is not averaged
    assert macro_f1(["a", "c", "b", "b"], ["a", "a", "b", "b"]) == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_macro_f1_three_classes_by_hand():
    golds = ["x", "x", "x", "y", "y", "z"]
    preds = ["x", "y", "x", "y", "z", "z"]
    # x: P 2/2 R 2/3 -> 0.8;  y: P 1/2 R 1/2 -> 0.5;  z: P 1/2 R 1/1 -> 2/3
    assert macro_f1(preds, golds) == pytest.approx(100 * (0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1(golds, golds) == 100.0
    # all wrong, every gold class predicted somewhere
    assert macro_f1(["b", "a"], ["a", "b"]) == 0.0


def test_accuracy_and_task_metric_routing():
    assert accuracy(["a", "b", "c"], ["a", "b", "d"]) == pytest.approx(200 / 3)
    preds, golds = ["a", "a", "a", "a"], ["a", "a", "b", "b"]
    assert task_metric("multi-choice", preds, golds) == 50.0
    assert task_metric("classification", preds, golds) == pytest.approx(100 / 3)
    with pytest.raises(ValueError):
        task_metric("free-form", preds, golds)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_summarize_string_seed_keys_mean_and_worst():
    summary = summarize({100: 50.0, 13: 70.0, 21: 60.0})
    assert summary == {"per_seed": {"100": 50.0, "13": 70.0, "21": 60.0}, "mean": 60.0, "worst": 50.0}


def test_mean_ci95_matches_t_interval_and_degenerate_cases():
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # sample sd of 1,2,3 is 1
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert all(math.isnan(v) for v in mean_ci95([]))
    single = mean_ci95([4.0])
    assert single[0] == 4.0 and math.isnan(single[1]) and math.isnan(single[2])
    assert mean_ci95([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


def test_paired_test_against_scipy():
    a, b = [60.0, 55.0, 70.0, 52.0, 66.0], [58.0, 50.0, 71.0, 49.0, 60.0]
    result = paired_test(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    assert result["n"] == 5
    assert result["mean_diff"] == pytest.approx(sum(diffs) / 5)
    assert result["p_value_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result["p_value_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    low, high = result["ci95"]
    assert low < result["mean_diff"] < high


def test_paired_test_pairs_mappings_by_common_keys_and_degenerate_cases():
    a = {("t1", "100"): 60.0, ("t1", "13"): 50.0, ("t2", "100"): 40.0, ("only_a", "1"): 99.0}
    b = {("t1", "100"): 55.0, ("t1", "13"): 50.0, ("t2", "100"): 30.0}
    result = paired_test(a, b)
    assert result["n"] == 3 and result["mean_diff"] == pytest.approx(5.0)
    same = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["p_value_t"] == 1.0 and same["p_value_wilcoxon"] == 1.0 and same["mean_diff"] == 0.0
    one = paired_test([1.0], [0.0])
    assert one["n"] == 1 and math.isnan(one["p_value_t"]) and math.isnan(one["p_value_wilcoxon"])
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_result_cells_flattens_task_by_seed():
    block = {"tasks": {"t1": {"per_seed": {"100": 1.0, "13": 2.0}}, "t2": {"per_seed": {"100": 3.0}}}}
    assert result_cells(block) == {("t1", "100"): 1.0, ("t1", "13"): 2.0, ("t2", "100"): 3.0}


def test_labels_are_compared_after_stripping_whitespace_like_metaicl():
    from maml_en_llm.metrics import accuracy, macro_f1

    assert accuracy(["yes ", "\tno"], ["yes", "no"]) == 100.0
    # " yes" and "yes" are one class: all correct, one F1 of 1 per class
    assert macro_f1([" yes", "no", "yes"], ["yes", "no ", "yes"]) == 100.0


def test_seed_test_is_welch_across_training_seeds_and_one_sample_against_an_untrained_model():
    a, b = [46.2, 43.5, 44.9], [45.7, 45.1]
    result = seed_test(a, b)
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert result["mean_diff"] == pytest.approx(sum(a) / 3 - sum(b) / 2) and result["n_a"] == 3 and result["n_b"] == 2
    assert result["p_value"] == pytest.approx(welch.pvalue) and result["df"] == pytest.approx(welch.df)
    low, high = welch.confidence_interval(0.95)
    assert result["ci95"] == pytest.approx([low, high])
    se = abs(result["mean_diff"] / welch.statistic)
    assert result["mde"] == pytest.approx((stats.t.ppf(0.975, welch.df) + stats.t.ppf(0.8, welch.df)) * se)
    against = seed_test(a, 44.0)  # the untrained model: one number, no training seed
    one_sample = stats.ttest_1samp(a, 44.0)
    assert against["n_b"] is None and against["p_value"] == pytest.approx(one_sample.pvalue)
    assert against["ci95"] == pytest.approx([bound - 44.0 for bound in one_sample.confidence_interval(0.95)])
    # too few seeds to see a spread: the difference, but no test
    for short in (seed_test([46.0], b), seed_test(a, [45.0])):
        assert math.isnan(short["p_value"]) and short["mde"] is None
    assert seed_test([45.0, 45.0], [44.0, 44.0])["p_value"] == 0.0


def _eval_file(path, cells, wrap):
    tasks = {}
    for (task, seed), value in cells.items():
        tasks.setdefault(task, {"per_seed": {}})["per_seed"][seed] = value
    body = {"tasks": tasks}
    path.write_text(json.dumps({"result": body} if wrap else body))
    return str(path)


def test_pair_evals_script_tests_seed_means_against_the_untrained_model(tmp_path, capsys):
    """scripts/pair_evals.py: the seed mean's cells against the untrained model's, and the seeds' means against
    its mean, from eval and compare files alike; the ICL gain is taken cell by cell."""
    pair_evals = load_script(SCRIPTS / "pair_evals.py")
    cells = [(t, s) for t in ("t1", "t2", "t3") for s in ("1", "2")]
    base = {c: 40.0 + 3 * i for i, c in enumerate(cells)}
    seed_a = {c: v + (1.0 if c[0] == "t1" else 3.0) for c, v in base.items()}  # task means +1, +3, +3
    seed_b = {c: v + (2.0 if c[1] == "1" else 4.0) for c, v in base.items()}  # +3 on every task
    zero = {c: 30.0 for c in cells}
    files = dict(base_icl=_eval_file(tmp_path / "b.json", base, False),
                 base_zero=_eval_file(tmp_path / "bz.json", zero, True),
                 a=_eval_file(tmp_path / "a.json", seed_a, True), b=_eval_file(tmp_path / "c.json", seed_b, False),
                 za=_eval_file(tmp_path / "za.json", zero, True), zb=_eval_file(tmp_path / "zb.json", {c: 31.0 for c in cells}, False))
    assert pair_evals.main(["--base-icl", files["base_icl"], "--base-zero-shot", files["base_zero"],
                            "--icl", files["a"], files["b"], "--zero-shot", files["za"], files["zb"]]) == 0
    out = capsys.readouterr().out
    icl, zero_shot, icl_gain = out.split("## ")[1:]
    mean_a, mean_b = sum(seed_a.values()) / 6, sum(seed_b.values()) / 6
    assert f"per seed {mean_a:.2f} / {mean_b:.2f}" in icl
    assert "seed mean - base +2.67" in icl  # (7/3 + 3) / 2
    by_task = paired_test({"t1": 43.5, "t2": 50.5, "t3": 56.5}, {"t1": 41.5, "t2": 47.5, "t3": 53.5})
    low, high = by_task["ci95"]
    assert f"over 3 task means: 95% CI [{low:+.2f}, {high:+.2f}]" in icl
    assert "seed mean - base +0.50" in zero_shot and "base +2.17" in icl_gain
    assert "across 2 training seeds" in icl_gain and "## per task" not in out

    assert pair_evals.main(["--base-icl", files["base_icl"], "--base-zero-shot", files["base_zero"], "--per-task",
                            "--icl", files["a"], files["b"], "--zero-shot", files["za"], files["zb"]]) == 0
    table = capsys.readouterr().out.split("## per task\n")[1].splitlines()
    # t1: untrained 41.5; seeds +1 and +3 -> 43.5; zero-shot 30 and the seeds' 30 / 31 -> 30.5
    assert table[2] == "| t1 | 41.5 | 43.5 | 30.0 | 30.5 | +11.5 | +13.0 |"
    assert [row.split(" | ")[0] for row in table[2:]] == ["| t1", "| t2", "| t3"]

    # one training seed: the cell and task tests, and no across-seeds line (one mean has no spread)
    assert pair_evals.main(["--base-icl", files["base_icl"], "--base-zero-shot", files["base_zero"],
                            "--icl", files["a"], "--zero-shot", files["za"]]) == 0
    single = capsys.readouterr().out
    assert "over 3 task means" in single and "across" not in single and "nan" not in single

    short = _eval_file(tmp_path / "short.json", dict(list(seed_a.items())[:4]), True)
    with pytest.raises(SystemExit, match="the same task x seed cells"):
        pair_evals.main(["--base-icl", files["base_icl"], "--base-zero-shot", files["base_zero"],
                         "--icl", short, files["b"], "--zero-shot", files["za"], files["zb"]])
    for base_files, trained_files in (([files["base_icl"], short], [files["a"]]), ([files["base_icl"]], [short])):
        with pytest.raises(SystemExit, match="the same task x seed cells"):
            pair_evals.main(["--base-icl", *base_files, "--icl", *trained_files])

    # a base row trained with two seeds too (here the two trained files against the base file and seed b):
    # its cells are their mean, and across training seeds the test is Welch's, seed means against seed means
    assert pair_evals.main(["--base-icl", files["base_icl"], files["b"], "--base-zero-shot", files["base_zero"],
                            files["zb"], "--icl", files["a"], files["b"], "--zero-shot", files["za"], files["zb"]]) == 0
    icl = capsys.readouterr().out.split("## ")[1]
    base_mean = (sum(base.values()) / 6 + mean_b) / 2
    assert f"base, mean of 2 seeds {base_mean:.2f}" in icl
    assert f"seed mean - base {(mean_a + mean_b) / 2 - base_mean:+.2f}" in icl  # (7/3 + 3) / 2 - 3 / 2
    by_seed = seed_test([mean_a, mean_b], [sum(base.values()) / 6, mean_b])
    low, high = by_seed["ci95"]
    assert f"across 2 training seeds (Welch): 95% CI [{low:+.2f}, {high:+.2f}]" in icl
    with pytest.raises(SystemExit) as refused:
        pair_evals.main(["--base-icl", files["base_icl"], files["b"], "--base-zero-shot", files["base_zero"],
                         "--icl", files["a"], "--zero-shot", files["za"]])
    assert refused.value.code == 2 and "--base-icl and --base-zero-shot need one file per training seed" in \
        capsys.readouterr().err


def test_pair_evals_script_tests_random_label_icl_and_what_gold_labels_add(tmp_path, capsys):
    """--base-random/--random: random-label ICL against the base's, and ICL - random (cell by cell) against the
    base's; both or neither, one file per training seed."""
    pair_evals = load_script(SCRIPTS / "pair_evals.py")
    cells = [(t, s) for t in ("t1", "t2", "t3") for s in ("1", "2")]
    files = {name: _eval_file(tmp_path / f"{name}.json", values, True) for name, values in (
        ("base_icl", {c: 50.0 for c in cells}), ("base_random", {c: 45.0 for c in cells}),  # gold labels add 5
        ("icl", {c: 52.0 for c in cells}), ("random", {c: 51.0 + i for i, c in enumerate(cells)}))}  # they add 1 - 6
    assert pair_evals.main(["--base-icl", files["base_icl"], "--base-random", files["base_random"],
                            "--icl", files["icl"], "--random", files["random"]]) == 0
    out = capsys.readouterr().out
    icl, random, label_gain = out.split("## ")[1:]
    assert random.startswith("random-label ICL") and "seed mean - base +8.50" in random  # 53.5 - 45
    assert label_gain.startswith("ICL - random") and "base 5.00; trained -1.50" in label_gain
    assert "seed mean - base -6.50" in label_gain
    with pytest.raises(SystemExit) as refused:
        pair_evals.main(["--base-icl", files["base_icl"], "--icl", files["icl"], "--random", files["random"]])
    assert refused.value.code == 2 and "give both --base-random and --random" in capsys.readouterr().err


def test_pair_evals_script_tests_the_adapted_or_in_context_scores_alone(tmp_path, capsys):
    """--adapted reads each file's `adapted` block, not its in-context one, then tests adapted - ICL within each
    row and between them; without zero-shot files only the first test runs; a file without an adapted block, or
    zero-shot files beside --adapted, is an error."""
    pair_evals = load_script(SCRIPTS / "pair_evals.py")
    cells = [(t, s) for t in ("t1", "t2", "t3") for s in ("1", "2")]

    def with_adapted(name, icl, adapted):
        body = {"tasks": {}, "adapted": {"tasks": {}}}
        for (task, seed), value in icl.items():
            body["tasks"].setdefault(task, {"per_seed": {}})["per_seed"][seed] = value
            body["adapted"]["tasks"].setdefault(task, {"per_seed": {}})["per_seed"][seed] = adapted[(task, seed)]
        (tmp_path / name).write_text(json.dumps({"result": body}))
        return str(tmp_path / name)

    base = with_adapted("base.json", {c: 40.0 for c in cells}, {c: 41.0 + i for i, c in enumerate(cells)})
    # in context the trained row is 10 points up; adapted it is 0.5 up on t1 and 2.5 on t2 and t3
    trained = with_adapted("run.json", {c: 50.0 for c in cells},
                           {c: 41.0 + i + (0.5 if c[0] == "t1" else 2.5) for i, c in enumerate(cells)})
    assert pair_evals.main(["--adapted", "--base-icl", base, "--icl", trained]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## adapted") and "seed mean - base +1.83" in out and "## 0-shot" not in out
    adapted, untrained_gain, trained_gain, difference = out.split("## ")[1:]
    by_task = paired_test({"t1": 42.0, "t2": 46.0, "t3": 48.0}, {"t1": 41.5, "t2": 43.5, "t3": 45.5})
    low, high = by_task["ci95"]
    assert f"over 3 task means: 95% CI [{low:+.2f}, {high:+.2f}]" in adapted
    # what adaptation adds within each row: the untrained one 41..46 over its 40s, the trained one its adapted
    # 41.5..48.5 (mean 45.33) under its 50s; and the trained row's gain minus the untrained one's, cell by cell
    assert untrained_gain.startswith("adaptation gain (adapted - ICL), base\nICL 40.00; adapted 43.50")
    by_task = paired_test({"t1": 41.5, "t2": 43.5, "t3": 45.5}, {"t1": 40.0, "t2": 40.0, "t3": 40.0})
    low, high = by_task["ci95"]
    assert "adapted - ICL +3.50" in untrained_gain and f"task means: 95% CI [{low:+.2f}, {high:+.2f}]" in untrained_gain
    assert "adapted - ICL -4.67" in trained_gain and "across" not in trained_gain
    assert difference.startswith("adaptation gain, trained - base") and "seed mean - base -8.17" in difference

    # two training seeds: the second one's in-context cells are 45, so it gains +0.33 where the first loses 4.67
    second = with_adapted("run2.json", {c: 45.0 for c in cells},
                          {c: 41.0 + i + (0.5 if c[0] == "t1" else 2.5) for i, c in enumerate(cells)})
    assert pair_evals.main(["--adapted", "--per-task", "--base-icl", base, "--icl", trained, second]) == 0
    out = capsys.readouterr().out
    trained_gain = out.split("## ")[3]
    by_seed = seed_test([-14 / 3, 1 / 3], 0.0)
    low, high = by_seed["ci95"]
    assert "gain per seed -4.67 / +0.33" in trained_gain and "adapted - ICL -2.17" in trained_gain
    assert f"across 2 training seeds: 95% CI [{low:+.2f}, {high:+.2f}]" in trained_gain
    table = out.split("## per task\n")[1].splitlines()
    # t1: untrained adapted 41.5 over ICL 40; trained adapted 42.0 over the two seeds' ICL mean 47.5
    assert table[0].startswith("| task | base adapted | trained adapted | base ICL | trained ICL")
    assert table[2] == "| t1 | 41.5 | 42.0 | 40.0 | 47.5 | +1.50 | -5.50 |"

    plain = _eval_file(tmp_path / "plain.json", {c: 40.0 for c in cells}, True)
    with pytest.raises(SystemExit, match="plain.json: no 'adapted' scores"):
        pair_evals.main(["--adapted", "--base-icl", plain, "--icl", trained])
    with pytest.raises(SystemExit) as refused:
        pair_evals.main(["--adapted", "--base-icl", base, "--icl", trained, "--zero-shot", plain])
    assert refused.value.code == 2 and "--adapted tests the adapted scores against" in capsys.readouterr().err
    # without --adapted and without zero-shot files: the in-context test alone (+10 on every cell)
    assert pair_evals.main(["--base-icl", base, "--icl", trained]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## ICL") and "seed mean - base +10.00" in out and "## 0-shot" not in out
    with pytest.raises(SystemExit) as refused:
        pair_evals.main(["--base-icl", base, "--icl", trained, "--zero-shot", plain])
    assert refused.value.code == 2 and "give both --base-zero-shot and --zero-shot" in capsys.readouterr().err


def test_floors_script_gives_the_best_constant_macro_f1_and_the_chance_accuracy(tmp_path, capsys):
    """scripts/floors.py on hand-made tasks: 3 x "yes" and 1 x "no" -> predicting "yes" everywhere gives
    F1(yes) = 2 x 0.75 x 1 / 1.75 and F1(no) = 0, Macro-F1 42.86; multi-choice with 2 and 4 options -> 37.5."""
    floors = load_script(SCRIPTS / "floors.py")
    data = tmp_path / "data"
    rows = {"cls": [{"input": f"x{i}", "output": out, "options": ["no", "yes"]}
                    for i, out in enumerate(["yes", "yes", "no", "yes"])],
            "mc": [{"input": "a", "output": "p", "options": ["p", "q"]},
                   {"input": "b", "output": "r", "options": ["r", "s", "t", "u"]}]}
    for task, records in rows.items():
        (data / task).mkdir(parents=True)
        for seed in (1, 2):
            (data / task / f"{task}_16_{seed}_test.jsonl").write_text(
                "".join(json.dumps({"task": task, **r}) + "\n" for r in records))
        (data / "config" / "tasks").mkdir(parents=True, exist_ok=True)
        meta = {"task_type": "classification" if task == "cls" else "multi-choice"}
        (data / "config" / "tasks" / f"{task}.json").write_text(json.dumps(meta))
    (data / "config" / "s.json").write_text(json.dumps({"train": [], "test": ["cls", "mc"]}))
    result = floors.floors(data, "s", [1, 2], None)
    assert result["cls"] == ("classification", pytest.approx(100 * (2 * 0.75 / 1.75) / 2))
    assert result["mc"] == ("multi-choice", pytest.approx(37.5))
    # the first 2 examples are both "yes": "yes" everywhere is right everywhere (Macro-F1 over the gold labels)
    assert floors.floors(data, "s", [1], 2)["cls"][1] == pytest.approx(100.0)
    # --examples dev reads the dev files: here one "yes" and one "no", so a constant label gets 2/3 / 2 F1
    (data / "cls" / "cls_16_1_dev.jsonl").write_text("".join(
        json.dumps({"task": "cls", "input": "d", "output": out, "options": ["no", "yes"]}) + "\n" for out in ("yes", "no")))
    shutil.copy(data / "mc" / "mc_16_1_test.jsonl", data / "mc" / "mc_16_1_dev.jsonl")
    assert floors.floors(data, "s", [1], None, "dev")["cls"][1] == pytest.approx(100 * (2 / 3) / 2)

    # eval results beside the floors: the margin over the floor and the ICL gain per task
    results = {"tasks": {"cls": {"mean": 50.0}, "mc": {"mean": 40.0}}}
    zero = {"result": {"tasks": {"cls": {"mean": 45.0}, "mc": {"mean": 41.5}}}}
    (tmp_path / "icl.json").write_text(json.dumps(results))
    (tmp_path / "zero.json").write_text(json.dumps(zero))
    assert floors.main(["--split", "s", "--data-dir", str(data), "--seeds", "1,2", "--icl", str(tmp_path / "icl.json"),
                        "--zero-shot", str(tmp_path / "zero.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "cls\tclassification\t42.9\t50.0\t+7.1\t45.0\t+5.0"
    assert lines[2] == "mc\tmulti-choice\t37.5\t40.0\t+2.5\t41.5\t-1.5"


def test_paired_test_with_one_constant_nonzero_difference_is_certain():
    """a beats b by exactly 2 in every cell: no spread, so the t-test's p-value is 0 and
    the interval collapses onto the difference."""
    result = paired_test([3.0, 4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 4.0])
    assert result["mean_diff"] == 2.0 and result["ci95"] == [2.0, 2.0]
    assert result["p_value_t"] == 0.0 and result["n"] == 4


def _hand_made_adapter(folder: Path, **config) -> Path:
    """A LoRA adapter of one module: A = ones(2, 3), B = ones(4, 2), so B @ A is 2 everywhere (12 entries)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 8, **config}))
    save_file({"m.q_proj.lora_A.weight": torch.ones(2, 3), "m.q_proj.lora_B.weight": torch.ones(4, 2)},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_update_size_script_measures_the_weight_change_of_lora_and_merged_runs(tmp_path, tiny_model_dir, capsys):
    """scripts/update_size.py: a LoRA adapter's change is scale * B @ A (scale alpha / r, or alpha / sqrt(r) under
    rsLoRA); on a real peft run it equals final/ minus the base model, weight by weight."""
    import torch
    import yaml
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from maml_en_llm.lora import apply_lora, save_lora_run
    from maml_en_llm.models import load_tokenizer

    update_size = load_script(SCRIPTS / "update_size.py")
    norm, count = update_size.lora_update_norm(_hand_made_adapter(tmp_path / "plain"))
    assert count == 1 and norm == pytest.approx(2 * (8 / 2) * math.sqrt(12))
    norm, _ = update_size.lora_update_norm(_hand_made_adapter(tmp_path / "rs", use_rslora=True))
    assert norm == pytest.approx(2 * (8 / math.sqrt(2)) * math.sqrt(12))

    # a real run folder, as train writes it: adapters with random B (peft starts B at zero), then merged
    run = tmp_path / "run"
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), rank=4, alpha=8.0, dropout=0.0,
                       targets="all-linear")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    save_lora_run(model, load_tokenizer(str(tiny_model_dir)), run / "adapter", run / "final", str(tiny_model_dir))
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "maml", "seed": 7, "steps": 3,
                                                     "inner_optimizer": "shared-adam-chain"}))
    (run / "run.json").write_text(json.dumps({"model": str(tiny_model_dir)}))
    lora, merged = update_size.measure(run), update_size.measure(run, merged=True)
    assert lora["kind"] == "adapter" and merged["kind"] == "merged - base" and lora["norm"] > 0.01
    assert merged["norm"] == pytest.approx(lora["norm"], rel=1e-4)
    assert update_size.main([str(run)]) == 0
    assert f"| run | maml | shared-adam-chain | 7 | 3 | adapter | {lora['weights']} | {lora['norm']:.4f} |" in \
        capsys.readouterr().out
    # a full fine-tuning run (no adapter/): final/ minus the base, named so
    full = tmp_path / "full"
    shutil.copytree(run / "final", full / "final")
    for name in ("config.yaml", "run.json"):
        shutil.copy(run / name, full / name)
    assert update_size.measure(full) == {**merged, "run": "full", "kind": "final - base"}
    # the base model itself measured as a run's final/ weights moved nowhere
    assert update_size.full_update_norm(tiny_model_dir, tiny_model_dir)[0] == 0.0

    # bad input: one line naming the folder or file and what to do
    with pytest.raises(SystemExit, match=r"no config.yaml; give a `train` or `compare` run folder"):
        update_size.measure(tmp_path / "plain")
    lonely = tmp_path / "lonely"
    shutil.copytree(tmp_path / "plain", lonely)
    save_file({"m.q_proj.lora_A.weight": torch.ones(2, 3)}, str(lonely / "adapter_model.safetensors"))
    with pytest.raises(SystemExit, match=r"m.q_proj.lora_A.weight has no m.q_proj.lora_B.weight"):
        update_size.lora_update_norm(lonely)
    other = tmp_path / "other"
    other.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(other / "model.safetensors"))
    with pytest.raises(SystemExit, match=r"weight model.embed_tokens.weight is \(3, 3\), the base's is"):
        update_size.full_update_norm(other, tiny_model_dir)
    (other / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"is not in the base model"):
        update_size.full_update_norm(run / "final", other)
