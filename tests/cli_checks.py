"""What every refused input must look like from the command line: exit code 2, exactly one stderr line
`error: ...` naming what is wrong, no traceback, and no file written or changed anywhere under the watched
folder. `docs/reliability.md` lists the messages these checks saw.

Set RELIABILITY_MESSAGES=<file.jsonl> to append each case's message (temporary paths replaced by DATA, OUT,
MODEL, TMP); `scripts/reliability_table.py` turns that file into the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maml_en_llm.cli import main

TRAIN_RECIPE = ["steps=1", "k=1", "tasks_per_step=2", "support_size=1", "query_size=1"]


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
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own checks (an unknown flag, a non-integer) exit from parse_args
        code = exit_.code
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
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
            handle.write(json.dumps({"case": case, "test": test, "message": scrub(message, places or {})}) + "\n")
    return message



@dataclass
class Ctx:
    tmp: Path
    data: Path
    model: Path

    @property
    def out(self) -> Path:  # a run / compare folder
        return self.tmp / "out"

    @property
    def eval_dir(self) -> Path:  # eval's --out folder
        return self.tmp / "out" / "eval"

    @property
    def results(self) -> Path:  # the results file eval writes into it
        return self.eval_dir / "results.json"

    def pool(self, task: str) -> Path:
        return self.data / task / f"{task}_16384_100_train.jsonl"

    def test_file(self, task: str, seed: int = 100) -> Path:
        return self.data / task / f"{task}_16_{seed}_test.jsonl"

    def demo_file(self, task: str, seed: int = 100) -> Path:
        return self.data / task / f"{task}_16_{seed}_train.jsonl"

    def split(self, content, name: str = "split.json") -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return str(path)

    def model_copy(self) -> Path:
        copy = self.tmp / "model"
        if not copy.exists():
            shutil.copytree(self.model, copy)
        return copy


def train(ctx: Ctx, *extra: str, split: str = "tiny", method: str = "metaicl") -> list[str]:
    return ["train", "--method", method, "--model", str(ctx.model), "--data-dir", str(ctx.data), "--split", split,
            "--out", str(ctx.out), *TRAIN_RECIPE, *extra]


def evaluate(ctx: Ctx, *extra: str, split: str = "tiny", model: Path | None = None) -> list[str]:
    return ["eval", "--model", str(model or ctx.model), "--data-dir", str(ctx.data), "--split", split,
            "--out", str(ctx.eval_dir), "--k", "1", "--seeds", "100", "--max-test", "2", *extra]


def compare(ctx: Ctx, *extra: str, split: str = "tiny") -> list[str]:
    return ["compare", "--model", str(ctx.model), "--data-dir", str(ctx.data), "--split", split, "--out",
            str(ctx.out), "--methods", "none,metaicl", "--steps", "1", "--k", "1", "--seeds", "100", "--max-test",
            "2", *extra, "tasks_per_step=2", "support_size=1", "query_size=1"]


def set_line(path: Path, line_no: int, content: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_no - 1] = content + b"\n"
    path.write_bytes(b"".join(lines))


def set_record(path: Path, line_no: int, **fields) -> None:
    record = json.loads(path.read_bytes().splitlines()[line_no - 1])
    record.update(fields)
    set_line(path, line_no, json.dumps({k: v for k, v in record.items() if v is not ...}).encode())


Cases = dict[str, Callable[[Ctx], tuple[list[str], list[str]]]]


def registry(cases: Cases):
    """`@case("name")` decorator that files a case builder (ctx -> argv, needles) under its id."""
    def case(name: str):
        def register(build):
            assert name not in cases, name
            cases[name] = build
            return build
        return register
    return case


def places(ctx: Ctx) -> dict[str, Path]:
    return {"DATA": ctx.data, "MODEL": ctx.model, "TMP": ctx.tmp}
