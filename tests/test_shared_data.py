"""Integration check: MetaICL's real split/task files and the real classic data in ../shared load unchanged.

Skipped where ../shared is absent (a user's clone); CI and developers have it.
"""

from pathlib import Path

import pytest

from maml_en_llm import tasks

SHARED = Path(__file__).resolve().parents[2] / "shared"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present (integration data)")


def test_every_metaicl_split_and_task_file_loads():
    splits = sorted((SHARED / "metaicl" / "config").glob("*.json"))
    assert len(splits) >= 10
    for path in splits:
        split = tasks.load_split(str(path))
        assert split.test and set(split.unseen_domain_test) <= set(split.test)
    metas = sorted((SHARED / "metaicl" / "config" / "tasks").glob("*.json"))
    assert len(metas) > 400
    for path in metas:
        meta = tasks.load_task_meta(SHARED / "metaicl", path.stem)
        assert meta.task_type in ("classification", "multi-choice", "free-form")


def test_classic_data_loads_unchanged():
    data = SHARED / "data" / "classic"
    split = tasks.load_split("tweets_to_reviews", data)
    tasks.check_split_data(split, data)
    for task in split.train + split.test:
        pool = tasks.load_pool(data, task)
        assert pool and all(e.task == task for e in pool)
        meta = tasks.load_task_meta(data, task, pool)
        assert meta.task_type == "classification" and meta.options == pool[0].options
    for task in split.test:
        for seed in tasks.EVAL_SEEDS:
            assert len(tasks.load_demonstrations(data, task, seed, 16)) == 16
            test = tasks.load_test(data, task, seed)
            assert 0 < len(test) <= 500
