"""Turn the messages the bad-input tests saw into the tables of docs/reliability.md.

    RELIABILITY_MESSAGES=messages.jsonl python -m pytest tests/test_bad_inputs.py tests/test_bad_paths.py
    python scripts/reliability_table.py messages.jsonl

Prints one markdown table per kind of input (the case id's first word), in the tests' order. Paths inside a
test's temporary folder read DATA (the task collection), MODEL (the tiny model) and TMP (everything else).
"""

import json
import sys

KINDS = {"data": "Data files", "split": "Split files", "override": "key=value overrides", "recipe": "Recipe files",
         "k": "Recipe vs. data", "support": "Recipe vs. data", "flag": "Command-line flags", "model": "Model paths",
         "out": "Output paths"}


def main(path: str) -> None:
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            entry = json.loads(line)
            rows[entry["case"]] = entry  # the last run wins
    tables: dict[str, list[str]] = {}
    for name, entry in rows.items():
        title = KINDS[name.split("-")[0]]
        message = f"error: {entry['message']}".replace("|", "\\|")
        code = f"`` {message} ``" if "`" in message else f"`{message}`"  # double ticks around inner backticks
        test = entry["test"].split("[")[0]
        tables.setdefault(title, []).append(f"| `{name}` | {code} | `{test}` |")
    for title, lines in tables.items():
        print(f"### {title}\n\n| case | what the user sees (stderr, exit code 2) | test |\n|---|---|---|")
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
