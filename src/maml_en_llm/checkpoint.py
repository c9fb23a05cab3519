"""Training checkpoints: written atomically, verified before use.

    RUN_DIR/checkpoints/step-00000050/
        model.safetensors   trainable parameters (tied weights once)
        optimizer.pt        AdamW state: the moments shared-adam reads and writes live here
        scheduler.pt        learning-rate schedule position
        rng.pt              torch (and CUDA) RNG states
        state.json          step, tokens seen, the episode sampler's state (seed + step: sampling is stateless)
        MANIFEST.json       sha256 of every file above; written last

A checkpoint is first written to a hidden sibling folder (`.tmp-step-...`), every file and the folder are
fsynced, and only then is it renamed into place (and the parent folder fsynced), so a kill -9 or a power loss at
any moment leaves either the old set of checkpoints or the new one. A write that fails (a full disk, a lost
mount) removes the half-written folder, keeps the previous checkpoints and stops with one line saying so.
Leftover temporary folders of a killed process are removed on the next start (`latest_valid`). On resume, the
newest checkpoint whose manifest matches its files is used; a corrupt or half-copied one is reported and skipped.
The optimizer state is loaded to the CPU first: AdamW's `step` counters stay CPU tensors (as AdamW creates them)
and the moments move to the parameters' device.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .paths import fsync_path, sha256_file

FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
TMP_PREFIX = ".tmp-step-"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, params: dict[str, torch.Tensor], optimizer, scheduler,
                    state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and durably, then keep only the newest `keep`.

    An OSError while writing (e.g. ENOSPC) deletes the partial folder and raises a one-line UserError: the
    previous checkpoints are untouched, so `--resume` continues from the newest of them."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f"{TMP_PREFIX}{step:08d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _save_weights({n: p.detach().contiguous().cpu() for n, p in params.items()}, tmp / "model.safetensors")
        _save_torch(optimizer.state_dict(), tmp / "optimizer.pt")
        _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        _save_torch(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        manifest = {"step": step, "files": {name: sha256_file(tmp / name) for name in FILES}}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        for name in (*FILES, "MANIFEST.json"):
            fsync_path(tmp / name)
        fsync_path(tmp)
        if final.exists():  # a re-run of the same step after a crash right after the rename
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in sorted(root.glob("step-*")) if p != final]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"{root}: could not write checkpoint step-{step:08d} ({err.strerror or err}); {kept}: "
                        "free disk space, then rerun with --resume") from None
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class _RememberingWriter:
    """A file object for torch.save that keeps the OSError of a failed write: torch itself reports a full disk
    only as an opaque RuntimeError ("unexpected pos ...")."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def _save_torch(obj, path: Path) -> None:
    """torch.save that fails with the real OSError (e.g. ENOSPC) when the disk refuses the bytes."""
    with open(path, "wb") as handle:
        writer = _RememberingWriter(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def _save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, whose I/O failures ("... (os error 28)") become the OSError they are."""
    try:
        save_file(tensors, path)
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete half-written checkpoint folders that a killed process left behind; returns what was removed."""
    removed = []
    for leftover in sorted(checkpoint_dir(run_dir).glob(f"{TMP_PREFIX}*")):
        if leftover.name.endswith(f"-{os.getpid()}"):
            continue  # ours, being written right now
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def verify(path: Path) -> str | None:
    """None if the checkpoint's files match its manifest, else what is wrong."""
    manifest_path = Path(path) / "MANIFEST.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "missing or unreadable MANIFEST.json"
    for name in FILES:
        file = Path(path) / name
        if not file.is_file():
            return f"missing {name}"
        if sha256_file(file) != expected.get(name):
            return f"{name} does not match its checksum"
    return None


def latest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt ones are reported on stderr and skipped. Leftover temporary
    folders of a killed run are removed first."""
    for leftover in remove_temporaries(run_dir):
        print(f"removed {leftover.name}, an unfinished checkpoint of an interrupted run", file=sys.stderr)
    for path in sorted(checkpoint_dir(run_dir).glob("step-*"), reverse=True):
        problem = verify(path)
        if problem is None:
            return path
        print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
    return None


def load_checkpoint(path: Path, params: dict[str, torch.Tensor], optimizer, scheduler) -> dict:
    """Restore parameters, optimizer, scheduler and RNG in place; returns state.json."""
    path = Path(path)
    weights = load_file(path / "model.safetensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    # CPU first: load_state_dict moves the moments to each parameter's device and leaves `step` where it is,
    # on the CPU as AdamW keeps it (a CUDA step tensor would cost a device sync on every optimizer step).
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
