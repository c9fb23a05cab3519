"""Experiment tracking for training: TensorBoard event files (default), Weights & Biases, or nothing.

`metrics.jsonl` (and `validation.jsonl`) stay the record of a run; a tracker mirrors each line to a dashboard:

    tracker = Tracker(run_dir, "tensorboard", enabled=is_main_rank, resume_step=start_step, config=recipe)
    tracker.log(record, step)      # every numeric value of the metrics.jsonl line: train/<key> at `step`
    tracker.log(record, step, prefix="validation")   # a validation.jsonl line: validation/<key>
    tracker.close()

TensorBoard writes `events.out.tfevents.*` into the run folder itself, next to `metrics.jsonl`, so
`tensorboard --logdir runs/` shows every run under its folder name. On `--resume` the events after the
checkpoint's step are purged (TensorBoard's `purge_step`), as `metrics.jsonl` drops its lines after it.
wandb is imported only when asked for, and is an optional extra (`pip install 'maml-en-llm[wandb]'`); its run id
is kept in `RUN_DIR/wandb_run_id` so a resumed training continues the same W&B run.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from pathlib import Path

from .errors import UserError

LOGGERS = ("tensorboard", "wandb", "none")


def _scalars(record: dict) -> dict[str, float]:
    """The numeric, finite-or-not values of a metrics record, except its step counter."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, Real) and not isinstance(value, bool)}


class Tracker:
    """Mirror metrics records to TensorBoard or W&B; a no-op on non-main ranks and with kind "none"."""

    def __init__(self, run_dir: Path, kind: str = "tensorboard", *, enabled: bool = True, resume_step: int = 0,
                 config: dict | None = None):
        if kind not in LOGGERS:
            raise UserError(f"--logger {kind!r}: choose one of {', '.join(LOGGERS)}")
        self.kind = kind if enabled else "none"
        self._writer = None
        self._wandb_run = None
        run_dir = Path(run_dir)
        if self.kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            # purge_step hides events at or after it that an interrupted attempt had written
            self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=resume_step + 1 if resume_step else None)
        elif self.kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise UserError("--logger wandb: wandb is not installed; pip install 'maml-en-llm[wandb]' "
                                "or use --logger tensorboard") from None
            run_dir.mkdir(parents=True, exist_ok=True)
            id_file = run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else None
            self._wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", "maml-en-llm"), name=run_dir.name,
                                         dir=str(run_dir), config=config or {}, id=run_id, resume="allow")
            id_file.write_text(str(self._wandb_run.id) + "\n")

    def log(self, record: dict, step: int, prefix: str = "train") -> None:
        """Log every top-level numeric value of `record` (a metrics.jsonl or validation.jsonl line) at `step`, as
        `<prefix>/<key>`."""
        values = _scalars(record)
        if self._writer is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)
        elif self._wandb_run is not None:
            self._wandb_run.log({f"{prefix}/{key}": value for key, value in values.items()}, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
