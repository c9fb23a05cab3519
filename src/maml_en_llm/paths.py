"""Where maml-en-llm keeps downloaded packages, converted models and built data.

One root, `$MAML_EN_LLM_CACHE` or `~/.cache/maml-en-llm`, so a user can move or wipe it in one place.
"""

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("MAML_EN_LLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "maml-en-llm"


def default_data_dir() -> Path:
    """The BIG-bench collection that `maml-en-llm data bigbench` builds; `train`/`eval` read it by default."""
    return cache_dir() / "data" / "bigbench"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so a reader never sees it half-written (write a sibling, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
