#!/usr/bin/env bash
# Regenerate the message tables of docs/reliability.md from what the bad-input tests see.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=$(mktemp)
RELIABILITY_MESSAGES=$messages .venv/bin/python -m pytest -q -p no:warnings tests/test_bad_inputs.py tests/test_bad_paths.py -k "not docs_list_every_case" >/dev/null
.venv/bin/python - "$messages" <<'PY'
import subprocess, sys
tables = subprocess.run([sys.executable, "scripts/reliability_table.py", sys.argv[1]], capture_output=True, text=True,
                        check=True).stdout
doc = open("docs/reliability.md").read()
start = doc.index("### Data files")
end = doc.index("\n## ", start)
open("docs/reliability.md", "w").write(doc[:start] + tables.strip() + "\n" + doc[end:])
PY
rm -f "$messages"
