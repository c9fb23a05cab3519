"""Derive the built-in BIG-bench settings (`src/maml_en_llm/settings/*.json`) from the archive, deterministically.

    .venv/bin/python scripts/make_bigbench_settings.py --archive bigbench-1.0.0.tar.gz          # rewrite them
    .venv/bin/python scripts/make_bigbench_settings.py --archive bigbench-1.0.0.tar.gz --check  # compare only

It converts the archive in memory with the same code as `maml-en-llm data bigbench` (about 30 s), so the task
sizes it chooses by are the ones a build writes. Every choice below is a rule over BIG-bench's own metadata
(family, keywords, number of usable examples, median input length, options); docs/data.md states them with the
resulting sizes. Splits are by *family* (a task's top-level BIG-bench folder): no subtask of a test task's family
is ever trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from maml_en_llm.bigbench import MIN_EXAMPLES, iter_archive, test_set_size
from maml_en_llm.tasks import POOL_K

SETTINGS_DIR = Path(__file__).resolve().parents[1] / "src" / "maml_en_llm" / "settings"

# The default model is English-only, and so is MetaICL's collection: tasks with these keywords, or whose inputs'
# letters are mostly non-ASCII (entailed_polarity_hindi, parsinlu_qa carry no such keyword), join no setting.
EXCLUDED_KEYWORDS = frozenset({"non-English", "low-resource language", "multilingual"})
MIN_ASCII_LETTER_SHARE = 0.5
# Training mixes: at most 4 subtasks per family (shortest inputs first) so that families with 20 near-identical
# subtasks (arithmetic, bbq_lite_json, multiemo, ...) do not dominate; inputs longer than 2000 characters
# (~500 tokens, no room for demonstrations) are left out of training.
MAX_TRAIN_PER_FAMILY = 4
MAX_TRAIN_INPUT_CHARS = 2000
HIGH_RESOURCE = 1000  # usable examples: a high-resource training task
LOW_RESOURCE = 500  # fewer usable examples than this: a low-resource test candidate
# A test task must be cheap to evaluate on CPU: short inputs, few and short options.
MAX_TEST_INPUT_CHARS = 300
MAX_TEST_OPTIONS = 8
MAX_TEST_OPTION_CHARS = 150
MIN_TEST_EXAMPLES = 32  # a test set smaller than this gives too noisy an accuracy
TEST_TASKS, UNSEEN_TEST_TASKS = 12, 3


@dataclass(frozen=True)
class SettingRule:
    name: str
    about: str
    target_keywords: frozenset[str]  # "non-X to X": test tasks carry one of these, training families none
    unseen_keywords: frozenset[str]  # the held-out domain: no training family carries one; its test tasks are unseen_domain_test
    high_to_low: bool = False  # train only on high-resource tasks, test only on low-resource ones


RULES = (
    SettingRule("bb_hr_to_lr", "train on high-resource tasks, test on low-resource ones (MetaICL's HR->LR)",
                frozenset(), frozenset({"truthfulness"}), high_to_low=True),
    SettingRule("bb_non_logic_to_logic", "train on tasks without logical reasoning, test on logical-reasoning tasks",
                frozenset({"logical reasoning"}), frozenset({"mathematics", "arithmetic", "algebra"})),
    SettingRule("bb_non_math_to_math", "train on tasks without mathematics, test on mathematics/arithmetic tasks",
                frozenset({"mathematics", "arithmetic", "algebra"}), frozenset({"physics", "domain specific"})),
    SettingRule("bb_non_commonsense_to_commonsense", "train on tasks without common sense, test on common-sense tasks",
                frozenset({"common sense"}), frozenset({"causal reasoning"})),
    SettingRule("bb_non_social_to_social", "train on tasks without social/emotional reasoning, test on such tasks",
                frozenset({"social reasoning", "theory of mind", "emotional understanding", "emotional intelligence"}),
                frozenset({"humor"})),
)
# The `make demo` setting: a handful of very short tasks so a 135M model meta-trains on CPU in minutes.
DEMO_UNSEEN_KEYWORDS = frozenset({"domain specific"})
DEMO_TRAIN_TASKS = 16
DEMO_MAX_INPUT_CHARS = 100
DEMO_MAX_OPTIONS = 4  # test tasks only: training never scores options
DEMO_MAX_OPTION_CHARS = 30


def load_tasks(archive: Path) -> dict[str, dict]:
    """Every task a build keeps, with its metadata and pool/test sizes, by name."""
    tasks = {}
    for task in iter_archive(archive):
        if len(task.records) >= MIN_EXAMPLES:
            n_test = test_set_size(len(task.records))
            tasks[task.name] = {**task.meta(), "test": n_test, "pool": min(len(task.records) - n_test, POOL_K)}
    return tasks


def carries(info: dict, keywords: frozenset[str]) -> bool:
    return bool(keywords.intersection(info["keywords"]))


def families_carrying(tasks: dict[str, dict], keywords: frozenset[str]) -> set[str]:
    return {info["family"] for info in tasks.values() if carries(info, keywords)}


def by_shortness(tasks: dict[str, dict], names) -> list[str]:
    return sorted(names, key=lambda name: (tasks[name]["median_input_chars"], name))


def one_per_family(tasks: dict[str, dict], names: list[str], limit: int, taken_families: set[str]) -> list[str]:
    """The first `limit` of `names` (already ordered) from families not yet taken; marks theirs taken."""
    chosen = []
    for name in names:
        if len(chosen) < limit and tasks[name]["family"] not in taken_families:
            chosen.append(name)
            taken_families.add(tasks[name]["family"])
    return chosen


def english(info: dict) -> bool:
    return not carries(info, EXCLUDED_KEYWORDS) and info["ascii_letter_share"] >= MIN_ASCII_LETTER_SHARE


def cheap_to_test(info: dict, max_input: int, max_options: int, max_option_chars: int) -> bool:
    return (info["median_input_chars"] <= max_input and info["max_options"] <= max_options
            and info["max_option_chars"] <= max_option_chars and info["test"] >= MIN_TEST_EXAMPLES)


def training_tasks(tasks: dict[str, dict], allowed: list[str], per_family: int) -> list[str]:
    counts: dict[str, int] = {}
    chosen = []
    for name in by_shortness(tasks, allowed):
        family = tasks[name]["family"]
        if counts.get(family, 0) < per_family:
            chosen.append(name)
            counts[family] = counts.get(family, 0) + 1
    return sorted(chosen)


def make_setting(tasks: dict[str, dict], rule: SettingRule) -> dict:
    usable = {n: i for n, i in tasks.items() if english(i)}
    candidates = [n for n, i in usable.items()
                  if cheap_to_test(i, MAX_TEST_INPUT_CHARS, MAX_TEST_OPTIONS, MAX_TEST_OPTION_CHARS)
                  and (carries(i, rule.target_keywords) if rule.target_keywords else True)
                  and (i["examples"] < LOW_RESOURCE if rule.high_to_low else True)]
    taken: set[str] = set()
    unseen = one_per_family(tasks, by_shortness(tasks, [n for n in candidates if carries(tasks[n], rule.unseen_keywords)]),
                            UNSEEN_TEST_TASKS, taken)
    seen = one_per_family(tasks, by_shortness(tasks, [n for n in candidates if not carries(tasks[n], rule.unseen_keywords)]),
                          TEST_TASKS - len(unseen), taken)
    held_out = taken | families_carrying(usable, rule.unseen_keywords) | families_carrying(usable, rule.target_keywords)
    allowed = [n for n, i in usable.items() if i["family"] not in held_out and i["median_input_chars"] <= MAX_TRAIN_INPUT_CHARS
               and (i["examples"] >= HIGH_RESOURCE if rule.high_to_low else True)]
    return {
        "about": rule.about,
        "unseen_domain_keywords": sorted(rule.unseen_keywords),
        "train": training_tasks(tasks, allowed, MAX_TRAIN_PER_FAMILY),
        "test": sorted(unseen + seen),
        "unseen_domain_test": sorted(unseen),
    }


def make_demo(tasks: dict[str, dict]) -> dict:
    short = {n: i for n, i in tasks.items() if english(i) and i["median_input_chars"] <= DEMO_MAX_INPUT_CHARS
             and i["max_option_chars"] <= DEMO_MAX_OPTION_CHARS}
    testable = [n for n, i in short.items() if cheap_to_test(i, DEMO_MAX_INPUT_CHARS, DEMO_MAX_OPTIONS, DEMO_MAX_OPTION_CHARS)]
    taken: set[str] = set()
    unseen = one_per_family(tasks, by_shortness(tasks, [n for n in testable if carries(tasks[n], DEMO_UNSEEN_KEYWORDS)]), 1, taken)
    seen = one_per_family(tasks, by_shortness(tasks, [n for n in testable if not carries(tasks[n], DEMO_UNSEEN_KEYWORDS)]), 1, taken)
    held_out = taken | families_carrying(tasks, DEMO_UNSEEN_KEYWORDS)
    train = one_per_family(tasks, by_shortness(tasks, short), DEMO_TRAIN_TASKS, set(held_out))
    return {
        "about": "tiny setting for `make demo`: one short task per family; test tasks have 2-4 options",
        "unseen_domain_keywords": sorted(DEMO_UNSEEN_KEYWORDS),
        "train": sorted(train),
        "test": sorted(unseen + seen),
        "unseen_domain_test": sorted(unseen),
    }


def describe(name: str, setting: dict, tasks: dict[str, dict]) -> str:
    def sizes(names):
        return ", ".join(f"{n} ({tasks[n]['test']} test, {tasks[n]['median_input_chars']} ch)" for n in names)

    train_families = {tasks[n]["family"] for n in setting["train"]}
    return (f"{name}: {len(setting['train'])} train tasks from {len(train_families)} families "
            f"({sum(tasks[n]['pool'] for n in setting['train'])} pool examples); {len(setting['test'])} test tasks "
            f"({len(setting['unseen_domain_test'])} unseen-domain)\n  test: {sizes(setting['test'])}\n"
            f"  unseen domain: {', '.join(setting['unseen_domain_test'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True, help="PyPI's bigbench-1.0.0.tar.gz")
    parser.add_argument("--out", type=Path, default=SETTINGS_DIR, help=f"folder to write (default {SETTINGS_DIR})")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out; exit 1 if they differ")
    args = parser.parse_args(argv)

    tasks = load_tasks(args.archive)
    settings = {rule.name: make_setting(tasks, rule) for rule in RULES}
    settings["bb_demo"] = make_demo(tasks)
    differ = []
    for name, setting in settings.items():
        for part in ("train", "test"):
            families = {tasks[n]["family"] for n in setting[part]}
            assert part == "test" or not families & {tasks[n]["family"] for n in setting["test"]}, name
        text = json.dumps(setting, indent=1) + "\n"
        path = args.out / f"{name}.json"
        print(describe(name, setting, tasks))
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                differ.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if differ:
        print(f"differ from {args.out}: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
