"""`maml-en-llm data bigbench` on a small fake sdist, and the built-in settings.

Nothing here needs the network or the real 358 MB archive: the fake has the real member layout
(`bigbench-1.0.0/bigbench/benchmark_tasks/<family>[/<subtask>]/task.json`) and one bad example of each kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from maml_en_llm import bigbench, tasks
from maml_en_llm.cli import main
from maml_en_llm.errors import UserError

SEEDS = tasks.EVAL_SEEDS
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks"

BAD_EXAMPLES = {  # reason -> one example skipped for it
    "not_multiple_choice": {"input": "free text", "target": "an answer"},
    "bad_fields": {"input": 7, "target_scores": {"a": 1, "b": 0}},
    "empty_input": {"input": "   ", "target_scores": {"a": 1, "b": 0}},
    "empty_option": {"input": "q", "target_scores": {" ": 1, "b": 0}},
    "duplicate_options": {"input": "q", "target_scores": {"a": 1, " a ": 0}},
    "too_few_options": {"input": "q", "target_scores": {"a": 1}},
    "tied_best": {"input": "q", "target_scores": {"3": 1, "three": 1, "4": 0}},
}


def mc(n: int, start: int = 0, options=("yes", "no")) -> list[dict]:
    """n distinct multiple-choice examples; the answer alternates between the options."""
    return [{"input": f"question {i}?", "target_scores": {o: int(j == i % len(options)) for j, o in enumerate(options)}}
            for i in range(start, start + n)]


def fake_archive(path: Path, extra: dict[str, dict] | None = None) -> Path:
    alpha = mc(60) + [dict(e) for e in BAD_EXAMPLES.values()] + [
        {"input": "  Is it\tpadded?  ", "target_scores": {" nope ": 0, "yep": 1.0}},
        {"input": "  Is it\tpadded?  ", "target_scores": {"nope": 0, "yep": 1}},  # duplicate after stripping
        {"input": "question 3?", "target_scores": {"yes": 0, "no": 1}, "target": "no"},  # duplicate of mc(60)[3]
    ]
    per_example_options = [{"input": f"pick {i}", "target_scores": {f"x{i}": 1, f"y{i}": 0, "z": 0}} for i in range(70)]
    members = {
        "alpha/task.json": {"name": "alpha", "description": "Alpha task.", "keywords": ["logical reasoning"],
                            "task_prefix": "Answer yes or no.\n", "examples": alpha},
        "beta/task.json": {"name": "beta", "description": "parent of subtasks", "keywords": ["common sense"]},
        "beta/one/task.json": {"name": "beta_one", "description": "Beta one.", "keywords": ["common sense"],
                               "examples": mc(120, options=("red", "green", "blue"))},
        "beta/two/task.json": {"name": "beta_two", "description": "Beta two.", "keywords": ["common sense", "humor"],
                               "task_prefix": "", "examples": per_example_options},
        "gamma/task.json": {"name": "gamma", "description": "generative", "keywords": [],
                            "examples": [{"input": "1+1", "target": "2"}] * 60},
        "tiny/task.json": {"name": "tiny", "description": "too small", "keywords": [], "examples": mc(20)},
        **(extra or {}),
    }
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("bigbench-1.0.0/setup.py", b"# not a task\n")
        add(f"{ROOT}/alpha/README.md", b"# Alpha\n")
        for name, content in members.items():
            add(f"{ROOT}/{name}", json.dumps(content).encode())
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return fake_archive(tmp_path_factory.mktemp("archive") / bigbench.ARCHIVE_NAME)


@pytest.fixture(scope="module")
def built(archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "bb"
    bigbench.build_collection(archive=archive, out=out, progress=False)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_names(built):
    assert sorted(p.name for p in built.iterdir()) == ["MANIFEST.json", "alpha", "beta-one", "beta-two", "config"]
    assert sorted(p.name for p in (built / "config" / "tasks").iterdir()) == ["alpha.json", "beta-one.json", "beta-two.json"]
    expected = {"alpha_16384_100_train.jsonl"} | {f"alpha_16_{s}_{part}.jsonl" for s in SEEDS for part in ("train", "dev", "test")}
    assert {p.name for p in (built / "alpha").iterdir()} == expected
    assert not list(built.parent.glob(".bb.*")), "no build folder left behind"


def test_records_validate_through_the_reader(built):
    for task in ("alpha", "beta-one", "beta-two"):
        pool = tasks.load_pool(built, task)
        for seed in SEEDS:
            assert len(tasks.load_demonstrations(built, task, seed, 16)) == 16
            assert all(len(e.options) >= 2 for e in tasks.load_test(built, task, seed))
    assert len(tasks.load_pool(built, "beta-one")) == 60 and len(tasks.load_test(built, "beta-one", 100)) == 60
    assert len(pool) == 35 and len(tasks.load_test(built, "beta-two", 13)) == 35  # 70 usable: test min(500, 70 // 2, 70 - 32)

    alpha = tasks.load_task_meta(built, "alpha")
    assert alpha.task_type == "multi-choice" and alpha.options is None  # one example offers nope/yep, not yes/no
    assert alpha.instruction == "Answer yes or no."  # task_prefix, stripped
    one = tasks.load_task_meta(built, "beta-one")
    assert one.task_type == "classification" and one.options == ("red", "green", "blue")
    two = tasks.load_task_meta(built, "beta-two")
    assert two.task_type == "multi-choice" and two.options is None and two.instruction == "Beta two."  # description
    meta = json.loads((built / "config" / "tasks" / "beta-two.json").read_text())
    assert meta["family"] == "beta" and meta["keywords"] == ["common sense", "humor"] and meta["examples"] == 70


def test_conversion_rules(built):
    records = [r for split in ("16384_100_train", "16_100_test") for r in read_jsonl(built / "alpha" / f"alpha_{split}.jsonl")]
    padded = [r for r in records if r["input"] == "Is it\tpadded?"]
    assert padded == [{"task": "alpha", "input": "Is it\tpadded?", "output": "yep", "options": ["nope", "yep"]}]
    assert len(records) == 61  # 60 + the padded one; every bad example and both duplicates skipped
    three = next(r for r in records if r["input"] == "question 3?")
    assert three["output"] == "no"  # highest target score


def test_test_set_fixed_across_seeds_and_disjoint_from_pool(built):
    for task in ("alpha", "beta-one", "beta-two"):
        test_files = [tasks.task_file(built, task, 16, seed, "test").read_bytes() for seed in SEEDS]
        assert all(f == test_files[0] for f in test_files)
        key = lambda r: (r["input"], r["output"])  # noqa: E731
        test = {key(r) for r in read_jsonl(tasks.task_file(built, task, 16, 100, "test"))}
        pool = {key(r) for r in read_jsonl(tasks.task_file(built, task, 16384, 100, "train"))}
        assert not test & pool
        demo_sets = []
        for seed in SEEDS:
            train = {key(r) for r in read_jsonl(tasks.task_file(built, task, 16, seed, "train"))}
            dev = {key(r) for r in read_jsonl(tasks.task_file(built, task, 16, seed, "dev"))}
            assert len(train) == len(dev) == 16 and not train & dev and train | dev <= pool
            demo_sets.append(frozenset(train))
        assert len(set(demo_sets)) == len(SEEDS), "each seed draws its own demonstrations"


def test_manifest_counts(archive, built):
    manifest = json.loads((built / "MANIFEST.json").read_text())
    counts = manifest["counts"]
    assert counts["skipped"] == {**{reason: 1 for reason in BAD_EXAMPLES}, "duplicate_example": 2}
    assert counts["task_json_files"] == 6 and counts["multiple_choice_task_files"] == 4  # beta and gamma have no MC
    assert counts["tasks"] == 3 and counts["tasks_too_small"] == ["tiny"] and counts["examples_in_small_tasks"] == 20
    assert counts["examples_usable"] == 61 + 120 + 70 + 20
    assert counts["pool_examples"] + counts["test_examples"] == 61 + 120 + 70
    assert manifest["tasks"]["alpha"]["pool"] == 32 and manifest["tasks"]["alpha"]["test"] == 29
    assert manifest["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["settings"] == {} and manifest["settings_not_copied"] == tasks.builtin_split_names()


def test_deterministic_and_rerun_is_a_noop(archive, built, tmp_path, capsys):
    again = tmp_path / "again"
    bigbench.build_collection(archive=archive, out=again, progress=False)
    assert tree(again) == tree(built)

    before = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    capsys.readouterr()
    bigbench.build_collection(archive=archive, out=again, progress=False)
    assert capsys.readouterr().out.startswith("up to date\n")
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before


def test_rerun_without_archive_needs_no_download(archive, built, monkeypatch, capsys):
    """Without --archive the source is PyPI's sdist; a build of it that matches is up to date, offline."""
    monkeypatch.setattr(bigbench, "KNOWN_ARCHIVE_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(bigbench, "download_archive", lambda: pytest.fail("must not download"))
    bigbench.build_collection(out=built, progress=False)
    assert capsys.readouterr().out.startswith("up to date\n")


def test_changed_options_rebuild_in_place(archive, tmp_path):
    out = tmp_path / "bb"
    bigbench.build_collection(archive=archive, out=out, progress=False)
    bigbench.build_collection(archive=archive, out=out, max_per_task=40, progress=False)
    assert len(tasks.load_pool(out, "beta-one")) == 40
    assert json.loads((out / "MANIFEST.json").read_text())["options"]["max_per_task"] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb"]
    with pytest.raises(UserError, match="at least 32"):
        bigbench.build_collection(archive=archive, out=out, max_per_task=31, progress=False)


def test_corrupt_archive_writes_nothing(archive, tmp_path):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="broken.tar.gz"):
        bigbench.build_collection(archive=broken, out=out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tar.gz"]

    not_gzip = tmp_path / "plain.tar.gz"
    not_gzip.write_text("hello")
    assert main(["data", "bigbench", "--archive", str(not_gzip), "--out", str(out)]) == 2
    assert not out.exists()


def test_bad_task_json_and_foreign_out(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo(f"{ROOT}/alpha/task.json")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"{nope"))
    with pytest.raises(UserError, match="alpha/task.json is not valid JSON"):
        bigbench.build_collection(archive=bad, out=tmp_path / "out", progress=False)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not a collection built by"):
        bigbench.build_collection(archive=fake_archive(tmp_path / "a.tar.gz"), out=foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_settings_are_copied_when_their_tasks_exist(archive, tmp_path, monkeypatch):
    fake = {"train": ["alpha"], "test": ["beta-one", "beta-two"], "unseen_domain_test": ["beta-two"]}
    monkeypatch.setattr(bigbench, "builtin_settings", lambda: {"bb_fake": fake, "bb_other": {"train": ["nope"], "test": ["alpha"]}})
    out = tmp_path / "bb"
    manifest = bigbench.build_collection(archive=archive, out=out, progress=False)
    assert manifest["settings"] == {"bb_fake": {"train": 1, "test": 2, "unseen_domain_test": 1}}
    assert manifest["settings_not_copied"] == ["bb_other"]
    split = tasks.load_split("bb_fake", data_dir=out)
    assert split.test == ("beta-one", "beta-two") and split.source == str(out / "config" / "bb_fake.json")
    tasks.check_split_data(split, out)


def test_download_falls_back_to_pypi_json_and_checks_sha(tmp_path, monkeypatch):
    payload = b"pretend sdist"
    sdist = {"packagetype": "sdist", "filename": bigbench.ARCHIVE_NAME, "url": "https://files/bb.tar.gz",
             "digests": {"sha256": hashlib.sha256(payload).hexdigest()}}
    release = {"urls": [{"packagetype": "bdist_wheel", "filename": "x.whl", "url": "u", "digests": {"sha256": "0"}}, sdist]}
    fetched = []

    def urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(json.dumps(release).encode() if url == bigbench.PYPI_JSON_URL else payload)

    monkeypatch.setattr(bigbench, "_pip_download", lambda folder: None)  # as when pip refuses the sdist
    monkeypatch.setattr(bigbench.urllib.request, "urlopen", urlopen)
    got = bigbench.download_archive(tmp_path)
    assert got == tmp_path / "downloads" / bigbench.ARCHIVE_NAME and got.read_bytes() == payload
    assert bigbench.download_archive(tmp_path) == got and len(fetched) == 2  # cached: nothing fetched again

    sdist["digests"]["sha256"] = "f" * 64
    with pytest.raises(UserError, match="does not match"):
        bigbench.download_archive(tmp_path / "other")
    assert list((tmp_path / "other" / "downloads").iterdir()) == []

    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(bigbench.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="pass --archive"):
        bigbench.download_archive(tmp_path / "other")


def test_pip_download_first(tmp_path, monkeypatch):
    import subprocess

    def pip_ok(command, **kwargs):
        Path(command[command.index("-d") + 1], bigbench.ARCHIVE_NAME).write_bytes(b"sdist")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(bigbench.subprocess, "run", pip_ok)
    monkeypatch.setattr(bigbench, "_pypi_download", lambda folder: pytest.fail("pip worked"))
    got = bigbench.download_archive(tmp_path)
    assert got.read_bytes() == b"sdist" and [p.name for p in got.parent.iterdir()] == [bigbench.ARCHIVE_NAME]

    refused = subprocess.CompletedProcess([], 1, "", "ERROR: Distributions from PyPI cannot declare direct URL dependencies")
    monkeypatch.setattr(bigbench.subprocess, "run", lambda command, **kwargs: refused)
    (tmp_path / "other").mkdir()
    assert bigbench._pip_download(tmp_path / "other") is None and list((tmp_path / "other").iterdir()) == []


def test_classification_needs_one_option_set_in_any_order():
    examples = [{"input": f"q{i}", "target_scores": dict(sorted({"a": i % 2, "b": 1 - i % 2}.items(), reverse=i % 3 == 0))}
                for i in range(6)]
    meta = bigbench.convert_task("t", "t", {"examples": examples, "description": " d "}).meta()
    assert meta["task_type"] == "classification" and sorted(meta["options"]) == ["a", "b"] and meta["instruction"] == "d"
    examples.append({"input": "q9", "target_scores": {"a": 1, "c": 0}})
    assert bigbench.convert_task("t", "t", {"examples": examples}).meta()["task_type"] == "multi-choice"


def test_builtin_settings_split_by_family():
    names = tasks.builtin_split_names()
    assert {"bb_hr_to_lr", "bb_demo"} <= set(names) and len(names) >= 5
    for name in names:
        split = tasks.load_split(name)
        family = lambda task: task.split("-")[0]  # noqa: E731
        assert not {family(t) for t in split.train} & {family(t) for t in split.test}, name
        assert set(split.unseen_domain_test) <= set(split.test) and split.unseen_domain_test, name
        assert len(set(split.train)) == len(split.train) and len(set(split.test)) == len(split.test), name
        if name == "bb_demo":
            assert len(split.test) == 2 and 12 <= len(split.train) <= 20
        else:
            assert 6 <= len(split.test) <= 20 and len(split.train) >= 20, name
