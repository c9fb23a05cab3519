"""Where maml-en-llm keeps downloaded packages, converted models and built data, and how it writes files safely.

One root, `$MAML_EN_LLM_CACHE` or `~/.cache/maml-en-llm`, so a user can move or wipe it in one place.

Writes that a later run reads back (results, checkpoints, recipes) are atomic: written to a hidden sibling,
flushed to disk with fsync, then renamed into place, so a crash or power loss leaves the old file or the new one,
never half of one. Output locations are checked before any work (`check_output`), so a path that is a file, sits
under a file or is not writable fails in one line instead of after training.
"""

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def cache_dir() -> Path:
    root = os.environ.get("MAML_EN_LLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "maml-en-llm"


def default_data_dir() -> Path:
    """The BIG-bench collection that `maml-en-llm data bigbench` builds; `train`/`eval` read it by default."""
    return cache_dir() / "data" / "bigbench"


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's contents (for a folder: its entries, i.e. renames into it) to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on Windows; nothing more we can do there
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # file systems that cannot sync folders
            raise
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so a reader never sees it half-written (write a sibling, fsync, rename, fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def json_digest(obj: object, length: int | None = None) -> str:
    """Hex sha256 of `obj` as canonical JSON (sorted keys; values JSON cannot hold written as str), optionally
    cut to its first `length` characters: the identity of a set of settings."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output(path: Path, flag: str = "--out", *, folder: bool = True) -> Path:
    """Refuse, in one line and before any work, an output path that cannot be written: `folder=True` for a run
    or compare folder (must not be an existing file), `folder=False` for a results file (must not be a folder).
    Checks that nothing on the way is a file and that the nearest existing folder accepts a new file (a probe
    file, removed at once). Writes nothing else."""
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{flag} {path}: is a file, not a folder; choose a folder path (new or existing)")
        if not folder and path.is_dir():
            raise UserError(f"{flag} {path}: is a folder; give the path of the file to write")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so nothing can be created under it; choose another "
                        f"{flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({err.strerror}); choose a writable location "
                        "or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)
    return path
