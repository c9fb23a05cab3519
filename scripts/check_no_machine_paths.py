"""Fail when the docs name absolute paths of the machine they were written on.

Checks README.md and every text file under docs/ (JSON results included) for the machine's home folder, its
temporary folder and the folder the checkout sits in, computed here at check time (never hard-coded): a path
like `<home>/.cache/...` or `<checkout parent>/shared/...` means nothing on a reader's machine. Write `~/...`,
`$MAML_EN_LLM_CACHE/...` or a path relative to the repository instead.

    python scripts/check_no_machine_paths.py [ROOT]     exit 1 and one line per hit, else exit 0

`make test` runs it through tests/test_docs.py.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".pdf", ".ico", ".svg"}


def machine_folders(root: Path) -> list[str]:
    """Home, temp and checkout-parent folders, with symlinks resolved too; "/" and one-letter folders skipped."""
    folders = set()
    for folder in (Path.home(), Path(tempfile.gettempdir()), Path(root).resolve().parent):
        for form in (folder, folder.resolve()):
            text = str(form).rstrip("/")
            if len(text) > 2:
                folders.add(text)
    return sorted(folders, key=len, reverse=True)


def files_to_check(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        files += sorted(p for p in docs.rglob("*") if p.is_file() and p.suffix.lower() not in BINARY_SUFFIXES)
    return files


def find_machine_paths(root: Path, folders: list[str] | None = None) -> list[str]:
    """"file:line: path" for every absolute machine path found."""
    root = Path(root)
    folders = machine_folders(root) if folders is None else folders
    if not folders:
        return []
    # a folder counts when it starts a path (not inside a URL or a longer path) and ends at a path boundary
    pattern = re.compile(r"(?<![\w.~/-])(" + "|".join(re.escape(f) for f in folders) + r")(?=[/\\\s\"'`),;:\]]|$)")
    hits = []
    for path in files_to_check(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for line_no, line in enumerate(text.splitlines(), start=1):
            for match in pattern.finditer(line):
                end = line.find(" ", match.start())
                shown = line[match.start(): end if end > 0 else len(line)]
                hits.append(f"{path.relative_to(root)}:{line_no}: {shown}")
    return hits


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    hits = find_machine_paths(root)
    for hit in hits:
        print(hit)
    if hits:
        print(f"{len(hits)} absolute path(s) of this machine in the docs; use ~/..., $MAML_EN_LLM_CACHE/... or "
              "repository-relative paths", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
