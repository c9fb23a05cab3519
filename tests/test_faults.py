"""Faults during a run lose nothing: a diverging run stops before the bad update, a full disk leaves the previous
checkpoint usable, checkpoints are fsynced before their rename, a kill -9 (a real one, of a real
`python -m maml_en_llm` process) during `train` or `compare` continues to the same result, and resumed optimizer
state keeps AdamW's step counters on the CPU. docs/reliability.md lists these tests."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_data
from safetensors.torch import load_file

from maml_en_llm import checkpoint as checkpoint_module
from maml_en_llm import train as train_module
from maml_en_llm.checkpoint import latest_valid, load_checkpoint, save_checkpoint, verify
from maml_en_llm.cli import main

HOOK = Path(__file__).parent / "kill_hook"
RECIPE = ["steps=4", "checkpoint_every=2", "k=1", "tasks_per_step=2", "support_size=1", "query_size=1", "lr=1e-3",
          "inner_lr=1e-2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("faults_data") / "data")


def train_argv(model_dir, data_dir, out, *extra):
    return ["train", "--method", "maml", "--model", str(model_dir), "--data-dir", str(data_dir), "--split", "tiny",
            "--out", str(out), *RECIPE, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, data_dir):
    """An uninterrupted 4-step maml run (shared-adam inner steps: the optimizer state matters) to compare with."""
    out = tmp_path_factory.mktemp("faults_reference") / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out)) == 0
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timeless_metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "tokens_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    """The run's one `error:` line, its last words (progress bars of the steps that ran come before it)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert errors[0].startswith("error: ") and err.rstrip().endswith(errors[0]), err[-2000:]
    return errors[0]


# ---------------------------------------------------------------- divergence


def poison_call(monkeypatch, number: int, poison: str) -> list:
    """Make the training loop's `number`-th task-function call give a NaN gradient (poison="gradient") or an
    infinite loss ("loss"); returns the list of the calls' episode arguments (one task each, or a meta-step's
    tasks under batch_tasks)."""
    real_task_function, calls = train_module.task_function, []

    def poisoned_task_function(*args, **kwargs):
        step_task = real_task_function(*args, **kwargs)

        def step(model, params, episode, pad_id):
            calls.append(episode)
            result = step_task(model, params, episode, pad_id)
            if len(calls) == number:
                if poison == "gradient":
                    next(iter(params.values())).grad.view(-1)[0] = float("nan")
                else:
                    result = dataclasses.replace(result, loss=float("inf"))
            return result
        step.over_tasks = getattr(step_task, "over_tasks", False)  # batch_tasks: one call per meta-step
        return step

    monkeypatch.setattr(train_module, "task_function", poisoned_task_function)
    return calls


@pytest.mark.parametrize("poison", ["gradient", "loss"])
def test_non_finite_loss_or_gradient_stops_and_keeps_the_last_good_checkpoint(
        poison, tmp_path, tiny_model_dir, data_dir, reference, monkeypatch, capsys):
    real_task_function = train_module.task_function
    poison_call(monkeypatch, 5, poison)  # the first task of meta-step 3 (2 tasks per step), after the step-2 checkpoint
    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out)) == 2
    line = one_error_line(capsys)
    expected = "non-finite gradient norm (nan)" if poison == "gradient" else "non-finite loss (inf)"
    assert expected in line and "last checkpoint in --out is the last good state" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert verify(out / "checkpoints" / "step-00000002") is None and not (out / "final").exists()
    assert steps_logged(out) == [1, 2]
    # the kept checkpoint is exactly the uninterrupted run's step 2, and resuming from it ends identically
    assert_same_weights(out / "checkpoints" / "step-00000002", reference / "checkpoints" / "step-00000002")
    monkeypatch.setattr(train_module, "task_function", real_task_function)
    assert main(train_argv(tiny_model_dir, data_dir, out, "--resume")) == 0
    assert_same_weights(out / "final", reference / "final")


def test_a_nan_gradient_under_batch_tasks_stops_before_the_update(tmp_path, tiny_model_dir, data_dir, monkeypatch,
                                                                  capsys):
    """metaicl with batch_tasks=true: one call per meta-step gets all its tasks; a NaN in meta-step 3's gradient
    stops the run there with the step-2 checkpoint intact, and a resume finishes it."""
    real_task_function = train_module.task_function
    calls = poison_call(monkeypatch, 3, "gradient")
    out = tmp_path / "run"
    argv = [a if a != "maml" else "metaicl" for a in train_argv(tiny_model_dir, data_dir, out, "batch_tasks=true")]
    assert main(argv) == 2
    assert [len(episodes) for episodes in calls] == [2, 2, 2]  # each call held the step's 2 tasks
    assert "non-finite gradient norm (nan)" in one_error_line(capsys)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"] and steps_logged(out) == [1, 2]
    monkeypatch.setattr(train_module, "task_function", real_task_function)
    assert main(argv + ["--resume"]) == 0 and (out / "final").exists() and steps_logged(out) == [1, 2, 3, 4]


# ---------------------------------------------------------------- full disk


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, tiny_model_dir, data_dir, reference,
                                                                    monkeypatch, capsys):
    real_save = checkpoint_module._save_torch

    def disk_fills_up(obj, path):
        if path.name == "optimizer.pt" and "step-00000004" in path.parent.name:
            path.write_bytes(b"\x00" * 1000)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint_module, "_save_torch", disk_fills_up)
    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out)) == 2
    line = one_error_line(capsys)
    assert "could not write checkpoint step-00000004 (No space left on device)" in line
    assert "the previous checkpoint step-00000002 is intact" in line and "--resume" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no half-written folder
    assert verify(out / "checkpoints" / "step-00000002") is None
    monkeypatch.setattr(checkpoint_module, "_save_torch", real_save)
    assert main(train_argv(tiny_model_dir, data_dir, out, "--resume")) == 0
    assert_same_weights(out / "final", reference / "final")


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A real, tiny file system that fills up: a tmpfs mounted on a temporary folder (needs root or
    CAP_SYS_ADMIN; skipped elsewhere)."""
    mounts = []

    def mount(size_bytes: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the injected "
                        "ENOSPC test covers the same path")
        mounts.append(point)
        return point

    if not shutil.which("mount") or sys.platform != "linux":
        pytest.skip("needs Linux and mount(8) for a tmpfs")
    yield mount
    for point in mounts:  # lazily if a failed test still holds a file open there: never leave a mount behind
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], check=True)


def test_full_disk_on_a_real_tmpfs_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, data_dir, reference,
                                                                  small_tmpfs, capsys):
    one_checkpoint = sum(f.stat().st_size for f in (reference / "checkpoints" / "step-00000002").iterdir())
    disk = small_tmpfs(int(one_checkpoint * 1.6))  # room for the first checkpoint, not for a second beside it
    out = disk / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out)) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "the previous checkpoint step-00000002 is intact" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert verify(out / "checkpoints" / "step-00000002") is None
    moved = tmp_path / "moved"  # the user frees space (here: moves the run to a larger disk) and resumes
    shutil.copytree(out, moved)
    assert main(train_argv(tiny_model_dir, data_dir, moved, "--resume")) == 0
    assert_same_weights(moved / "final", reference / "final")


def test_disk_full_while_writing_eval_results_is_one_line(tmp_path, tiny_model_dir, data_dir, monkeypatch, capsys):
    from maml_en_llm import evaluate

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(evaluate, "atomic_write_text", full)
    folder = tmp_path / "eval"
    out = folder / "results.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--out",
                 str(folder), "--k", "1", "--seeds", "100", "--max-test", "2"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and lines == [f"error: {out}: No space left on device; free disk space or fix "
                                                "permissions, then run the same command again (train: with --resume; "
                                                "finished runs and evaluations are reused)"]
    assert not out.exists()


# ---------------------------------------------------------------- durability


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="maps fsync'ed descriptors to paths via /proc")
def test_checkpoint_files_and_folder_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def spy_replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(checkpoint_module.os, "replace", spy_replace)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    final = save_checkpoint(tmp_path, 7, {"w": param}, optimizer, scheduler, {"tokens": 0})

    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) == 1 and events[renames[0]][2] == str(final)
    tmp = events[renames[0]][1]
    synced_before = {e[1] for e in events[:renames[0]] if e[0] == "fsync"}
    expected = {f"{tmp}/{name}" for name in (*checkpoint_module.FILES, "MANIFEST.json")} | {tmp}
    assert expected <= synced_before, expected - synced_before
    assert ("fsync", str(final.parent)) in events[renames[0] + 1:]  # the rename itself reaches the disk


def test_leftover_temporary_folders_are_removed_on_the_next_start(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    leftover = root / ".tmp-step-00000004-99999999"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    assert latest_valid(tmp_path) is None and not leftover.exists()
    assert "removed .tmp-step-00000004-99999999" in capsys.readouterr().err


# ---------------------------------------------------------------- optimizer state on resume


def test_resumed_optimizer_step_counters_stay_on_the_cpu(tmp_path):
    """Parameters on another device (here 'meta', which any machine has; on CUDA the same holds) get their moments
    moved to it, while AdamW's `step` stays a CPU tensor as AdamW itself keeps it."""
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(4)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = save_checkpoint(tmp_path, 1, {"w": param}, optimizer, scheduler, {"tokens": 0})

    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        moved = torch.nn.Parameter(torch.zeros(4, device=device))
        resumed = torch.optim.AdamW([moved], lr=0.1)
        load_checkpoint(path, {"w": moved}, resumed, torch.optim.lr_scheduler.LambdaLR(resumed, lambda s: 1.0))
        state = resumed.state[moved]
        assert state["step"].device.type == "cpu" and float(state["step"]) == 1.0
        assert state["exp_avg"].device.type == device and state["exp_avg_sq"].device.type == device


# ---------------------------------------------------------------- real kill -9 of a child process


def run_until_killed(argv: list[str], tmp: Path, pause: str, count: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """Start `python -m maml_en_llm ARGV`, let tests/kill_hook stop it at `pause` (module:function:N), SIGKILL
    it there; returns its output and the calls it logged."""
    marker, log, output = tmp / "paused", tmp / "calls.log", tmp / "output.txt"
    for path in (marker, log):
        path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MAML_TEST_PAUSE": pause, "MAML_TEST_MARKER": str(marker),
           "MAML_TEST_COUNT": ",".join(count), "MAML_TEST_LOG": str(log)}
    with open(output, "w") as sink:
        child = subprocess.Popen([sys.executable, "-m", "maml_en_llm", *argv], env=env, stdout=sink,
                                 stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"child ended (code {child.returncode}) before the kill point:\n{output.read_text()[-3000:]}")
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    return output.read_text(), log.read_text().splitlines() if log.exists() else []


def run_to_the_end(argv: list[str], tmp: Path, count: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    log = tmp / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MAML_TEST_COUNT": ",".join(count), "MAML_TEST_LOG": str(log)}
    done = subprocess.run([sys.executable, "-m", "maml_en_llm", *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr, log.read_text().splitlines() if log.exists() else []


def test_kill_9_while_writing_a_checkpoint_then_resume_is_bit_identical(tmp_path, tiny_model_dir, data_dir,
                                                                         reference):
    out = tmp_path / "run"
    argv = train_argv(tiny_model_dir, data_dir, out)
    # torch.save runs 3 times per checkpoint: the 4th call is the step-4 checkpoint's optimizer.pt, written into
    # its temporary folder after model.safetensors
    run_until_killed(argv, tmp_path, pause="torch:save:4")
    leftovers = list((out / "checkpoints").glob(".tmp-step-00000004-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000002"]
    assert steps_logged(out) == [1, 2, 3, 4] and not (out / "final").exists()

    output, calls = run_to_the_end([*argv, "--resume"], tmp_path, count=("maml_en_llm.train:meta_step",))
    assert "removed .tmp-step-00000004-" in output and not list((out / "checkpoints").glob(".tmp-*"))
    assert len(calls) == 2  # steps 3 and 4 again, from the step-2 checkpoint
    assert_same_weights(out / "final", reference / "final")
    assert steps_logged(out) == [1, 2, 3, 4]
    assert timeless_metrics(out) == timeless_metrics(reference)


COMPARE_RECIPE = ["tasks_per_step=2", "support_size=1", "query_size=1", "lr=1e-3", "inner_lr=1e-2",
                  "checkpoint_every=2"]


def compare_argv(model_dir, data_dir, out):
    return ["compare", "--split", "tiny", "--data-dir", str(data_dir), "--model", str(model_dir), "--methods",
            "none,metaicl,maml", "--steps", "4", "--k", "1", "--seeds", "100,13", "--max-test", "4", "--out", str(out),
            "--diagnostics", "none", *COMPARE_RECIPE]


def tables(out: Path) -> tuple[str, dict]:
    """compare.md without its wall-time column, and compare.json's numbers without times and paths."""
    lines, drop = [], None
    for line in (out / "compare.md").read_text().splitlines():
        cells = line.split("|")
        if "train s" in (c.strip() for c in cells):
            drop = [c.strip() for c in cells].index("train s")
        elif not line.startswith("|"):
            drop = None
        lines.append("|".join(c for i, c in enumerate(cells) if i != drop))
    report = json.loads((out / "compare.json").read_text())
    timeless = [{k: v for k, v in row.items() if k not in ("eval_wall_seconds",)} | {
        "train": {k: v for k, v in row["train"].items() if k not in ("wall_seconds", "step_seconds")}}
        for row in report["rows"]]
    return "\n".join(lines), {"rows": timeless, "tests": report["paired_tests"], "headline": report["headline"]}


def test_kill_9_during_compare_then_rerun_recomputes_nothing_finished(tmp_path, tiny_model_dir, data_dir):
    counted = ("maml_en_llm.train:meta_step", "maml_en_llm.compare:evaluate_model")
    reference = tmp_path / "reference"
    assert main(compare_argv(tiny_model_dir, data_dir, reference)) == 0

    out = tmp_path / "out"
    argv = compare_argv(tiny_model_dir, data_dir, out)
    # 1st kill: in maml's 3rd meta-step (metaicl took calls 1-4), after maml's step-2 checkpoint
    run_until_killed(argv, tmp_path, pause="maml_en_llm.train:meta_step:7")
    metaicl_run = next((out / "runs").glob("metaicl-*"))
    maml_run = next((out / "runs").glob("maml-*"))
    assert (metaicl_run / "final" / "config.json").exists() and not (maml_run / "final").exists()
    assert steps_logged(maml_run) == [1, 2] and not (out / "compare.json").exists()
    metaicl_final = (metaicl_run / "final" / "model.safetensors").stat().st_mtime_ns

    # 2nd kill: in the evaluation of the second row (the base model's evaluation is finished and cached)
    output, calls = run_until_killed(argv, tmp_path, pause="maml_en_llm.compare:evaluate_model:2", count=counted)
    assert "training metaicl (1/2): done already" in output and "resuming maml" in output
    assert calls.count("maml_en_llm.train:meta_step") == 2  # maml's steps 3 and 4 only
    assert (metaicl_run / "final" / "model.safetensors").stat().st_mtime_ns == metaicl_final
    base_eval = next((out / "evals").glob("none-*.json"))
    base_eval_mtime = base_eval.stat().st_mtime_ns
    assert len(list((out / "evals").glob("*.json"))) == 1 and not (out / "compare.json").exists()

    # the third run finishes: no training at all, only the two evaluations that never finished
    output, calls = run_to_the_end(argv, tmp_path, count=counted)
    assert calls == ["maml_en_llm.compare:evaluate_model"] * 2
    assert "evaluating none (1/3): cached" in output
    assert base_eval.stat().st_mtime_ns == base_eval_mtime
    assert (metaicl_run / "final" / "model.safetensors").stat().st_mtime_ns == metaicl_final
    assert steps_logged(maml_run) == [1, 2, 3, 4]
    assert tables(out) == tables(reference)


def test_kill_9_during_eval_then_rerun_scores_only_the_missing_cells(tmp_path, tiny_model_dir, data_dir):
    """A real kill -9 in the 3rd (task, seed) cell of an `eval` with adaptation: the re-run reuses the 2 cells in
    its journal, evaluates the rest, and writes the same numbers as an uninterrupted run; the journal is gone."""
    def argv(out):
        return ["eval", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--k", "2",
                "--seeds", "100,13", "--max-test", "4", "--adapt-steps", "1", "--adapt-lr", "1e-3", "--out", str(out)]

    def numbers(out):
        results = json.loads((out / "results.json").read_text())
        scoring = {k: v for k, v in results["scoring"].items() if k in ("sequences", "tokens", "unique_tokens")}
        return results["tasks"], results["adapted"], results["average"], scoring

    reference = tmp_path / "reference"
    _, calls = run_to_the_end(argv(reference), tmp_path, count=("maml_en_llm.evaluate:_evaluate_cell",))
    cells = len(calls)
    assert cells >= 4

    out = tmp_path / "out"
    run_until_killed(argv(out), tmp_path, pause="maml_en_llm.evaluate:_evaluate_cell:3")
    journal = out / "results.partial.jsonl"
    assert len(journal.read_text().splitlines()) == 2 and not (out / "results.json").exists()
    with open(journal, "a") as handle:
        handle.write('{"digest": "cut short by a kill", "ta')  # a half-written line is ignored

    _, calls = run_to_the_end(argv(out), tmp_path, count=("maml_en_llm.evaluate:_evaluate_cell",))
    assert len(calls) == cells - 2
    assert numbers(out) == numbers(reference)
    assert not journal.exists()


# ---------------------------------------------------------------- accelerator memory


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                 "79.19 GiB of which 1.02 GiB is free.\nIncluding non-PyTorch memory, ...")


@pytest.mark.parametrize("command", ["eval", "train"])
def test_out_of_accelerator_memory_is_one_line_naming_what_to_lower(command, tmp_path, tiny_model_dir, data_dir,
                                                                     monkeypatch, capsys):
    """torch.OutOfMemoryError (what CUDA raises when an allocation fails, simulated here) is a setting too large for
    the device, not a bug: one line naming the knobs, exit 2, no traceback, nothing written as finished."""
    from maml_en_llm import evaluate, train

    if command == "eval":
        monkeypatch.setattr(evaluate, "predict", _oom)
        args = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--out",
                str(tmp_path / "out"), "--k", "1", "--seeds", "100", "--max-test", "2"]
    else:
        monkeypatch.setattr(train, "task_function", lambda *a, **k: _oom)
        args = ["train", "--method", "metaicl", "--model", str(tiny_model_dir), "--data-dir", str(data_dir),
                "--split", "tiny", "--out", str(tmp_path / "out"), "--logger", "none", "steps=2", "k=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith("error: out of accelerator memory (CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "lower --batch-size" in lines[0] and "compare --jobs" in lines[0] and "Including" not in lines[0]
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "final").exists()


def test_other_runtime_errors_keep_their_traceback(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """Only the out-of-memory class is turned into a one-line error; any other RuntimeError is a bug."""
    from maml_en_llm import evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(evaluate, "predict", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["eval", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--split", "tiny", "--out",
              str(tmp_path / "out"), "--k", "1", "--seeds", "100", "--max-test", "2"])
