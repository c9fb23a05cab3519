"""Derive the study's split files (`study/splits/*.json`) from the built-in BIG-bench settings.

    .venv/bin/python scripts/make_study_splits.py            # needs `maml-en-llm data bigbench` first

Rule: a study split keeps a setting's training tasks unchanged and its test tasks that have at least
MIN_TEST test examples, so every test task can be scored on 100 examples per seed (docs/results.md explains
why: the power to see a 2-point difference). `unseen_domain_test` keeps the setting's unseen-domain tasks that
pass the same rule. `social-k16` is `social` less the training tasks whose pool is too small for k = 16 episodes
(a support and a query instance from disjoint halves need 2 x (16 + 1) = 34 examples). `survey` lists every test
task of the built-in settings that passes MIN_TEST, with no training tasks: it is for scoring the untrained model
(docs/results.md, section 6), not for training. `headroom` tests on the HEADROOM tasks below and trains on every
other task of the collection except those of the same BIG-bench parent task (the name before "-").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maml_en_llm.paths import default_data_dir  # noqa: E402
from maml_en_llm.tasks import builtin_split_names, load_pool, load_split, load_test  # noqa: E402

MIN_TEST = 100
K16_POOL = 2 * (16 + 1)
SETTINGS = {"social": "bb_non_social_to_social", "commonsense": "bb_non_commonsense_to_commonsense",
            "logic": "bb_non_logic_to_logic"}


def main() -> None:
    data_dir = default_data_dir()
    out = ROOT / "study" / "splits"
    out.mkdir(parents=True, exist_ok=True)
    for name, setting in SETTINGS.items():
        split = load_split(setting)
        test = [t for t in split.test if len(load_test(data_dir, t, 100)) >= MIN_TEST]
        body = {"about": f"{setting} with the test tasks that have >= {MIN_TEST} test examples",
                "train": list(split.train), "test": test,
                "unseen_domain_test": [t for t in split.unseen_domain_test if t in test]}
        (out / f"{name}.json").write_text(json.dumps(body, indent=1) + "\n")
        print(f"{name}: {len(body['train'])} train, {len(test)} test ({', '.join(test)})")
        if name == "social":
            k16 = dict(body, about=body["about"] + f", less the training tasks with < {K16_POOL} pool examples",
                       train=[t for t in body["train"] if len(load_pool(data_dir, t)) >= K16_POOL])
            (out / "social-k16.json").write_text(json.dumps(k16, indent=1) + "\n")
            print(f"social-k16: {len(k16['train'])} train")
    write_survey(data_dir, out)
    write_headroom(data_dir, out)


# The survey's tasks on which the untrained default model, on each seed's dev examples (not the test examples),
# scores at least 5 points above its input-blind floor at k = 4 and at least 3 points above its own zero-shot
# score: tasks on which demonstrations already help a little, so meta-training has room to show it helps more
# (docs/results.md, section 6, gives the survey's numbers and commands).
HEADROOM = ("cs_algorithms-valid_parentheses", "date_understanding", "goal_step_wikihow-goal_inference",
            "implicatures", "movie_recommendation", "navigate", "physics", "ruin_names", "social_support",
            "unit_conversion-different_systems")


def write_headroom(data_dir: Path, out: Path) -> None:
    parents = {task.split("-")[0] for task in HEADROOM}
    collection = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name != "config")
    train = [task for task in collection if task.split("-")[0] not in parents]
    body = {"about": "the survey's tasks with room above their floor and an ICL gain on dev examples (HEADROOM in "
                     "scripts/make_study_splits.py); trained on every other task of the collection but those of "
                     "the same BIG-bench parent task",
            "train": train, "test": list(HEADROOM), "unseen_domain_test": []}
    (out / "headroom.json").write_text(json.dumps(body, indent=1) + "\n")
    print(f"headroom: {len(train)} train, {len(HEADROOM)} test")


def write_survey(data_dir: Path, out: Path) -> None:
    tasks = sorted({t for name in builtin_split_names() for t in load_split(name).test})
    test = [t for t in tasks if len(load_test(data_dir, t, 100)) >= MIN_TEST]
    body = {"about": f"every test task of the built-in settings with >= {MIN_TEST} test examples; untrained "
                     "evaluation only", "train": [], "test": test, "unseen_domain_test": []}
    (out / "survey.json").write_text(json.dumps(body, indent=1) + "\n")
    print(f"survey: {len(test)} test tasks")


if __name__ == "__main__":
    main()
