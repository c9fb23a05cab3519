"""The docs: no absolute path of this machine in README.md or docs/ (scripts/check_no_machine_paths.py), and the
CLI flags the docs use exist."""

import importlib.util
import re
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_no_machine_paths", ROOT / "scripts" / "check_no_machine_paths.py")
checker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checker)


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


def _flags(parser) -> set[str]:
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            if hasattr(action.choices[sub], "_actions"):
                found |= _flags(action.choices[sub])
    return found


@pytest.mark.parametrize("doc", ["README.md", "docs/compare.md", "docs/data.md", "docs/lm-eval.md", "docs/models.md"])
def test_documented_flags_exist(doc):
    from maml_en_llm.cli import build_parser

    known = _flags(build_parser())
    text = (ROOT / doc).read_text()
    commands = re.findall(r"^\s*(?:\$ )?maml-en-llm [^\n]*(?:\\\n[^\n]*)*", text, flags=re.M)
    used = {flag for command in commands for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", command)}
    assert used, f"{doc}: no maml-en-llm command found"
    assert used <= known, f"{doc} uses unknown flags {sorted(used - known)}"
