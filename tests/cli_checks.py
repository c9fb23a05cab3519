"""What every refused input must look like from the command line: exit code 2, exactly one stderr line
`error: ...` naming what is wrong, no traceback, and no file written or changed anywhere under the watched
folder. `docs/reliability.md` lists the messages these checks saw.

Set RELIABILITY_MESSAGES=<file.jsonl> to append each case's message (temporary paths replaced by DATA, OUT,
MODEL, TMP); `scripts/reliability_table.py` turns that file into the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from maml_en_llm.cli import main


def snapshot(root: Path) -> dict:
    """Every file under root with its size and mtime, every folder by name (a folder's own mtime changes when a
    probe file is created and removed, which writes nothing)."""
    root = Path(root)
    if not root.exists():
        return {}
    state = {}
    for path in [root, *root.rglob("*")]:
        stat = path.stat()
        state[str(path.relative_to(root))] = "dir" if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return state


def scrub(text: str, places: dict[str, Path]) -> str:
    """Replace this machine's temporary paths by placeholders (longest first), for the docs."""
    for name, path in sorted(places.items(), key=lambda item: -len(str(item[1]))):
        text = text.replace(str(path), name)
    return text


def assert_one_line_error(capsys, argv: list[str], needles: list[str], watched: Path, *, case: str = "",
                          places: dict[str, Path] | None = None) -> str:
    """Run the real CLI entry and check the refusal; returns the message (without `error: `)."""
    capsys.readouterr()
    before = snapshot(watched)
    code = main(argv)
    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr: {captured.err[-2000:]}"
    assert "Traceback" not in captured.err
    assert len(err_lines) == 1 and err_lines[0].startswith("error: "), captured.err[-2000:]
    message = err_lines[0][len("error: "):]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert snapshot(watched) == before, "the command wrote or changed files before refusing"
    log = os.environ.get("RELIABILITY_MESSAGES")
    if log and case:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"case": case, "message": scrub(message, places or {})}) + "\n")
    return message
