"""tracking.Tracker: TensorBoard scalars equal the records, after a resume TensorBoard shows the recomputed steps, W&B
gets the same values (a stand-in module; wandb itself is optional), non-main ranks and "none" write nothing."""

import sys
import types

import pytest

from maml_en_llm.errors import UserError
from maml_en_llm.tracking import Tracker


def scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_tensorboard_logs_every_numeric_value_and_shows_the_recomputed_steps_after_resume(tmp_path):
    tracker = Tracker(tmp_path, "tensorboard")
    for step in (1, 2, 3):
        tracker.log({"step": step, "loss": 10.0 + step, "lr": 0.5, "note": "text is skipped", "flag": True}, step)
    tracker.close()
    assert scalars(tmp_path, "train/loss") == {1: 11.0, 2: 12.0, 3: 13.0}
    # resumed from the step-1 checkpoint: steps 2 and 3 are recomputed with other values
    tracker = Tracker(tmp_path, "tensorboard", resume_step=1)
    for step in (2, 3):
        tracker.log({"step": step, "loss": 20.0 + step}, step)
    tracker.close()
    assert scalars(tmp_path, "train/loss") == {1: 11.0, 2: 22.0, 3: 23.0}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr"}


def test_disabled_and_none_write_nothing(tmp_path):
    for tracker in (Tracker(tmp_path / "a", "tensorboard", enabled=False), Tracker(tmp_path / "b", "none")):
        tracker.log({"loss": 1.0}, 1)
        tracker.close()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unknown_logger_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--logger 'mlflow'"):
        Tracker(tmp_path, "mlflow")


def test_wandb_gets_the_values_and_a_resume_reuses_the_run(tmp_path, monkeypatch):
    calls = []

    class Run:
        def __init__(self, **kwargs):
            self.id = kwargs["id"] or "run-123"
            calls.append(("init", kwargs))

        def log(self, values, step):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(**kw)))
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    tracker = Tracker(tmp_path / "run", "wandb", config={"method": "maml"})
    tracker.log({"step": 1, "loss": 2.5, "tokens": 7}, 1)
    tracker.close()
    init = calls[0][1]
    assert init["project"] == "proj" and init["name"] == "run" and init["config"] == {"method": "maml"}
    assert init["id"] is None
    assert calls[1:] == [("log", {"train/loss": 2.5, "train/tokens": 7.0}, 1), ("finish",)]
    Tracker(tmp_path / "run", "wandb", resume_step=1).close()
    assert calls[3][1]["id"] == "run-123" and calls[3][1]["resume"] == "allow"


def test_missing_wandb_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"wandb is not installed; pip install 'maml-en-llm\[wandb\]'"):
        Tracker(tmp_path, "wandb")
