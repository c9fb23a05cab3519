"""Task data in MetaICL's on-disk layout, read unchanged and validated record by record.

Layout (`data_dir` is any folder in this layout: the BIG-bench collection we build, MetaICL's own `data/`, ...):

    <data_dir>/<task>/<task>_16384_100_train.jsonl      meta-training pool of a task
    <data_dir>/<task>/<task>_16_<seed>_{train,dev,test}.jsonl   k-shot demonstrations / dev / test of a target task
                                                        (other sizes K too: k demonstrations come from the
                                                        smallest K >= k present)
    <data_dir>/config/tasks/<task>.json                 {"task_type": "classification"|"multi-choice", "options": [...]|null}
    split files                                         {"train": [...], "test": [...], "unseen_domain_test": [...]}

Records are `{"task", "input", "output", "options"}`. Every problem is reported as one line naming file:line and
what to do (`UserError`, exit code 2). Nothing here writes files.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import UserError

POOL_K, POOL_SEED = 16384, 100
MAX_LINE_BYTES = 1 << 20  # one jsonl record; MetaICL's longest are a few KB
EVAL_SEEDS = (100, 13, 21, 42, 87)
TASK_TYPES = ("classification", "multi-choice")


@dataclass(frozen=True)
class Example:
    task: str
    input: str
    output: str
    options: tuple[str, ...]  # empty for free-form training data


@dataclass(frozen=True)
class TaskMeta:
    task_type: str  # "classification" (Macro-F1) or "multi-choice" (accuracy)
    options: tuple[str, ...] | None
    instruction: str | None = None  # used by in-context tuning (`ict`) when present


@dataclass(frozen=True)
class Split:
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    unseen_domain_test: tuple[str, ...]
    source: str  # the file it was read from


def check_task_name(task: object, where: str) -> str:
    """A task name must be one plain path component: it names a folder inside the data dir."""
    if not isinstance(task, str) or not task.strip():
        raise UserError(f"{where}: task name {task!r} is empty or not a string; use the task's folder name")
    if "/" in task or "\\" in task or "\0" in task or task in (".", "..") or task.startswith("."):
        raise UserError(f"{where}: task name {task!r} would escape the data folder; use a plain folder name")
    return task


def task_file(data_dir: Path, task: str, k: int, seed: int, split: str) -> Path:
    return Path(data_dir) / task / f"{task}_{k}_{seed}_{split}.jsonl"


def _record_problem(record: object, task: str) -> str | None:
    """What is wrong with one record, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for field in ("task", "input", "output"):
        if field not in record:
            return f"missing field {field!r}"
        if not isinstance(record[field], str):
            return f"field {field!r} must be a string, got {type(record[field]).__name__}"
    if "options" not in record:
        return "missing field 'options'"
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        return "field 'options' must be a list of strings"
    if record["task"] != task:
        return f"task field {record['task']!r} does not match its folder {task!r}"
    if not record["output"].strip():
        return "empty output"
    if any(not o.strip() for o in options):
        return "options contain an empty string"
    if len(set(options)) != len(options):
        duplicated = sorted({o for o in options if options.count(o) > 1})
        return f"options contain duplicates {duplicated}"
    if options and record["output"] not in options:
        return f"output {record['output']!r} is not among the options {options}"
    return None


def _read_lines(path: Path):
    """(line number, text) of a UTF-8 jsonl file. A line longer than MAX_LINE_BYTES is refused after reading
    only that much of it (no example needs more: it would not fit any model's context), and bytes that are not
    UTF-8 are reported with their line instead of a UnicodeDecodeError."""
    with open(path, "rb") as handle:
        line_no = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(f"{path}:{line_no}: line is longer than {MAX_LINE_BYTES >> 20} MiB; an example must "
                                "fit a model's context: shorten or remove it")
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1}); re-save the file as UTF-8") from None


def read_json(path: Path, what: str):
    """A whole JSON file (split file, task metadata), with one-line errors for bad bytes or bad JSON."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 (byte offset {err.start}); re-save the {what} as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); fix the {what}") from None


def read_examples(path: Path, task: str, *, allow_empty_input: bool = False) -> list[Example]:
    """Read and validate one jsonl file of `task`.

    Empty inputs are read as MetaICL reads them (its prompt separates such an example with "\\n\\n"); MetaICL's own
    data has some. Outside meta-training pools (`allow_empty_input=False`) they also get a warning on stderr.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; build the data with `maml-en-llm data bigbench` or pass --data-dir")
    examples, empty_inputs = [], []
    for line_no, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{line_no}: malformed JSON ({err.msg}); fix or remove the line") from None
        problem = _record_problem(record, task)
        if problem:
            raise UserError(f"{path}:{line_no}: {problem}; fix or remove the record")
        if not record["input"].strip():
            empty_inputs.append(line_no)
        examples.append(Example(record["task"], record["input"], record["output"], tuple(record["options"])))
    if not examples:
        raise UserError(f"{path}: no records; the file must hold at least one example")
    if empty_inputs and not allow_empty_input:
        print(f"warning: {path}:{empty_inputs[0]}: {len(empty_inputs)} record(s) with an empty input; read as MetaICL "
              "reads them", file=sys.stderr)
    return examples


def load_pool(data_dir: Path, task: str, max_examples: int | None = None) -> list[Example]:
    """The meta-training pool `<task>_16384_100_train.jsonl`, optionally capped to its first `max_examples`."""
    check_task_name(task, str(data_dir))
    examples = read_examples(task_file(data_dir, task, POOL_K, POOL_SEED, "train"), task, allow_empty_input=True)
    return examples[:max_examples] if max_examples else examples


def shot_files(data_dir: Path, task: str, seed: int, split: str) -> dict[int, Path]:
    """{K: path} of every `<task>_<K>_<seed>_<split>.jsonl` present, the meta-training pool (K=16384, seed 100)
    excluded: demonstration and test files come in several sizes K, the pool is not one of them."""
    found = {}
    folder = Path(data_dir) / task
    for path in folder.glob(f"{task}_*_{seed}_{split}.jsonl") if folder.is_dir() else ():
        middle = path.name[len(task) + 1: -len(f"_{seed}_{split}.jsonl")]
        if middle.isdigit() and not (int(middle) == POOL_K and seed == POOL_SEED and split == "train"):
            found[int(middle)] = path
    return dict(sorted(found.items()))


def demonstrations_file(data_dir: Path, task: str, seed: int, k: int) -> Path:
    """The smallest `<task>_<K>_<seed>_train.jsonl` with K >= k (MetaICL's files hold K = 16); a one-line error
    naming the largest one present when none is big enough."""
    files = shot_files(data_dir, task, seed, "train")
    big_enough = [K for K in files if K >= k]
    if big_enough:
        return files[big_enough[0]]
    if not files:
        raise UserError(f"{task_file(data_dir, task, 16, seed, 'train')}: file not found (no demonstration file "
                        f"{task}_<K>_{seed}_train.jsonl); build the data or lower --k")
    largest = max(files)
    raise UserError(f"{files[largest]}: k={k} needs a demonstration file with at least {k} examples; the largest "
                    f"for {task} seed {seed} holds {largest}; lower --k or build larger files "
                    f"(`maml-en-llm data hf --shots {k}`)")


def find_eval_file(data_dir: Path, task: str, seed: int, split: str = "test") -> Path:
    """`<task>_16_<seed>_<split>.jsonl` (MetaICL's name; split "test" or "dev"), else that file of the smallest K
    present (`data hf --shots K` writes K-shot files); the 16-shot name when there is none."""
    files = shot_files(data_dir, task, seed, split)
    if 16 in files or not files:
        return task_file(data_dir, task, 16, seed, split)
    return files[min(files)]


def load_demonstrations(data_dir: Path, task: str, seed: int, k: int) -> list[Example]:
    """The first k examples of the smallest `<task>_<K>_<seed>_train.jsonl` with K >= k (k=0: none, zero-shot)."""
    check_task_name(task, str(data_dir))
    if k == 0:
        return []
    path = demonstrations_file(data_dir, task, seed, k)
    examples = read_examples(path, task)
    if len(examples) < k:
        raise UserError(f"{path}: has {len(examples)} examples, fewer than k={k}; lower --k")
    return examples[:k]


def load_test(data_dir: Path, task: str, seed: int, max_test: int | None = None,
              examples: str = "test") -> list[Example]:
    """The seed's test file (`find_eval_file`; its dev file with examples="dev"), its first `max_test` examples
    when given; every example needs >= 2 options."""
    check_task_name(task, str(data_dir))
    path = find_eval_file(data_dir, task, seed, examples)
    examples = read_examples(path, task)
    for line_no, example in enumerate(examples, start=1):
        if len(example.options) < 2:
            raise UserError(f"{path}:{line_no}: a test example needs at least 2 options to score, has {len(example.options)}")
    return examples[:max_test] if max_test else examples


def load_task_meta(data_dir: Path, task: str, examples: list[Example] | None = None) -> TaskMeta:
    """`config/tasks/<task>.json` of the data dir; without it, classification when all examples share options."""
    check_task_name(task, str(data_dir))
    path = Path(data_dir) / "config" / "tasks" / f"{task}.json"
    if not path.is_file():
        shared = examples is not None and len({e.options for e in examples}) == 1
        return TaskMeta("classification" if shared else "multi-choice", examples[0].options if shared else None)
    meta = read_json(path, "task metadata")
    if not isinstance(meta, dict) or meta.get("task_type") not in TASK_TYPES + ("free-form",):
        raise UserError(f"{path}: 'task_type' must be one of {list(TASK_TYPES)}")
    options = meta.get("options")
    if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
        raise UserError(f"{path}: 'options' must be a list of strings or null")
    instruction = meta.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise UserError(f"{path}: 'instruction' must be a string")
    return TaskMeta(meta["task_type"], tuple(options) if options else None, instruction or None)


def builtin_split_names() -> list[str]:
    folder = resources.files("maml_en_llm") / "settings"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _resolve_split_path(spec: str, data_dir: Path | None) -> Path:
    as_path = Path(spec).expanduser()
    if as_path.suffix == ".json" or as_path.exists():
        if not as_path.is_file():
            raise UserError(f"{spec}: split file not found; give a split-file path or one of {builtin_split_names()}")
        return as_path
    if data_dir is not None and not Path(data_dir).is_dir():  # say so, rather than "no such split"
        raise UserError(f"{data_dir}: data folder not found; run `maml-en-llm data bigbench` or pass --data-dir")
    if data_dir is not None and (Path(data_dir) / "config" / f"{spec}.json").is_file():
        return Path(data_dir) / "config" / f"{spec}.json"
    builtin = resources.files("maml_en_llm") / "settings" / f"{spec}.json"
    if builtin.is_file():
        return Path(str(builtin))
    raise UserError(f"--split {spec!r}: no such split file or built-in setting; choose one of {builtin_split_names()}")


def load_split(spec: str, data_dir: Path | None = None) -> Split:
    """A split file (MetaICL's format) by path, by name under `<data_dir>/config/`, or a built-in setting name."""
    path = _resolve_split_path(spec, data_dir)
    raw = read_json(path, "split file")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a split file is a JSON object with 'train' and 'test' lists")
    lists = {}
    for key in ("train", "test", "unseen_domain_test"):
        value = raw.get(key, [])
        if not isinstance(value, list):
            raise UserError(f"{path}: {key!r} must be a list of task names")
        lists[key] = tuple(check_task_name(t, f"{path} ({key})") for t in value)
        repeated = sorted({t for t in lists[key] if lists[key].count(t) > 1})
        if repeated:
            raise UserError(f"{path}: {key!r} lists {', '.join(map(repr, repeated))} more than once (it would count "
                            "twice); list each task once")
    if not lists["test"]:
        raise UserError(f"{path}: 'test' is empty; a split needs at least one test task")
    stray = [t for t in lists["unseen_domain_test"] if t not in lists["test"]]
    if stray:
        raise UserError(f"{path}: unseen_domain_test tasks {stray} are not in 'test'; add them there")
    return Split(path.stem, lists["train"], lists["test"], lists["unseen_domain_test"], str(path))


def train_test_overlap(split: Split) -> list[str]:
    """Tasks in both the split's train and test lists (meta-training on them leaks the test tasks)."""
    return [t for t in split.train if t in split.test]


def check_train_test_overlap(split: Split, allow: bool = False) -> list[str]:
    """Refuse a split whose train list shares tasks with its test list, unless `allow` (the user's explicit
    `--allow-train-test-overlap`); returns the shared tasks so the run can record them."""
    shared = train_test_overlap(split)
    if shared and not allow:
        raise UserError(f"{split.source}: tasks {shared[:5]}{' ...' if len(shared) > 5 else ''} are in both 'train' "
                        f"and 'test' ({len(shared)} shared), so the test tasks would leak into meta-training; remove "
                        "them from one list, or pass --allow-train-test-overlap to do it on purpose")
    return shared


def check_split_data(split: Split, data_dir: Path, parts: tuple[str, ...] = ("train", "test"), seeds=EVAL_SEEDS,
                     examples: str = "test") -> None:
    """Fail early, naming the task, when a split names a task with no data in `data_dir`. A test task needs the
    seeds' `examples` files: test, or dev (eval --examples dev)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data folder not found; run `maml-en-llm data bigbench` or pass --data-dir")
    for part in parts:
        for task in getattr(split, part):
            if part == "train":
                wanted = [task_file(data_dir, task, POOL_K, POOL_SEED, "train")]
            else:
                wanted = [find_eval_file(data_dir, task, seed, examples) for seed in seeds]
            missing = [p for p in wanted if not p.is_file()]
            if missing:
                raise UserError(
                    f"{split.source}: {part} task {task!r} has no data in {data_dir} (missing {missing[0].name}); "
                    "remove it from the split or point --data-dir at its data"
                )
