"""benchmarks/gpu_step.py (the timing part of scripts/gpu_check.sh) runs on CPU with a tiny model: rows for every
method, tokens and FLOPs that add up, LoRA rows run or say why not, and nothing of the training loop stays
patched afterwards."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import load_script

from maml_en_llm import models
from maml_en_llm import train as train_module
from maml_en_llm.config import TrainConfig

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"
HAS_LORA = "lora_rank" in {f.name for f in fields(TrainConfig)}


@pytest.fixture(scope="module")
def gpu_step():
    return load_script(SCRIPT)


def test_tiny_rows_on_cpu(gpu_step, tmp_path, capsys):
    real = (train_module.meta_step, train_module.save_checkpoint, train_module.save_lora_run, models.save_model)
    rows = gpu_step.main(["--models", "tiny", "--device", "cpu", "--dtype", "float32", "--steps", "1", "--k", "1",
                          "--example-chars", "30", "--tasks-per-step", "2", "--methods", "metaicl,fomaml,maml",
                          "--variants", "full,lora", "--in-process", "--json", str(tmp_path / "rows.json")])
    assert (train_module.meta_step, train_module.save_checkpoint, train_module.save_lora_run, models.save_model) == real
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert [(r["variant"], r["method"]) for r in rows] == [
        (v, m) for v in ("full", "lora") for m in ("metaicl", "fomaml", "maml")]
    table = capsys.readouterr().out
    assert table.count("\n| tiny |") == 6

    full = {r["method"]: r for r in rows if r["variant"] == "full"}
    for row in full.values():
        assert row["tokens_per_step"] > 0 and row["s_per_step"] > 0 and row["mfu"] is None  # no peak on CPU
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / row["s_per_step"])
        assert row["trainable_params"] > row["matmul_weights"]  # + embeddings and norms
    # metaicl: counted matmul FLOPs near 6 N T (below it: the LM head runs on target positions only, and CPU
    # attention is not counted); second-order maml runs a double backward on top of fomaml's work
    ratio = full["metaicl"]["flops_counted"] / full["metaicl"]["flops_6nt"]
    assert 0.6 < ratio <= 1.2
    assert full["maml"]["flops_counted"] > 1.5 * full["fomaml"]["flops_counted"]

    lora = [r for r in rows if r["variant"] == "lora"]
    if HAS_LORA:
        assert all(r["trainable_params"] < full[r["method"]]["trainable_params"] / 2 and r["s_per_step"] > 0
                   for r in lora)
    else:
        assert all("no lora_rank field" in r["skipped"] for r in lora)
        assert "no lora_rank field" in table


def test_first_maml_meta_gradient_under_lora_grows_as_one_over_adam_eps(tmp_path):
    """benchmarks/first_meta_step.py's claim (docs/training.md): LoRA's B starts at 0, so A's support gradients
    are 0 and differentiating through the first shared-Adam inner step adds a term of order 1 / adam_eps to
    second-order maml's first meta-gradient; fomaml's is independent of adam_eps; step 2 is back to normal."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        script = load_script(SCRIPT.parent / "first_meta_step.py")
    finally:
        sys.path.remove(str(SCRIPT.parent))
    model = script.write_model(tmp_path / "model", "tiny", "cpu")
    data = script.write_tasks(tmp_path / "data", example_chars=40)
    norms = {(method, eps): script.grad_norms(method, 4, eps, model, data, tmp_path / f"{method}-{eps}")
             for method in ("fomaml", "maml") for eps in (1e-8, 1e-6)}
    assert norms["fomaml", 1e-8][0] == pytest.approx(norms["fomaml", 1e-6][0], rel=1e-3)
    assert norms["maml", 1e-8][0] > 1000 * norms["fomaml", 1e-8][0]
    assert norms["maml", 1e-8][0] / norms["maml", 1e-6][0] == pytest.approx(100, rel=0.2)
    assert norms["maml", 1e-8][1] < 10 * norms["fomaml", 1e-8][1]

    # inner_adam_eps sets the inner steps' epsilon alone: the first meta-gradient (taken before any outer step) is
    # that of adam_eps = 1e-6 everywhere, while the outer AdamW keeps adam_eps = 1e-8, so step 2 differs from it
    inner_only = script.grad_norms("maml", 4, 1e-8, model, data, tmp_path / "maml-inner", inner_adam_eps=1e-6)
    assert inner_only[0] == pytest.approx(norms["maml", 1e-6][0], rel=1e-4)
    assert inner_only[1] != pytest.approx(norms["maml", 1e-6][1], rel=1e-3)


def _strict_sdpa_counts(flop_counter):
    """torch 2.11's SDPA shape formulas: key/value must have the query's number of heads."""
    def forward(query_shape, key_shape, value_shape):
        assert query_shape[1] == key_shape[1] == value_shape[1], "sdpa_flop_count: query/key/value shapes are incompatible"
        return 4 * query_shape[0] * query_shape[1] * query_shape[2] * key_shape[2] * query_shape[3]

    def backward(grad_out_shape, query_shape, key_shape, value_shape):
        assert query_shape[1] == key_shape[1] == value_shape[1], "sdpa_backward_flop_count: batch/heads mismatch"
        return 2 * forward(query_shape, key_shape, value_shape)

    return forward, backward


def test_grouped_query_attention_is_counted_as_the_kernel_runs_it(gpu_step, monkeypatch):
    from torch.utils import flop_counter

    query, key = (2, 8, 16, 4), (2, 2, 16, 4)  # 8 query heads share 2 key/value heads
    wide = (2, 8, 16, 4)
    # this torch (2.13) counts GQA itself: the patched count of the grouped call equals its own
    native_forward, native_backward = flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count
    with gpu_step.gqa_flop_counting():
        assert flop_counter.sdpa_flop_count(query, key, key) == native_forward(query, key, key) > 0
        assert (flop_counter.sdpa_backward_flop_count(query, query, key, key)
                == native_backward(query, query, key, key) > 0)
    # an older torch whose formulas refuse GQA: counted within the block, restored (still refusing) after it
    strict_forward, strict_backward = _strict_sdpa_counts(flop_counter)
    monkeypatch.setattr(flop_counter, "sdpa_flop_count", strict_forward)
    monkeypatch.setattr(flop_counter, "sdpa_backward_flop_count", strict_backward)
    with pytest.raises(AssertionError):
        flop_counter.sdpa_flop_count(query, key, key)
    with gpu_step.gqa_flop_counting():
        assert flop_counter.sdpa_flop_count(query, key, key) == strict_forward(query, wide, wide)
        assert flop_counter.sdpa_backward_flop_count(query, query, key, key) == strict_backward(query, query, wide, wide)
    assert (flop_counter.sdpa_flop_count, flop_counter.sdpa_backward_flop_count) == (strict_forward, strict_backward)


def test_the_warm_up_counts_flops_with_grouped_query_attention_allowed(gpu_step, monkeypatch, tmp_path):
    import contextlib

    entered = []

    @contextlib.contextmanager
    def spy():
        entered.append(True)
        yield

    monkeypatch.setattr(gpu_step, "gqa_flop_counting", spy)
    rows = gpu_step.main(["--models", "tiny", "--device", "cpu", "--dtype", "float32", "--steps", "1", "--k", "1",
                          "--example-chars", "30", "--tasks-per-step", "1", "--methods", "metaicl", "--variants",
                          "full", "--in-process", "--work-dir", str(tmp_path)])
    assert entered == [True] and rows[0]["flops_counted"] > 0


def test_profile_appends_each_rows_operator_table(gpu_step, tmp_path, capsys):
    profile = tmp_path / "profile.txt"
    rows = gpu_step.main(["--models", "tiny", "--device", "cpu", "--dtype", "float32", "--steps", "2", "--k", "1",
                          "--example-chars", "30", "--tasks-per-step", "1", "--methods", "metaicl,maml", "--variants",
                          "full", "--in-process", "--work-dir", str(tmp_path / "work"), "--profile", str(profile)])
    text = profile.read_text()
    assert text.count("## tiny full ") == 2 and "## tiny full maml: timed steps" in text
    assert "aten::" in text and "Self CPU" in text  # torch.profiler's operator table
    for row in rows:  # on CPU there is no kernel time to sum, only the operators' CPU time
        assert row["profiled"] and row["gpu_busy"] is None and 0 < row["profile_cpu_self_s"]
    assert "metaicl (profiled)" in capsys.readouterr().out
