"""Training checkpoints: written atomically, verified before use.

    RUN_DIR/checkpoints/step-00000050/
        model.safetensors   trainable parameters (tied weights once)
        optimizer.pt        AdamW state: the moments shared-adam reads and writes live here
        scheduler.pt        learning-rate schedule position
        rng.pt              torch (and CUDA) RNG states
        state.json          step, tokens seen, the episode sampler's state (seed + step: sampling is stateless)
        MANIFEST.json       sha256 of every file above; written last

A checkpoint is first written to a hidden sibling folder and renamed into place, so a kill -9 at any moment
leaves either the old set of checkpoints or the new one. On resume, the newest checkpoint whose manifest matches
its files is used; a corrupt or half-copied one is reported and skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .paths import sha256_file

FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, params: dict[str, torch.Tensor], optimizer, scheduler,
                    state: dict, keep: int = 2) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().contiguous().cpu() for n, p in params.items()}, tmp / "model.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    manifest = {"step": step, "files": {name: sha256_file(tmp / name) for name in FILES}}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if final.exists():  # a re-run of the same step after a crash right after the rename
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    """The newest checkpoint that verifies; corrupt ones are reported on stderr and skipped."""
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
    device = next(iter(params.values())).device
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
