"""Progress journal of an evaluation, so that an `eval` or `compare` killed mid-evaluation resumes where it stopped.

After each (task, seed) cell, one JSON line is appended (and fsynced) to a journal next to the final output:
the cell's in-context metric, its adapted metric and demonstration losses when adapting, and its scoring counts.
Every line carries a digest of the evaluation's settings (model and its files, data, k, seeds, direction, format,
BOS, labels, adaptation, batch size). A re-run with the same settings reuses the cells it finds and computes the
rest; lines with another digest, and a last line cut short by a kill, are ignored. The journal is deleted once
the final results are written. Every cell's randomness depends only on its own seed, so a resumed evaluation gives
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .paths import json_digest


def model_fingerprint(source: str) -> dict:
    """What identifies a model for the journal: its id or path, plus the name, size and modification time of each
    file of a local folder (a model retrained into the same folder is a different model)."""
    path = Path(source)
    if not path.is_dir():
        return {"source": source}
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
    return {"source": str(path.resolve()), "files": files}


def settings_digest(settings: dict) -> str:
    return json_digest(settings, 16)


def read_journal(path: Path | None, digest: str) -> dict[tuple[str, int], dict]:
    """The finished cells recorded under `digest`, by (task, seed)."""
    done: dict[tuple[str, int], dict] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(entry, dict) and entry.get("digest") == digest and "task" in entry and "seed" in entry:
            done[(entry["task"], entry["seed"])] = entry
    return done


def append_cell(path: Path | None, digest: str, entry: dict) -> None:
    if path is None:
        return
    line = json.dumps({"digest": digest, **entry}) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
