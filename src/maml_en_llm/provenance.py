"""What produced a result: package and library versions, the git commit of the code, and the device.

`run.json` (training) and `results.json` (evaluation) both embed `provenance(device)`, so any number can be traced
to the code and hardware that made it, and `--resume` can refuse to continue a run with different code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from . import __version__


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with "-dirty" when it has uncommitted changes), or None
    when it is not a git checkout (an installed wheel) or git is missing."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device=None) -> dict:
    """Versions, commit and hardware, as a JSON-ready dict. `device` is a torch.device or string (or None)."""
    import torch
    import transformers

    device = torch.device(device) if device is not None else None
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    return {"package_version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft_version, "python": platform.python_version(),
            "device": str(device) if device is not None else None, "gpu": gpu, "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
