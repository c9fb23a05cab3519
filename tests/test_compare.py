"""`compare` end to end on the tiny Llama and tiny tasks: the report files, caching and continuation, the token
budget, sweeps, and bad inputs that stop before any work."""

import json
import shutil

import pytest
from conftest import make_tiny_data

from maml_en_llm import compare as compare_module
from maml_en_llm.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECIPE = ["tasks_per_step=2", "support_size=1", "query_size=1", "lr=1e-3", "inner_lr=1e-2"]


ADAPT = ("--adapt-steps", "1", "--adapt-lr", "0.5")  # large enough to move a tiny model's scores


def compare_args(model_dir, data_dir, out, *extra, methods="none,metaicl,maml", budget=("--steps", "2")):
    return ["compare", "--split", "tiny", "--data-dir", str(data_dir), "--model", str(model_dir), "--methods", methods,
            *budget, "--k", "1", "--seeds", "100,13", "--max-test", "4", "--out", str(out), *extra, *RECIPE]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A width-64 model's matmuls are far too small to share out; on a busy 2-core machine extra threads only wait."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("compare_data") / "data")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir, data_dir):
    """One compare of none, metaicl and maml with adaptation, shared by the tests that read or re-run it."""
    out = tmp_path_factory.mktemp("compare") / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, *ADAPT)) == 0
    return out


def count_calls(monkeypatch):
    calls = {"train": [], "evaluate": []}
    real_train, real_evaluate = compare_module.train, compare_module.evaluate_model

    def counting_train(config, **kwargs):
        calls["train"].append(config.method)
        return real_train(config, **kwargs)

    def counting_evaluate(model, tokenizer, **kwargs):
        calls["evaluate"].append(model.config._name_or_path)
        return real_evaluate(model, tokenizer, **kwargs)

    monkeypatch.setattr(compare_module, "train", counting_train)
    monkeypatch.setattr(compare_module, "evaluate_model", counting_evaluate)
    return calls


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_report_files_hold_table_cis_tests_and_budget(first_run):
    report = json.loads((first_run / "compare.json").read_text())
    assert report["budget"]["equalised"] == "steps" and report["budget"]["steps"] == 2
    assert report["command"].startswith("maml-en-llm compare")
    from maml_en_llm import __version__

    assert report["provenance"]["package_version"] == __version__ and report["provenance"]["device"] == "cpu"
    assert report["eval"]["prompt"] == "direct"
    assert [row["label"] for row in report["rows"]] == ["none", "metaicl", "maml"]
    moved = []
    for row in report["rows"]:
        for block in ("icl", "adapted"):
            tasks = row["eval"][block]["tasks"]
            assert set(tasks) == {"cls_c", "cls_d"} and set(tasks["cls_c"]["per_seed"]) == {"100", "13"}
            per_seed_avg = {s: (tasks["cls_c"]["per_seed"][s] + tasks["cls_d"]["per_seed"][s]) / 2 for s in ("100", "13")}
            summary = row[block]["all"]
            assert summary["mean"] == pytest.approx(sum(per_seed_avg.values()) / 2)
            assert summary["worst"] == pytest.approx(min(per_seed_avg.values()))
            assert summary["n_cells"] == 4 and len(summary["ci95"]) == 2
            assert row[block]["unseen_domain"]["n_cells"] == 2  # cls_d x 2 seeds
        # what adaptation adds, cell by cell, is a block of its own (summarised, tabulated and tested like the rest)
        icl_cells, adapted_cells = result_cells_of(row, "icl"), result_cells_of(row, "adapted")
        assert result_cells_of(row, "adapt_gain") == pytest.approx(
            {cell: adapted_cells[cell] - icl_cells[cell] for cell in icl_cells})
        moved.append(adapted_cells != icl_cells)
        summary = {block: row[block]["all"]["mean"] for block in ("icl", "adapted", "adapt_gain")}
        assert summary["adapt_gain"] == pytest.approx(summary["adapted"] - summary["icl"])
        if row["method"] == "none":
            assert row["train"]["steps"] == 0
        else:
            run_dir = first_run / row["train"]["run"]
            assert run_dir.name.startswith(row["method"] + "-") and (run_dir / "final" / "config.json").exists()
            assert row["train"]["steps"] == 2 and row["train"]["tokens"] == metrics(run_dir)[-1]["total_tokens"] > 0
            assert row["train"]["wall_seconds"] > 0
    assert any(moved)  # else adapted - ICL would be zero whichever way it were taken
    headline = report["headline"]
    assert (headline["a"], headline["b"], headline["block"], headline["n"]) == ("maml", "metaicl", "icl", 4)
    for key in ("mean_diff", "ci95", "p_value_t", "p_value_wilcoxon", "significant_at_0.05"):
        assert key in headline
    assert {(t["b"], t["block"]) for t in report["paired_tests"]} >= {("metaicl", "adapted"), ("none", "icl"),
                                                                      ("metaicl", "adapt_gain")}

    markdown = (first_run / "compare.md").read_text()
    assert ("| method | steps | tokens | train s | all ICL | unseen domain ICL | all adapted | unseen domain adapted "
            "| all adapted - ICL | unseen domain adapted - ICL |") in markdown
    for label in ("none", "metaicl", "maml"):
        assert any(line.startswith(f"| {label} | ") and line.count("(") >= 4 for line in markdown.splitlines())
    assert "equal meta-steps: 2 per method" in markdown
    assert "**MAML-en-LLM vs MetaICL:** maml - metaicl (ICL, all)" in markdown and "significant at 0.05" in markdown

    png = (first_run / "compare.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_rerun_reuses_runs_and_evaluations(first_run, tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    calls = count_calls(monkeypatch)
    args = compare_args(tiny_model_dir, data_dir, out, *ADAPT)
    assert main(args) == 0
    assert calls == {"train": [], "evaluate": []}
    assert "| maml | 2 |" in capsys.readouterr().out

    metaicl_eval = next((out / "evals").glob("metaicl-*-icl-*.json"))
    metaicl_eval.unlink()
    assert main(args) == 0
    assert calls["train"] == [] and len(calls["evaluate"]) == 1 and "metaicl-" in calls["evaluate"][0]
    assert metaicl_eval.exists()

    runs_before = {p.name for p in (out / "runs").iterdir()}
    assert main([*args, "inner_steps=2"]) == 0  # a changed recipe field: new runs for both trained methods
    # two new models, each evaluated in context and zero-shot (the default diagnostic)
    assert calls["train"] == ["metaicl", "maml"] and len(calls["evaluate"]) == 1 + 2 * 2
    new_runs = {p.name for p in (out / "runs").iterdir()} - runs_before
    assert len(new_runs) == 2 and {name.split("-")[0] for name in new_runs} == {"metaicl", "maml"}


def test_killed_compare_resumes_training_from_its_checkpoint(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from maml_en_llm import train as train_module

    real_meta_step, seen = train_module.meta_step, []

    def killed_at_third_step(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:  # after step 2's checkpoint
            raise KeyboardInterrupt
        return real_meta_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "meta_step", killed_at_third_step)
    out = tmp_path / "out"
    args = compare_args(tiny_model_dir, data_dir, out, methods="none,metaicl", budget=("--steps", "3")) + [
        "checkpoint_every=2"]
    assert main(args) == 130
    run_dir = next((out / "runs").iterdir())
    assert [m["step"] for m in metrics(run_dir)] == [1, 2] and not (out / "compare.json").exists()

    monkeypatch.setattr(train_module, "meta_step", real_meta_step)
    calls = count_calls(monkeypatch)
    assert main(args) == 0
    assert calls["train"] == ["metaicl"] and [m["step"] for m in metrics(run_dir)] == [1, 2, 3]
    assert json.loads((out / "compare.json").read_text())["rows"][1]["train"]["steps"] == 3


def test_token_budget_gives_each_method_the_steps_that_reach_it(tmp_path, tiny_model_dir, data_dir):
    tokens = 600
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, methods="metaicl,multitask0",
                             budget=("--tokens", str(tokens)))) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["budget"] == {**report["budget"], "equalised": "tokens", "tokens": tokens}
    steps = {}
    for row in report["rows"]:
        lines = metrics(out / row["train"]["run"])
        assert lines[-1]["total_tokens"] >= tokens > lines[-2]["total_tokens"]
        assert row["train"]["steps"] == len(lines) and row["train"]["tokens"] == lines[-1]["total_tokens"]
        steps[row["method"]] = len(lines)
    assert steps["multitask0"] > steps["metaicl"]  # zero-shot instances are shorter: more steps for the same tokens
    assert "equal training tokens: 600 per method" in (out / "compare.md").read_text()


def test_sweep_gives_one_row_per_value_and_a_line_plot(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    import matplotlib.axes

    drawn = []
    for name in ("bar", "plot", "fill_between"):
        real = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(matplotlib.axes.Axes, name,
                            lambda self, *a, _name=name, _real=real, **kw: drawn.append(_name) or _real(self, *a, **kw))
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, "--sweep", "inner_steps=1,2", methods="none,maml")) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["sweep"] == {"field": "inner_steps", "values": ["1", "2"]}
    assert [row["label"] for row in report["rows"]] == ["none", "inner_steps=1", "inner_steps=2"]
    assert [row["recipe"]["inner_steps"] for row in report["rows"][1:]] == [1, 2]
    markdown = (out / "compare.md").read_text()
    assert "| inner_steps | steps |" in markdown and "\n| 1 | 2 |" in markdown and "\n| 2 | 2 |" in markdown
    assert "bar" not in drawn and "plot" in drawn and "fill_between" in drawn
    assert (out / "compare.png").read_bytes().startswith(PNG_SIGNATURE)


def assert_cell_mean(mean, one, two, block):
    """Every (task, seed) cell of the seed-mean row's block is the average of the two seeds' cells."""
    from maml_en_llm.metrics import result_cells

    cells = [result_cells(row["eval"][block]) for row in (one, two, mean)]
    assert cells[2] == pytest.approx({c: (cells[0][c] + cells[1][c]) / 2 for c in cells[0]})


def test_a_sweep_of_training_seeds_adds_their_mean_and_tests_it_and_each_seed_against_none(
        tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, "--sweep", "seed=1,2", "--diagnostics", "zero-shot",
                             methods="none,metaicl")) == 0
    report = json.loads((out / "compare.json").read_text())
    labels = [row["label"] for row in report["rows"]]
    assert labels == ["none", "seed=1", "seed=2", "seed mean"]
    none, one, two, mean = report["rows"]
    assert one["recipe"]["seed"] == 1 and two["recipe"]["seed"] == 2 and mean["pooled"] == ["seed=1", "seed=2"]
    for block in ("icl", "zero_shot", "icl_gain"):
        assert_cell_mean(mean, one, two, block)
        assert mean[block]["all"]["mean"] == pytest.approx((one[block]["all"]["mean"] + two[block]["all"]["mean"]) / 2)
    spread = mean["seed_spread"]["icl"]
    assert spread["means"] == [one["icl"]["all"]["mean"], two["icl"]["all"]["mean"]]
    assert spread["sd"] == pytest.approx(abs(spread["means"][0] - spread["means"][1]) / 2 ** 0.5)
    pairs = [(t["a"], t["b"]) for t in report["paired_tests"] if t["block"] == "icl" and t["subset"] == "all"]
    assert pairs == [("seed mean", "none"), ("seed=1", "none"), ("seed=2", "none")]
    markdown = (out / "compare.md").read_text()
    assert "\n| mean | " in markdown and "Across the 2 training seeds: all ICL " in markdown
    assert (out / "compare.png").read_bytes().startswith(PNG_SIGNATURE)


def test_train_seeds_give_each_method_a_seed_mean_row_tested_across_training_seeds(
        tmp_path, tiny_model_dir, data_dir, monkeypatch):
    import matplotlib.axes
    from scipy import stats

    dots = []
    real_scatter = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter",
                        lambda self, x, y, **kw: dots.append(list(y)) or real_scatter(self, x, y, **kw))
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, "--train-seeds", "1,2", "--diagnostics", "zero-shot")) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["train_seeds"] == [1, 2] and report["sweep"] is None
    by_label = {row["label"]: row for row in report["rows"]}
    assert list(by_label) == ["none", "metaicl", "maml", "metaicl seed=1", "metaicl seed=2", "maml seed=1",
                              "maml seed=2"]
    for method in ("metaicl", "maml"):
        mean, one, two = by_label[method], by_label[f"{method} seed=1"], by_label[f"{method} seed=2"]
        assert (one["recipe"]["seed"], two["recipe"]["seed"], one["seed_of"]) == (1, 2, method)
        assert mean["pooled"] == [one["label"], two["label"]] and mean["method"] == method
        for block in ("icl", "zero_shot", "icl_gain"):
            assert_cell_mean(mean, one, two, block)
            assert mean["seed_means"][block]["all"] == [one[block]["all"]["mean"], two[block]["all"]["mean"]]
    # only the method rows are tested, maml first against metaicl (the headline), then each method against the
    # untrained model, and across training seeds too
    pairs = [(t["a"], t["b"]) for t in report["paired_tests"] if t["block"] == "icl" and t["subset"] == "all"]
    assert pairs == [("maml", "metaicl"), ("maml", "none"), ("metaicl", "none")]
    headline, against_none, metaicl_against_none = (
        t for t in report["paired_tests"] if t["block"] == "icl" and t["subset"] == "all")
    assert report["headline"] == headline
    maml, metaicl = by_label["maml"]["seed_means"]["icl"]["all"], by_label["metaicl"]["seed_means"]["icl"]["all"]
    seed_level = headline["by_training_seed"]
    assert seed_level["mean_diff"] == pytest.approx(sum(maml) / 2 - sum(metaicl) / 2)
    assert seed_level["p_value"] == pytest.approx(stats.ttest_ind(maml, metaicl, equal_var=False).pvalue, nan_ok=True)
    none_mean = by_label["none"]["icl"]["all"]["mean"]
    assert against_none["by_training_seed"]["n_b"] is None
    assert against_none["by_training_seed"]["p_value"] == pytest.approx(
        stats.ttest_1samp(maml, none_mean).pvalue, nan_ok=True)
    assert metaicl_against_none["mean_diff"] == pytest.approx(
        by_label["metaicl"]["icl"]["all"]["mean"] - none_mean)  # the question meta-training must answer first
    assert metaicl_against_none["by_training_seed"]["p_value"] == pytest.approx(
        stats.ttest_1samp(metaicl, none_mean).pvalue, nan_ok=True)
    assert headline["verdict_level"] == "tasks and training seeds"
    markdown = (out / "compare.md").read_text()
    assert "\n| maml (mean of 2 seeds) | " in markdown and "\n| metaicl seed=2 | " in markdown
    assert "Across the 2 training seeds of maml: all ICL " in markdown and "over 2 training seeds against 2 training" \
        in markdown
    for method in ("metaicl", "maml"):  # each seed is a dot on its method's bars (all, unseen domain)
        seed_means = by_label[method]["seed_means"]["icl"]
        assert seed_means["all"] + seed_means.get("unseen_domain", []) in dots
    # the runs are the ones a compare with seed=N names: one cache serves both
    names = planned_run_names(tiny_model_dir, data_dir, tmp_path / "plan", "--train-seeds", "1,2")
    assert planned_run_names(tiny_model_dir, data_dir, tmp_path / "plan", "seed=2")[1:] == names[2::2]


def planned_run_names(model_dir, data_dir, out, *extra, methods="none,metaicl,maml"):
    from maml_en_llm.cli import build_parser

    args = build_parser().parse_args(compare_args(model_dir, data_dir, out, *extra, methods=methods))
    return [row.run_name for row in compare_module.plan_compare(args, "compare").rows]


def test_pooling_needs_two_seeds_and_other_sweeps_keep_their_first_value_as_reference():
    from maml_en_llm.compare_report import POOLED_LABEL, paired_tests, pooled_row
    from maml_en_llm.tasks import Split

    rows = [_row("none", {"t1": [0.0, 0.0], "t2": [0.0, 0.0]}), _row("seed=1", {"t1": [1.0, 2.0], "t2": [3.0, 4.0]})]
    for row in rows:
        row.update(method="none" if row["label"] == "none" else "metaicl", train={"steps": 2, "tokens": 10},
                   eval_wall_seconds=1.0)
    assert pooled_row(rows[1:], POOLED_LABEL, {"all": ["t1", "t2"]}, [0, 1]) is None
    rows.append({**_row("seed=2", {"t1": [3.0, 2.0], "t2": [1.0, 0.0]}), "method": "metaicl",
                 "train": {"steps": 4, "tokens": 30}, "eval_wall_seconds": 2.0})
    for row in rows:
        row["icl"] = {"all": {"mean": sum(result_cells_of(row).values()) / 4}}
    pooled = pooled_row(rows[1:], POOLED_LABEL, {"all": ["t1", "t2"]}, [0, 1])
    assert pooled["train"] == {"steps": 3, "tokens": 20} and pooled["icl"]["all"]["mean"] == pytest.approx(52.0)
    assert pooled["seed_spread"]["icl"]["means"] == [52.5, 51.5]
    split = Split("s", ("a",), ("t1", "t2"), (), "s.json")
    tests, _ = paired_tests(rows, split, sweep=True)  # without the mean row: every value against the first
    assert [(t["a"], t["b"]) for t in tests] == [("seed=2", "seed=1")]
    tests, _ = paired_tests(rows + [pooled], split, sweep=True)
    assert [(t["a"], t["b"]) for t in tests] == [("seed mean", "none"), ("seed=1", "none"), ("seed=2", "none")]
    assert tests[0]["mean_diff"] == pytest.approx(2.0)
    assert tests[0]["by_training_seed"]["mean_diff"] == pytest.approx(2.0) and "by_training_seed" not in tests[1]
    assert tests[0]["verdict_level"] == "tasks and training seeds" and tests[1]["verdict_level"] == "tasks"


def result_cells_of(row, block="icl"):
    from maml_en_llm.metrics import result_cells

    return result_cells(row["eval"][block])


@pytest.mark.parametrize("extra, needle", [
    (["--methods", "none,bogus"], "unknown method 'bogus'"),
    (["--sweep", "nonsense=1,2", "--methods", "maml"], "--sweep nonsense: not a recipe field"),
    (["--sweep", "inner_optimizer=sgd,rmsprop", "--methods", "maml"], "inner_optimizer"),
    (["--sweep", "inner_steps=1,2", "--methods", "metaicl,maml"], "exactly one trained method"),
    (["--methods", "maml", "k=4"], "use --k"),
    (["--train-seeds", "1,2", "--sweep", "seed=1,2", "--methods", "maml"], "--train-seeds and --sweep both given"),
    (["--train-seeds", "1", "--methods", "maml"], "give at least two seeds"),
    (["--train-seeds", "1,1", "--methods", "maml"], "repeats a seed"),
    (["--train-seeds", "1,x", "--methods", "maml"], "expected integers"),
    (["--train-seeds", "1,2", "--methods", "none"], "needs a trained method"),
    (["--train-seeds", "1,2", "--methods", "maml", "seed=3"], "conflicts with --train-seeds"),
    (["--methods", "maml", "--data-dir", "/nonexistent/data"], "data folder not found"),
    (["--jobs", "0"], "--jobs 0: give a number of processes"),
    (["--jobs", "2", "--train-jobs", "0"], "--train-jobs 0: give a number of processes"),
    (["--train-jobs", "1"], "without --jobs every training already runs alone"),
])
def test_bad_input_exits_2_before_any_work(tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys, extra, needle):
    calls = count_calls(monkeypatch)
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, *extra)) == 2  # a later --methods wins
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not out.exists() and calls == {"train": [], "evaluate": []}


def test_steps_and_tokens_together_are_refused(tmp_path, tiny_model_dir, data_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(compare_args(tiny_model_dir, data_dir, tmp_path / "out", budget=("--steps", "2", "--tokens", "9")))
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def test_seconds_budget_trains_each_method_the_steps_its_token_rate_fits(tmp_path, tiny_model_dir, data_dir,
                                                                        monkeypatch):
    """Equal wall-clock: each method trains the most steps whose episodes' tokens x its probed seconds per token fit
    in S. The probe is timed once and kept in the run folder, so a re-run trains and probes nothing."""
    from maml_en_llm import train as train_module

    probes = []
    real = train_module.seconds_per_step
    rates = {"metaicl": 0.002, "maml": 0.004}  # maml twice as slow per token, as on real models

    def fake_probe(config, **kwargs):
        probes.append(config.method)
        measured = real(config, **{**kwargs, "steps": 2})  # the real probe runs (and must not crash) ...
        per_step = sorted(t / n for t, n in zip(measured["times"], measured["tokens"]))  # times rounded to 1 us
        assert len(measured["tokens"]) == 2 and measured["seconds_per_token"] == pytest.approx(per_step[1], rel=1e-3)
        return {**measured, "seconds_per_token": rates[config.method]}  # ... with fixed rates

    monkeypatch.setattr(train_module, "seconds_per_step", fake_probe)
    out = tmp_path / "out"
    budget = 3.0
    args = compare_args(tiny_model_dir, data_dir, out, methods="metaicl,maml", budget=("--budget", f"seconds={budget}"))
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    for row in report["rows"]:
        if row["method"] == "none":
            continue
        rate, run_dir = rates[row["method"]], out / row["train"]["run"]
        per_step = [m["tokens"] for m in metrics(run_dir)]
        assert row["train"]["steps"] == len(per_step) >= 2
        # the steps trained fit the budget, and one more step (its tokens replayed from the same episodes) would not
        assert sum(per_step) * rate <= budget
        next_tokens = _next_episode_tokens(run_dir, len(per_step), tiny_model_dir, data_dir)
        assert (sum(per_step) + next_tokens) * rate > budget
        assert row["train"]["probe_seconds_per_token"] == rate
    steps = {row["method"]: row["train"]["steps"] for row in report["rows"]}
    assert steps["metaicl"] > steps["maml"] and sorted(probes) == ["maml", "metaicl"]
    assert report["budget"]["equalised"] == "seconds" and "equal wall-clock" in (out / "compare.md").read_text()
    assert main(args) == 0 and len(probes) == 2  # reused


def _next_episode_tokens(run_dir, step, tiny_model_dir, data_dir):
    """Tokens of the episode a run would train at `step`, through the train loop's own episode sampler."""
    from maml_en_llm.config import make_config
    from maml_en_llm.models import load_tokenizer
    from maml_en_llm.prompts import make_tokenize
    from maml_en_llm.train import episode_of, episode_token_count, load_training_tasks, training_format

    config = make_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tasks = load_training_tasks(config, data_dir, "tiny")
    episode = episode_of(config, tasks, step, make_tokenize(tokenizer), training_format(config, tokenizer))
    return episode_token_count(episode)


@pytest.mark.parametrize("budget, message", [
    (("--budget", "hours=2"), "expected steps=N, tokens=N or seconds=S"),
    (("--budget", "seconds=abc"), "'abc' is not a number"),
    (("--budget", "steps=0"), "must be at least 1"),
])
def test_bad_budgets_are_one_line_errors(tmp_path, tiny_model_dir, data_dir, capsys, budget, message):
    assert main(compare_args(tiny_model_dir, data_dir, tmp_path / "out", budget=budget)) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_jobs_with_a_seconds_budget_is_refused(tmp_path, tiny_model_dir, data_dir, capsys):
    """Timing probes that share the device with other rows' work would give each method the wrong steps."""
    args = compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2", budget=("--budget", "seconds=5"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--jobs 2 with --budget seconds" in err and "\n" not in err and not (tmp_path / "out").exists()


def test_jobs_train_and_evaluate_the_rows_in_worker_processes_with_the_same_results(
        first_run, tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys):
    """`--jobs 3` does every training and evaluation in spawned workers (this process only plans and tabulates,
    so the counting wrappers here see no call) and gives the runs, run names and numbers of the sequential
    compare."""
    calls = count_calls(monkeypatch)
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, *ADAPT, "--jobs", "3")) == 0
    assert calls == {"train": [], "evaluate": []}
    assert "(3 rows to train or evaluate) in 3 worker processes" in capsys.readouterr().out
    assert {p.name for p in (out / "runs").iterdir()} == {p.name for p in (first_run / "runs").iterdir()}
    assert {p.name for p in (out / "evals").iterdir()} == {p.name for p in (first_run / "evals").iterdir()}
    parallel, sequential = (json.loads((d / "compare.json").read_text())["rows"] for d in (out, first_run))
    assert [row["label"] for row in parallel] == [row["label"] for row in sequential]
    for a, b in zip(parallel, sequential):
        assert a["train"]["steps"] == b["train"]["steps"]
        for block in ("icl", "adapted", "zero_shot"):
            assert result_cells_of(a, block) == pytest.approx(result_cells_of(b, block), abs=1e-6)

    assert main(compare_args(tiny_model_dir, data_dir, out, *ADAPT, "--jobs", "3")) == 0
    assert "worker processes" not in capsys.readouterr().out  # all done: no worker is started

    # a run whose final model is gone while its evaluations are still cached is trained again by a worker too
    shutil.rmtree(next((out / "runs").glob("metaicl-*")) / "final")
    assert main(compare_args(tiny_model_dir, data_dir, out, *ADAPT, "--jobs", "3")) == 0
    assert "1 work item (1 row to train or evaluate) in 1 worker processes" in capsys.readouterr().out
    assert calls == {"train": [], "evaluate": []} and next((out / "runs").glob("metaicl-*/final/config.json"))


def test_jobs_evaluate_the_untrained_row_first(tmp_path, tiny_model_dir, data_dir):
    """A compare cut short (a lent GPU's time limit) must still hold the baseline every comparison needs."""
    from maml_en_llm.cli import build_parser

    args = build_parser().parse_args(compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2",
                                                  "--train-seeds", "1,2", methods="metaicl,none"))
    plan = compare_module.plan_compare(args, "compare")
    ready, _ = compare_module.work_items(plan)
    labels = list(dict.fromkeys(plan.rows[item[1]].label for item in ready))
    assert labels[0] == "none" and sorted(labels[1:]) == sorted(r.label for r in plan.rows if r.label != "none")


def test_jobs_run_each_evaluation_as_its_own_work_item_once_its_row_is_trained(tmp_path, tiny_model_dir, data_dir):
    """A row's in-context and diagnostic evaluations are separate items, so --jobs 2 runs them side by side; a
    trained row's evaluations wait for its training, the untrained row's start at once."""
    from maml_en_llm.cli import build_parser

    args = build_parser().parse_args(compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2",
                                                  "--diagnostics", "zero-shot", methods="none,metaicl"))
    plan = compare_module.plan_compare(args, "compare")
    none, metaicl = (next(i for i, row in enumerate(plan.rows) if row.label == label) for label in ("none", "metaicl"))
    ready, after_training = compare_module.work_items(plan)
    assert ready == [("eval", none, "icl"), ("eval", none, "zero_shot"), ("train", metaicl)]
    assert after_training == {metaicl: [("eval", metaicl, "icl"), ("eval", metaicl, "zero_shot")]}


def test_jobs_start_trainings_before_the_evaluations_of_rows_trained_before(tmp_path, tiny_model_dir, data_dir,
                                                                           monkeypatch):
    """A training unlocks evaluations of its own, so with rows trained before (runs reused from another folder) it
    starts right after the untrained row's evaluations, and the finished rows' evaluations fill the other workers:
    otherwise `--train-jobs 1` would leave the trainings, and what waits on them, to the end."""
    from maml_en_llm.cli import build_parser

    args = build_parser().parse_args(compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2",
                                                  "--diagnostics", "zero-shot", methods="none,metaicl,maml"))
    plan = compare_module.plan_compare(args, "compare")
    none, metaicl, maml = (next(i for i, row in enumerate(plan.rows) if row.label == label)
                           for label in ("none", "metaicl", "maml"))
    monkeypatch.setattr(compare_module, "_run_finished", lambda plan, row: row.method == "metaicl")
    ready, after_training = compare_module.work_items(plan)
    assert ready == [("eval", none, "icl"), ("eval", none, "zero_shot"), ("train", maml),
                     ("eval", metaicl, "icl"), ("eval", metaicl, "zero_shot")]
    assert after_training == {maml: [("eval", maml, "icl"), ("eval", maml, "zero_shot")]}


def test_train_jobs_hold_trainings_back_and_let_evaluations_use_the_free_workers():
    """--train-jobs M: at most M running trainings; a held-back training keeps its place in the queue while the
    evaluations behind it start on the free workers; no worker is filled past --jobs."""
    start = compare_module.items_to_start
    train = [("train", 1), ("train", 2), ("train", 3)]
    assert start(train, [], 2, 2) == train[:2]
    assert start(train, [], 2, 1) == train[:1]
    assert start(train + [("eval", 0, "icl")], [("train", 1)], 2, 1) == [("eval", 0, "icl")]
    assert start([("eval", 1, "icl"), ("train", 2)], [("eval", 0, "icl")], 3, 1) == [("eval", 1, "icl"), ("train", 2)]
    assert start([("eval", 1, "icl"), ("train", 2)], [("train", 3), ("eval", 0, "icl")], 3, 1) == [("eval", 1, "icl")]
    assert start(train, [("eval", 0, "icl"), ("eval", 0, "zero_shot")], 2, 2) == []


def test_train_jobs_1_trains_one_row_at_a_time_and_gives_the_same_runs(first_run, tmp_path, tiny_model_dir,
                                                                        data_dir, capfd):
    """End to end through the worker pool: with --jobs 2 --train-jobs 1 the maml training starts only once the
    metaicl training has finished, and the runs and evaluation files are those of the sequential compare."""
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, *ADAPT, "--jobs", "2",
                             "--train-jobs", "1")) == 0
    printed = capfd.readouterr().out
    assert "in 2 worker processes (--jobs 2, at most 1 training)" in printed
    first, second = sorted(("metaicl", "maml"), key=lambda m: printed.index(f"== training {m}"))
    assert printed.index(f"== worker finished {first} (training)") < printed.index(f"== training {second}")
    assert {p.name for p in (out / "runs").iterdir()} == {p.name for p in (first_run / "runs").iterdir()}
    assert {p.name for p in (out / "evals").iterdir()} == {p.name for p in (first_run / "evals").iterdir()}


def _worker_that_dies(plan, item, threads):
    import os

    os._exit(3)  # what the kernel's out-of-memory killer leaves behind: no exception, just a dead process


def test_a_worker_that_dies_is_a_one_line_error(tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(compare_module, "_work", _worker_that_dies)
    args = compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2", methods="none,metaicl")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "compare --jobs 2: a worker process died" in err and "\n" not in err
    assert not (tmp_path / "out" / "compare.json").exists()


def _worker_out_of_memory(plan, item, threads):
    import torch

    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")


def test_a_worker_out_of_accelerator_memory_is_a_one_line_error(tmp_path, tiny_model_dir, data_dir, monkeypatch,
                                                                  capsys):
    """The error crosses the process boundary as itself, so the CLI names the memory knobs (--jobs among them)."""
    monkeypatch.setattr(compare_module, "_work", _worker_out_of_memory)
    args = compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--jobs", "2", methods="none,metaicl")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().startswith("error: out of accelerator memory (CUDA out of memory")
    assert "compare --jobs" in err and not (tmp_path / "out" / "compare.json").exists()


def test_diagnostics_add_zero_shot_icl_gain_random_label_gain_and_symbol_columns(tmp_path, tiny_model_dir, data_dir):
    """Every row is also evaluated zero-shot, with random demonstration labels and with symbol labels; the ICL
    gain is the cell-by-cell difference of in-context and zero-shot, ICL - random that of in-context and
    random-label ICL; validation curves reach the report."""
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, "--diagnostics", "zero-shot,random,symbols",
                             methods="none,metaicl", budget=("--steps", "2"))
                + ["eval_every=1", "eval_max_test=2"]) == 0
    report = json.loads((out / "compare.json").read_text())
    for row in report["rows"]:
        blocks = row["eval"]
        assert {"icl", "zero_shot", "icl_gain", "random", "label_gain", "symbols"} <= set(blocks)
        for task, entry in blocks["icl_gain"]["tasks"].items():
            for seed, gain in entry["per_seed"].items():
                expected = blocks["icl"]["tasks"][task]["per_seed"][seed] - blocks["zero_shot"]["tasks"][task]["per_seed"][seed]
                assert gain == pytest.approx(expected)
        # what the gold labels add over random ones: in-context minus random-label ICL, cell by cell
        label_gain, icl, random = (result_cells_of(row, block) for block in ("label_gain", "icl", "random"))
        assert label_gain == pytest.approx({cell: icl[cell] - random[cell] for cell in icl})
        assert row["label_gain"]["all"]["mean"] == pytest.approx(row["icl"]["all"]["mean"] - row["random"]["all"]["mean"])
        assert blocks["symbols"]["applied"] == {"cls_c": True, "cls_d": True}
    trained = next(row for row in report["rows"] if row["method"] == "metaicl")
    assert [point["step"] for point in trained["validation"]] == [0, 1, 2]
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    markdown = (out / "compare.md").read_text()
    assert "all ICL gain" in markdown and "all random-label ICL" in markdown and "all symbol ICL" in markdown
    assert "all ICL - random" in markdown
    assert ("metaicl", "none", "label_gain") in {(t["a"], t["b"], t["block"]) for t in report["paired_tests"]}


def test_each_difference_block_is_its_first_block_minus_its_second_cell_by_cell():
    """The tiny model scores random labels like gold ones, so the end-to-end test above cannot see the sign of
    ICL - random; distinct synthetic scores can, for every difference block."""
    from maml_en_llm.compare_report import add_differences

    def block(*values):
        return {"tasks": {"t": {"per_seed": {"1": values[0], "2": values[1]}}}}

    blocks = {"icl": block(50.0, 60.0), "adapted": block(53.0, 61.0), "zero_shot": block(40.0, 45.0),
              "random": block(47.0, 52.0)}
    add_differences(blocks)
    cells = {name: blocks[name]["tasks"]["t"]["per_seed"] for name in ("adapt_gain", "icl_gain", "label_gain")}
    assert cells == {"adapt_gain": pytest.approx({"1": 3.0, "2": 1.0}), "icl_gain": pytest.approx({"1": 10.0, "2": 15.0}),
                     "label_gain": pytest.approx({"1": 3.0, "2": 8.0})}
    only_icl = {"icl": block(50.0, 60.0)}
    add_differences(only_icl)
    assert set(only_icl) == {"icl"}  # a difference needs both of its blocks


def test_unknown_diagnostic_is_a_one_line_error(tmp_path, tiny_model_dir, data_dir, capsys):
    assert main(compare_args(tiny_model_dir, data_dir, tmp_path / "out", "--diagnostics", "zero-shot,tea")) == 2
    assert "--diagnostics: unknown 'tea'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _row(label, diffs_by_task):
    """A compare row whose ICL cells are 50 + the given per-seed values, for paired_tests."""
    tasks = {task: {"per_seed": {str(seed): 50.0 + v for seed, v in enumerate(values)}}
             for task, values in diffs_by_task.items()}
    return {"label": label, "method": label, "icl": {"all": {}}, "eval": {"icl": {"tasks": tasks}}}


def test_verdict_is_the_task_level_test_when_cells_alone_would_call_it_significant():
    from maml_en_llm.compare_report import _test_text, paired_tests
    from maml_en_llm.tasks import Split

    # two tasks gain 3 points on every seed, one loses 1: 15 cells look significant, 3 task means do not
    gains = {"t1": [3.0, 3.1, 2.9, 3.0, 3.05], "t2": [2.9, 3.0, 3.1, 3.0, 2.95], "t3": [-1.0, -0.9, -1.1, -1.0, -1.05]}
    rows = [_row("metaicl", {t: [0.0] * 5 for t in gains}), _row("maml", gains)]
    split = Split("s", ("a",), tuple(gains), ("t3",), "s.json")
    tests, headline = paired_tests(rows, split, sweep=False)
    assert headline is tests[0] and (headline["a"], headline["b"], headline["subset"]) == ("maml", "metaicl", "all")
    assert headline["n"] == 15 and headline["p_value_t"] < 0.01  # the cell-level test alone says significant
    assert headline["by_task"]["n"] == 3 and headline["by_task"]["p_value_t"] > 0.05
    assert headline["mean_diff"] == pytest.approx(sum(map(sum, gains.values())) / 15)
    assert headline["by_task"]["mde_80"] > headline["mde_80"]
    assert headline["verdict_level"] == "tasks" and headline["significant_at_0.05"] is False
    assert _test_text(headline).endswith("not significant at 0.05 (task level)")
    # one task (the unseen-domain subset): its seeds are the only replication, so they decide
    single = tests[1]
    assert single["subset"] == "unseen_domain" and single["by_task"]["n"] == 1
    assert single["verdict_level"] == "cells" and single["significant_at_0.05"] is True
    assert _test_text(single).endswith("significant at 0.05 (cell level)")
    # every task gaining on every seed is significant at the task level too
    rows = [_row("metaicl", {t: [0.0] * 5 for t in gains}), _row("maml", {**gains, "t3": [2.0, 2.1, 1.9, 2.0, 2.2]})]
    assert paired_tests(rows, split, sweep=False)[1]["significant_at_0.05"] is True


def test_with_training_seeds_the_verdict_needs_the_seed_level_test_too():
    from maml_en_llm.compare_report import _test_text, paired_tests
    from maml_en_llm.tasks import Split

    gains = {"t1": [3.0, 3.1, 2.9], "t2": [2.9, 3.0, 3.1], "t3": [2.0, 2.1, 1.9]}  # every task gains: task level holds
    split = Split("s", ("a",), tuple(gains), (), "s.json")

    def verdict(maml_seeds, metaicl_seeds):
        rows = [_row("metaicl", {t: [0.0] * 3 for t in gains}), _row("maml", gains)]
        for row, means in zip(rows, (metaicl_seeds, maml_seeds)):
            row["seed_means"] = {"icl": {"all": means}}
        headline = paired_tests(rows, split, sweep=False)[1]
        assert headline["by_task"]["p_value_t"] < 0.05 and headline["verdict_level"] == "tasks and training seeds"
        return headline

    steady = verdict([52.6, 52.7, 52.8], [50.0, 49.9, 50.1])
    assert steady["significant_at_0.05"] is True and steady["by_training_seed"]["p_value"] < 0.05
    assert _test_text(steady).endswith("significant at 0.05 (task level and training seeds)")
    assert "over 3 training seeds against 3 training seeds: 95% CI" in _test_text(steady)
    shaky = verdict([58.0, 47.0, 53.1], [50.0, 49.9, 50.1])  # the same mean, but another seed could undo it
    assert shaky["by_training_seed"]["p_value"] > 0.05 and shaky["significant_at_0.05"] is False
    assert _test_text(shaky).endswith("not significant at 0.05 (task level and training seeds)")


def test_probe_written_before_the_token_rate_keeps_its_run_steps(tmp_path):
    """A compare resumed from an older version finds probe.json without seconds_per_token: floor(S / median),
    the steps that run was started with."""
    from types import SimpleNamespace

    (tmp_path / "probe.json").write_text(json.dumps({"median": 4.0, "times": [4.0, 3.0, 5.0], "threads": 1}))
    plan = SimpleNamespace(budget={"equalised": "seconds", "seconds": 90.0})
    assert compare_module.probe_steps(plan, SimpleNamespace(label="metaicl"), tmp_path) == 22


def test_memory_is_handed_back_after_each_training_and_each_evaluation(tmp_path, tiny_model_dir, data_dir,
                                                                       monkeypatch):
    """A compare process trains rows one after another, then evaluates: what one stage freed must not stay in the
    process's heap while the next runs (models.release_memory; a 5 GB difference on the default model)."""
    events = []
    real_train, real_evaluate = compare_module.train, compare_module.evaluate_model

    def train(config, **kwargs):
        events.append(f"train {config.method}")
        return real_train(config, **kwargs)

    def evaluate(model, tokenizer, **kwargs):
        events.append("evaluate")
        return real_evaluate(model, tokenizer, **kwargs)

    monkeypatch.setattr(compare_module, "train", train)
    monkeypatch.setattr(compare_module, "evaluate_model", evaluate)
    monkeypatch.setattr(compare_module, "release_memory", lambda: events.append("release"))
    out = tmp_path / "out"
    assert main(compare_args(tiny_model_dir, data_dir, out, "--diagnostics", "none", methods="none,metaicl,fomaml",
                             budget=("--steps", "1"))) == 0
    assert events == ["train metaicl", "release", "train fomaml", "release", *["evaluate", "release"] * 3]


def test_a_field_added_later_enters_run_names_only_when_set(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """inner_adam_eps and batch_tasks came after compare folders held cached runs: left at their defaults, a row
    keeps the name it had before the fields existed (so those runs are reused); set, they name a new run, but only
    for a method that reads them (inner_adam_eps: maml; batch_tasks: metaicl)."""
    from maml_en_llm.config import TrainConfig

    def run_names(*extra):
        return planned_run_names(tiny_model_dir, data_dir, tmp_path / "out", *extra, methods="metaicl,maml")

    unset, explicit_null, raised = run_names(), run_names("inner_adam_eps=null"), run_names("inner_adam_eps=1e-4")
    explicit_false, batched = run_names("batch_tasks=false"), run_names("batch_tasks=true")
    real_to_dict = TrainConfig.to_dict
    monkeypatch.setattr(TrainConfig, "to_dict",  # the recipe as it was written before the fields existed
                        lambda self: {k: v for k, v in real_to_dict(self).items()
                                      if k not in ("inner_adam_eps", "batch_tasks")})
    assert unset == explicit_null == explicit_false == run_names()
    (metaicl, maml), (metaicl_raised, maml_raised), (metaicl_batched, maml_batched) = unset, raised, batched
    assert metaicl_raised == metaicl and maml_raised != maml
    assert metaicl_batched != metaicl and maml_batched == maml
    assert not (tmp_path / "out").exists()


def test_rows_train_on_the_pools_loaded_while_planning(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """The sequential compare hands each row's planned pools to train(), which then does not read them again (two
    copies of a large split's pools otherwise); --jobs workers get a plan without pools and load their own."""
    from maml_en_llm import train as train_module
    from maml_en_llm.cli import build_parser

    loads = []
    real = train_module.load_training_tasks
    monkeypatch.setattr(train_module, "load_training_tasks", lambda *a, **kw: loads.append(1) or real(*a, **kw))
    assert main(compare_args(tiny_model_dir, data_dir, tmp_path / "out", methods="none,metaicl")) == 0
    assert loads == [] and next((tmp_path / "out" / "runs").glob("metaicl-*/final/config.json"))

    args = build_parser().parse_args(compare_args(tiny_model_dir, data_dir, tmp_path / "out2", "--jobs", "2"))
    plan = compare_module.plan_compare(args, "compare")
    light = compare_module.worker_plan(plan)
    assert all(row.tasks is None for row in light.rows)
    assert all(row.tasks for row in plan.rows if row.method != "none")  # the parent's plan keeps them
    assert [(r.label, r.run_name, r.config, r.evals) for r in light.rows] == [
        (r.label, r.run_name, r.config, r.evals) for r in plan.rows]
