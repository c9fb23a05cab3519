"""The docs: no absolute path of this machine in README.md or docs/ (scripts/check_no_machine_paths.py), and the
CLI flags the docs use exist."""

import argparse
import re
import tempfile
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
checker = load_script(ROOT / "scripts" / "check_no_machine_paths.py")


def test_docs_hold_no_absolute_path_of_this_machine():
    hits = checker.find_machine_paths(ROOT)
    assert not hits, "machine paths in the docs:\n" + "\n".join(hits)


def test_the_check_finds_home_temp_and_checkout_parent_paths(tmp_path):
    repo = tmp_path / "checkout" / "repo"
    (repo / "docs" / "results").mkdir(parents=True)
    home, temp, parent = str(Path.home()), tempfile.gettempdir(), str(repo.parent)
    (repo / "README.md").write_text(f"data in {home}/.cache/x\nfine: ~/.cache/x and https://example.org{home}/x\n")
    (repo / "docs" / "a.md").write_text(f"run `maml-en-llm eval --out {temp}/run`\n{parent}/shared/data\n")
    (repo / "docs" / "results" / "r.json").write_text(f'{{"data_dir": "{home}/.cache/maml-en-llm"}}\n')
    (repo / "docs" / "plot.png").write_bytes(b"\x89PNG" + home.encode())
    hits = checker.find_machine_paths(repo)
    assert [h.split(": ")[0] for h in hits] == ["README.md:1", "docs/a.md:1", "docs/a.md:2", "docs/results/r.json:1"]
    assert checker.main([str(repo)]) == 1
    (repo / "README.md").write_text("nothing here\n")
    for name in ("a.md", "results/r.json"):
        (repo / "docs" / name).write_text("~/.cache/maml-en-llm and runs/x\n")
    assert checker.main([str(repo)]) == 0


def _subcommand_parser(parser, words: list[str]):
    """The parser of `maml-en-llm WORDS...` (e.g. ["data", "hf", ...] -> the `data hf` parser)."""
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


@pytest.mark.parametrize("doc", ["README.md", "docs/compare.md", "docs/data.md", "docs/lm-eval.md", "docs/evaluation.md",
                                 "docs/training.md", "docs/results.md"])
def test_documented_flags_exist(doc):
    """Every flag in a documented `maml-en-llm ...` command exists for that very subcommand."""
    from maml_en_llm.cli import build_parser

    text = (ROOT / doc).read_text()
    commands = re.findall(r"^\s*(?:\$ )?maml-en-llm ([^\n]*(?:\\\n[^\n]*)*)", text, flags=re.M)
    assert commands, f"{doc}: no maml-en-llm command found"
    for command in commands:
        parser = _subcommand_parser(build_parser(), command.split())
        known = {flag for action in parser._actions if action.help != argparse.SUPPRESS
                 for flag in action.option_strings}
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command))
        assert used <= known, f"{doc}: `maml-en-llm {command[:60]}...` uses unknown flags {sorted(used - known)}"


def test_every_study_command_the_docs_name_exists_and_every_one_is_documented():
    cases = set(re.findall(r"^  ([a-z0-9-]+)\)$", (ROOT / "scripts" / "study.sh").read_text(), re.M))
    named = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"scripts/study\.sh ([a-z0-9][a-z0-9-]*)", doc.read_text()):
            named.setdefault(name, doc.name)
    assert cases, "no case found in scripts/study.sh"
    missing = {name: doc for name, doc in named.items() if name not in cases}
    assert not missing, f"docs name study.sh commands that do not exist: {missing}"
    undocumented = sorted(cases - set(named))
    assert not undocumented, f"study.sh commands that no doc shows: {undocumented}"
