"""`maml-en-llm data bigbench`: BIG-bench's multiple-choice tasks as an offline collection in MetaICL's layout.

The source is PyPI's sdist `bigbench-1.0.0.tar.gz`, read as a stream (no extraction, no install): every
`bigbench/benchmark_tasks/<family>[/<subtask>]/task.json` with `target_scores` examples becomes one task named
`<family>` or `<family>-<subtask>`. Conversion is deterministic, so two builds from one archive are byte-identical;
docs/data.md states every rule. The build writes into a hidden sibling folder and renames it into place at the
end, so an interrupted build leaves no half collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from . import paths
from .paths import json_digest, sha256_file
from .errors import UserError
from .tasks import EVAL_SEEDS, POOL_K, POOL_SEED, check_task_name, task_file

BIGBENCH_VERSION = "1.0.0"
ARCHIVE_NAME = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
PYPI_JSON_URL = f"https://pypi.org/pypi/bigbench/{BIGBENCH_VERSION}/json"
# sha256 of PyPI's bigbench-1.0.0.tar.gz; another archive is accepted (and recorded) with a note.
KNOWN_ARCHIVE_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_PREFIX = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"

CONVERTER_VERSION = 1  # bump when a rule below changes: a re-run then rebuilds instead of saying "up to date"
SHOTS = 16  # demonstrations (and dev examples) per seed: MetaICL's k=16 files
MIN_POOL = 2 * SHOTS  # a seed's 16 demonstrations and 16 dev examples are disjoint draws from the pool
MIN_TEST = 16
MIN_EXAMPLES = MIN_TEST + MIN_POOL  # usable examples a task needs to be kept (48)
MAX_TEST = 500
MANIFEST = "MANIFEST.json"

SKIP_REASONS = (
    "not_multiple_choice",  # no target_scores (a generative example inside a multiple-choice task.json)
    "bad_fields",  # input not a string, target_scores not an object of string -> number
    "empty_input",
    "empty_option",  # an option that is empty after stripping (so also an empty output)
    "duplicate_options",  # two options equal after stripping
    "too_few_options",
    "tied_best",  # several options share the top score: more than one right answer, accuracy would mislead
    "duplicate_example",  # same input, options and answer as an earlier example of the task
)


@dataclass
class ConvertedTask:
    """One BIG-bench task.json, converted: usable records in archive order plus what was skipped and why."""

    name: str
    family: str
    keywords: list[str]
    instruction: str
    records: list[dict]
    skipped: Counter = field(default_factory=Counter)

    @property
    def median_input_chars(self) -> int:
        return int(statistics.median(len(r["input"]) for r in self.records)) if self.records else 0

    @property
    def ascii_letter_share(self) -> float:
        """Share of ASCII among the letters of the first 1000 inputs (1.0 without letters): spots non-English
        tasks whose keywords do not say so."""
        letters = [c for r in self.records[:1000] for c in r["input"] if c.isalpha()]
        return round(sum(c.isascii() for c in letters) / len(letters), 2) if letters else 1.0

    def meta(self) -> dict:
        """`config/tasks/<task>.json`: classification when every example offers the same set of options.

        Beyond what the reader needs (task_type, options, instruction) it records what `make_bigbench_settings`
        chooses by: family, keywords, size, median input length, most options, longest option.
        """
        shared = len({frozenset(r["options"]) for r in self.records}) == 1  # (an empty task is never written)
        return {
            "task_type": "classification" if shared else "multi-choice",
            "options": self.records[0]["options"] if shared else None,
            "instruction": self.instruction,
            "keywords": self.keywords,
            "family": self.family,
            "examples": len(self.records),
            "median_input_chars": self.median_input_chars,
            "max_options": max(len(r["options"]) for r in self.records),
            "max_option_chars": max(len(o) for r in self.records for o in r["options"]),
            "ascii_letter_share": self.ascii_letter_share,
        }


@dataclass(frozen=True)
class TaskFiles:
    """A task's split: a fixed test set, the pool, and per seed 16 demonstrations + 16 dev drawn from the pool."""

    test: list[dict]
    pool: list[dict]
    shots: dict[int, tuple[list[dict], list[dict]]]  # seed -> (train, dev)


# ---------------------------------------------------------------- reading the archive


def task_name(member: str) -> tuple[str, str] | None:
    """(task name, family) of a `task.json` member of the sdist, None for any other member."""
    if not member.startswith(TASKS_PREFIX) or not member.endswith("/task.json"):
        return None
    parts = member[len(TASKS_PREFIX):].split("/")[:-1]
    if len(parts) not in (1, 2) or any(not part or part.startswith(".") for part in parts):
        return None
    name = "-".join(parts)  # BIG-bench names use '_', so '-' between family and subtask is unambiguous
    check_task_name(name, member)
    return name, parts[0]


def _record(name: str, example: object) -> tuple[dict | None, str | None]:
    """A record {task, input, output, options} from one BIG-bench example, or the reason it is skipped."""
    if not isinstance(example, dict) or "target_scores" not in example:
        return None, "not_multiple_choice"
    scores, text = example["target_scores"], example.get("input")
    if not (isinstance(text, str) and isinstance(scores, dict) and all(isinstance(k, str) for k in scores)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())):
        return None, "bad_fields"
    if not text.strip():
        return None, "empty_input"
    options = [option.strip() for option in scores]
    if any(not option for option in options):
        return None, "empty_option"
    if len(set(options)) != len(options):
        return None, "duplicate_options"
    if len(options) < 2:
        return None, "too_few_options"
    values = list(scores.values())
    best = max(values)
    if values.count(best) > 1:
        return None, "tied_best"
    return {"task": name, "input": text.strip(), "output": options[values.index(best)], "options": options}, None


def convert_task(name: str, family: str, task_json: dict) -> ConvertedTask | None:
    """Convert one parsed task.json; None when it has no multiple-choice example at all."""
    examples = task_json.get("examples")
    if not isinstance(examples, list) or not any(isinstance(e, dict) and "target_scores" in e for e in examples):
        return None
    prefix = task_json.get("task_prefix")
    instruction = prefix.strip() if isinstance(prefix, str) and prefix.strip() else str(task_json.get("description") or "").strip()
    keywords = [k for k in task_json.get("keywords") or [] if isinstance(k, str)]
    task = ConvertedTask(name, family, list(dict.fromkeys(keywords)), instruction, [])
    seen = set()
    for example in examples:
        record, reason = _record(name, example)
        if record is not None:
            key = (record["input"], record["output"], tuple(sorted(record["options"])))
            if key in seen:
                record, reason = None, "duplicate_example"
            seen.add(key)
        if record is None:
            task.skipped[reason] += 1
        else:
            task.records.append(record)
    return task


class _CountingReader:
    """A binary file wrapper that reports the compressed bytes read to a progress bar."""

    def __init__(self, handle, progress):
        self.handle, self.progress = handle, progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.progress.update(len(data))
        return data


def iter_archive(archive: Path, stats: Counter | None = None, progress: bool = True) -> Iterator[ConvertedTask]:
    """Stream the sdist and yield each multiple-choice task.json, converted, in archive order.

    `stats` (if given) counts task_json_files and multiple_choice_task_files. A truncated or corrupt archive
    raises UserError naming it.
    """
    from tqdm import tqdm

    archive = Path(archive)
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found; pass --archive PATH to {ARCHIVE_NAME} or leave it out to download it")
    stats = Counter() if stats is None else stats
    try:
        with open(archive, "rb") as handle, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                                  desc="reading BIG-bench", disable=not progress, leave=False) as bar:
            with tarfile.open(fileobj=_CountingReader(handle, bar), mode="r|gz") as stream:
                for member in stream:
                    named = task_name(member.name) if member.isfile() else None
                    if named is None:
                        continue
                    stats["task_json_files"] += 1
                    raw = stream.extractfile(member).read()
                    try:
                        parsed = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as err:
                        raise UserError(f"{archive}: {member.name} is not valid JSON ({err}); re-download the archive") from None
                    task = convert_task(*named, parsed) if isinstance(parsed, dict) else None
                    if task is not None:
                        stats["multiple_choice_task_files"] += 1
                        yield task
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise UserError(f"{archive}: not a readable {ARCHIVE_NAME} ({type(err).__name__}: {err}); "
                        "re-download it or pass the right --archive") from None
    if not stats["task_json_files"]:
        raise UserError(f"{archive}: no {TASKS_PREFIX}*/task.json inside; pass PyPI's {ARCHIVE_NAME} as --archive")


# ---------------------------------------------------------------- splitting


def test_set_size(usable: int) -> int:
    """Half the examples, at most 500, always leaving MIN_POOL for demonstrations and dev."""
    return min(MAX_TEST, usable // 2, usable - MIN_POOL)


def split_task(task: ConvertedTask, max_pool: int = POOL_K) -> TaskFiles:
    """Shuffle with a seed derived from the task name, cut the test set, cap the pool, draw 16+16 per seed."""
    records = list(task.records)
    random.Random(f"{task.name}:{POOL_SEED}").shuffle(records)
    n_test = test_set_size(len(records))
    test, pool = records[:n_test], records[n_test:n_test + max_pool]
    shots = {}
    for seed in EVAL_SEEDS:
        drawn = random.Random(f"{task.name}:{seed}").sample(range(len(pool)), 2 * SHOTS)
        shots[seed] = ([pool[i] for i in drawn[:SHOTS]], [pool[i] for i in drawn[SHOTS:]])
    return TaskFiles(test, pool, shots)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_task(root: Path, task: ConvertedTask, files: TaskFiles, meta: dict) -> None:
    """All files of one task under `root`; `meta` is `task.meta()`."""

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    write(task_file(root, task.name, POOL_K, POOL_SEED, "train"), _jsonl(files.pool))
    test_text = _jsonl(files.test)  # MetaICL keeps one test set across seeds
    for seed, (train, dev) in files.shots.items():
        write(task_file(root, task.name, SHOTS, seed, "test"), test_text)
        write(task_file(root, task.name, SHOTS, seed, "train"), _jsonl(train))
        write(task_file(root, task.name, SHOTS, seed, "dev"), _jsonl(dev))
    write(root / "config" / "tasks" / f"{task.name}.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- archive: given, cached, or downloaded


def _pip_download(folder: Path) -> Path | None:
    """Try pip (it honours the user's index/mirror configuration); None when it fails or leaves no sdist."""
    staging = Path(tempfile.mkdtemp(prefix=".pip-", dir=folder))
    try:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"bigbench=={BIGBENCH_VERSION}", "-d", str(staging)]
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        got = staging / ARCHIVE_NAME
        if result.returncode != 0 or not got.is_file():
            last = (result.stderr.strip().splitlines() or ["no sdist left"])[-1]
            print(f"pip could not download it ({last}); trying PyPI's JSON API", file=sys.stderr)
            return None
        os.replace(got, folder / ARCHIVE_NAME)
        return folder / ARCHIVE_NAME
    except OSError:
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pypi_download(folder: Path) -> Path:
    """PyPI's JSON API: find the sdist, download it, check its sha256, then rename it into place."""
    urlopen = urllib.request.urlopen  # looked up per call so tests can stand in for the network
    hint = (f"download {ARCHIVE_NAME} yourself (`pip download --no-deps bigbench=={BIGBENCH_VERSION}` with pip < 24) "
            "and pass --archive PATH")
    try:
        with urlopen(PYPI_JSON_URL, timeout=60) as response:
            release = json.loads(response.read())
        sdist = next(u for u in release["urls"] if u.get("packagetype") == "sdist" and u["filename"] == ARCHIVE_NAME)
        url, expected = sdist["url"], sdist["digests"]["sha256"]
    except (OSError, ValueError, KeyError, StopIteration) as err:
        raise UserError(f"could not look up {ARCHIVE_NAME} on PyPI ({type(err).__name__}: {err}); {hint}") from None
    from tqdm import tqdm

    partial = folder / f".{ARCHIVE_NAME}.part{os.getpid()}"
    try:
        digest = hashlib.sha256()
        with urlopen(url, timeout=60) as response, open(partial, "wb") as out, \
                tqdm(total=sdist.get("size"), unit="B", unit_scale=True, desc="downloading", leave=False) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                bar.update(len(block))
        if digest.hexdigest() != expected:
            raise UserError(f"{url}: sha256 {digest.hexdigest()} does not match PyPI's {expected}; retry, or {hint}")
        os.replace(partial, folder / ARCHIVE_NAME)
    except OSError as err:
        raise UserError(f"could not download {url} ({type(err).__name__}: {err}); {hint}") from None
    finally:
        partial.unlink(missing_ok=True)
    return folder / ARCHIVE_NAME


def download_archive(cache: Path | None = None) -> Path:
    """`<cache>/downloads/bigbench-1.0.0.tar.gz`, fetched once: by pip, else from PyPI's JSON API."""
    folder = Path(cache or paths.cache_dir()) / "downloads"
    target = folder / ARCHIVE_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    print(f"downloading {ARCHIVE_NAME} (358 MB) into {folder}", file=sys.stderr)
    return _pip_download(folder) or _pypi_download(folder)


# ---------------------------------------------------------------- settings shipped with the package


def builtin_settings() -> dict[str, dict]:
    """The built-in split files (`maml_en_llm/settings/*.json`) by name, as parsed JSON."""
    folder = resources.files("maml_en_llm") / "settings"
    return {p.name[: -len(".json")]: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")}


# ---------------------------------------------------------------- the build


def _summary(manifest: dict, out: Path) -> str:
    counts = manifest["counts"]
    lines = [
        f"BIG-bench collection at {out}",
        f"  archive: {manifest['archive']['name']} sha256 {manifest['archive']['sha256'][:16]}...",
        f"  task.json files: {counts['task_json_files']}, with multiple-choice examples: {counts['multiple_choice_task_files']}",
        f"  tasks: {counts['tasks']} (dropped with < {MIN_EXAMPLES} usable examples: {len(counts['tasks_too_small'])})",
        f"  examples: {counts['examples_read']} read, {counts['examples_usable']} usable "
        f"({counts['examples_in_small_tasks']} of them in dropped tasks); written: pool {counts['pool_examples']}, "
        f"test {counts['test_examples']} (per seed {SHOTS} demonstrations + {SHOTS} dev are drawn from the pool)",
        "  skipped examples: " + (", ".join(f"{k} {v}" for k, v in manifest["counts"]["skipped"].items()) or "none"),
    ]
    if manifest["settings"]:
        lines.append("  settings (train / test / unseen-domain test tasks):")
        lines += [f"    {name}: {s['train']} / {s['test']} / {s['unseen_domain_test']}" for name, s in manifest["settings"].items()]
    if manifest["settings_not_copied"]:
        lines.append(f"  settings not copied (tasks missing from this build): {', '.join(manifest['settings_not_copied'])}")
    return "\n".join(lines)


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _remove_stale_builds(out: Path) -> None:
    """Hidden folders left by builds that were killed (their process no longer exists)."""
    for prefix in (f".{out.name}.building-", f".{out.name}.old-"):
        for stale in [p for p in out.parent.iterdir() if p.name.startswith(prefix)]:
            try:
                os.kill(int(stale.name[len(prefix):]), 0)
            except ProcessLookupError:
                shutil.rmtree(stale, ignore_errors=True)
            except (ValueError, PermissionError):
                pass


def build_collection(archive: Path | None = None, out: Path | None = None, max_per_task: int | None = None,
                     progress: bool = True) -> dict:
    """Build the collection into `out` (default: `paths.default_data_dir()`); return its manifest.

    A re-run whose manifest matches (same archive sha256 and options) does nothing but print "up to date".
    """
    started = time.monotonic()
    out = Path(out or paths.default_data_dir()).expanduser().absolute()
    max_pool = POOL_K if max_per_task is None else max_per_task
    if max_pool < MIN_POOL:
        raise UserError(f"--max-per-task {max_per_task}: must be at least {MIN_POOL} (16 demonstrations + 16 dev examples)")
    max_pool = min(max_pool, POOL_K)
    settings = builtin_settings()
    options = {"converter_version": CONVERTER_VERSION, "max_per_task": max_pool, "min_examples": MIN_EXAMPLES,
               "max_test": MAX_TEST, "shots": SHOTS, "seeds": list(EVAL_SEEDS),
               "settings_sha256": json_digest(settings)}
    existing = _read_manifest(out) if out.exists() else None

    def up_to_date(archive_sha: str) -> bool:
        return bool(existing) and existing.get("archive", {}).get("sha256") == archive_sha and existing.get("options") == options

    # Without --archive the source is PyPI's sdist by definition: a matching build needs no download.
    if archive is None and up_to_date(KNOWN_ARCHIVE_SHA256):
        print(f"up to date\n{_summary(existing, out)}")
        return existing
    archive = Path(archive).expanduser() if archive else download_archive()
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found; pass --archive PATH to {ARCHIVE_NAME} or leave it out to download it")
    archive_sha = sha256_file(archive)
    if up_to_date(archive_sha):
        print(f"up to date\n{_summary(existing, out)}")
        return existing
    if archive_sha != KNOWN_ARCHIVE_SHA256:
        print(f"note: {archive} is not PyPI's {ARCHIVE_NAME} (sha256 differs); converting it anyway", file=sys.stderr)
    if out.exists() and (not out.is_dir() or (existing is None and any(out.iterdir()))):
        raise UserError(f"{out}: exists and is not a collection built by `maml-en-llm data bigbench`; "
                        "remove it or choose another --out")

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out)
    building = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        manifest = _build_into(building, archive, archive_sha, options, max_pool, settings, progress)
        if out.exists():  # an older build of ours: swap it out, then delete it
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(building, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"{_summary(manifest, out)}\n  wall time: {time.monotonic() - started:.0f} s")
    return manifest


def _build_into(root: Path, archive: Path, archive_sha: str, options: dict, max_pool: int,
                settings: dict[str, dict], progress: bool) -> dict:
    root.mkdir(parents=True)
    stats, skipped, tasks, too_small = Counter(), Counter(), {}, []
    for task in iter_archive(archive, stats, progress):
        stats["examples_read"] += len(task.records) + sum(task.skipped.values())
        stats["examples_usable"] += len(task.records)
        skipped.update(task.skipped)
        if task.name in tasks:
            raise UserError(f"{archive}: task {task.name!r} appears twice; pass an unmodified {ARCHIVE_NAME}")
        if len(task.records) < MIN_EXAMPLES:
            too_small.append(task.name)
            stats["examples_in_small_tasks"] += len(task.records)
            continue
        files, meta = split_task(task, max_pool), task.meta()
        write_task(root, task, files, meta)
        stats["pool_examples"] += len(files.pool)
        stats["test_examples"] += len(files.test)
        tasks[task.name] = {**meta, "pool": len(files.pool), "test": len(files.test)}

    copied, not_copied = {}, []
    for name, split in settings.items():
        named = [t for key in ("train", "test") for t in split.get(key, [])]
        if all(t in tasks for t in named):
            (root / "config" / f"{name}.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
            copied[name] = {key: len(split.get(key, [])) for key in ("train", "test", "unseen_domain_test")}
        else:
            not_copied.append(name)
    manifest = {
        "source": "BIG-bench multiple-choice tasks converted by `maml-en-llm data bigbench` (see docs/data.md)",
        "archive": {"name": ARCHIVE_NAME, "sha256": archive_sha},
        "options": options,
        "counts": {
            "task_json_files": stats["task_json_files"],
            "multiple_choice_task_files": stats["multiple_choice_task_files"],
            "tasks": len(tasks),
            "tasks_too_small": sorted(too_small),
            "examples_read": stats["examples_read"],
            "examples_usable": stats["examples_usable"],
            "examples_in_small_tasks": stats["examples_in_small_tasks"],
            "pool_examples": stats["pool_examples"],
            "test_examples": stats["test_examples"],
            "skipped": {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]},
        },
        "settings": copied,
        "settings_not_copied": not_copied,
        "tasks": dict(sorted(tasks.items())),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
