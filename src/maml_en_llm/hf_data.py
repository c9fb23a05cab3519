"""`maml-en-llm data hf`: one Hugging Face `datasets` dataset as a task in MetaICL's layout, sampled as MetaICL does.

Sampling follows MetaICL's `preprocess/fewshot_gym_dataset.py` (`generate_k_shot_data`):

* the train split's rows, in dataset order, are shuffled with numpy's legacy global generator,
  `np.random.seed(seed); np.random.shuffle(rows)`, once per seed (100, 13, 21, 42, 87 by default);
* demonstrations `<task>_<K>_<seed>_train.jsonl` = the first K shuffled rows, dev `..._dev.jsonl` = the next K;
* the test set `<task>_<K>_<seed>_test.jsonl` = the whole test split (validation by default, as MetaICL), in
  dataset order, the same for every seed;
* the meta-training pool `<task>_16384_100_train.jsonl` = the first 16384 rows of the seed-100 shuffle.

Each row becomes `{"task", "input", "output", "options"}` as MetaICL's `preprocess` makes it: the input stripped
with literal "\\n" sequences turned into spaces, the output the label's name. Rows without a usable label (e.g. -1
in unlabelled test splits) or with an empty input are dropped *before* shuffling (MetaICL does the same for its
`circa` task) and counted; with no row dropped the files hold exactly the rows MetaICL's sampling picks.
`config/tasks/<task>.json` gets the task type, the options and where the data came from. The task folder is built
beside the target and renamed into place, so a failed run leaves no half-written task.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError
from .paths import atomic_write_text
from .tasks import EVAL_SEEDS, POOL_K, POOL_SEED, check_task_name


def load_source(dataset: str, name: str | None = None, revision: str | None = None) -> dict:
    """{split name: datasets.Dataset} from a `save_to_disk` folder or the hub."""
    try:
        import datasets
    except ImportError:
        raise UserError("data hf needs the `datasets` package: pip install 'maml-en-llm[hf]'") from None
    if Path(dataset).expanduser().is_dir():
        loaded = datasets.load_from_disk(str(Path(dataset).expanduser()))
        return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    try:
        return dict(datasets.load_dataset(dataset, name, revision=revision))
    except Exception as err:  # a typo, a missing config, no network: the user's to fix, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--dataset {dataset}" + (f" --name {name}" if name else "")
                        + f": could not load it ({first}); check the id, --name and your network") from None


def _label_feature(split, field: str):
    import datasets

    feature = split.features.get(field)
    return feature if isinstance(feature, datasets.ClassLabel) else None


class RowConverter:
    """Turns dataset rows into MetaICL records; remembers why rows were dropped."""

    def __init__(self, task: str, text_fields: Sequence[str], label_field: str, *, sep: str = " [SEP] ",
                 template: str | None = None, label_names: Sequence[str] | None = None,
                 options_field: str | None = None):
        self.task, self.text_fields, self.label_field = task, list(text_fields), label_field
        self.sep, self.template, self.options_field = sep, template, options_field
        self.label_names = [n.strip() for n in label_names] if label_names else None
        self.skipped: Counter = Counter()

    def input_text(self, row: dict) -> str:
        text = self.template.format(**row) if self.template else self.sep.join(str(row[f]) for f in self.text_fields)
        return text.strip().replace("\\n", " ")  # MetaICL's preprocess

    def convert(self, row: dict) -> dict | None:
        label = row[self.label_field]
        if self.options_field:
            options = [str(o).strip() for o in (row[self.options_field] or [])]
            if len(options) < 2 or any(not o for o in options) or len(set(options)) != len(options):
                return self._skip("bad_options")
        else:
            options = self.label_names
        if isinstance(label, str):
            output = label.strip()
            if output not in options:
                return self._skip("label_not_an_option")
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool) and 0 <= label < len(options):
            output = options[label]
        else:
            return self._skip("no_label")  # None, -1 (unlabelled), out of range
        text = self.input_text(row)
        if not text:
            return self._skip("empty_input")
        return {"task": self.task, "input": text, "output": output, "options": list(options)}

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None


def metaicl_shuffle(n: int, seed: int) -> list[int]:
    """Row order after MetaICL's `np.random.seed(seed); np.random.shuffle(train_lines)` on n rows (the
    permutation depends only on n and the seed)."""
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)
    return order


def subset_test(n: int, max_test: int | None) -> list[int]:
    """All test rows, or `max_test` of them drawn with seed 100 and kept in dataset order."""
    if max_test is None or max_test >= n:
        return list(range(n))
    return sorted(np.random.RandomState(POOL_SEED).permutation(n)[:max_test].tolist())


def _check_columns(splits: dict, used: Sequence[str], where: str) -> None:
    for split_name, split in splits.items():
        missing = [c for c in used if c not in split.column_names]
        if missing:
            raise UserError(f"{where}: split {split_name!r} has no column {missing[0]!r}; columns are "
                            f"{split.column_names}")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def build_task(*, dataset: str, task: str, text_fields: Sequence[str], label_field: str, out: Path,
               name: str | None = None, revision: str | None = None, sep: str = " [SEP] ",
               template: str | None = None, label_names: Sequence[str] | None = None,
               options_field: str | None = None, train_split: str = "train", test_split: str | None = None,
               shots: Sequence[int] = (16,), seeds: Sequence[int] = EVAL_SEEDS, max_pool: int = POOL_K,
               max_test: int | None = None) -> dict:
    """Convert and sample one dataset into `out/<task>/` and `out/config/tasks/<task>.json`; returns a summary."""
    check_task_name(task, "--task")
    if not shots or any(k < 1 for k in shots) or POOL_K in shots:
        raise UserError(f"--shots {list(shots)}: give sizes >= 1 (and not {POOL_K}, the pool's name)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {list(seeds)}: give each seed once")
    if max_pool < 1 or (max_test is not None and max_test < 1):
        raise UserError("--max-pool and --max-test must be >= 1")
    if not text_fields and not template:
        raise UserError("--text-fields is empty; name the column(s) that make the input")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; --out is a data folder")

    source = load_source(dataset, name, revision)
    if train_split not in source:
        raise UserError(f"--dataset {dataset}: no split {train_split!r}; splits are {sorted(source)}")
    if test_split is None:
        test_split = next((s for s in ("validation", "test") if s in source), None)
        if test_split is None:
            raise UserError(f"--dataset {dataset}: no validation or test split (splits are {sorted(source)}); "
                            "name one with --test-split")
    elif test_split not in source:
        raise UserError(f"--test-split {test_split}: no such split; splits are {sorted(source)}")
    if test_split == train_split:
        raise UserError(f"--test-split {test_split}: the same as --train-split; test rows must not be demonstrations")
    splits = {train_split: source[train_split], test_split: source[test_split]}
    used = [label_field] + ([options_field] if options_field else []) + ([] if template else list(text_fields))
    _check_columns(splits, used, f"--dataset {dataset}")

    feature = _label_feature(splits[train_split], label_field)
    if options_field:
        names, task_type = None, "multi-choice"
    elif label_names:
        if feature is not None and len(label_names) != feature.num_classes:
            raise UserError(f"--label-names: {len(label_names)} names for {feature.num_classes} classes "
                            f"({feature.names}); give one name per class, in class order")
        names, task_type = list(label_names), "classification"
    elif feature is not None:
        names, task_type = list(feature.names), "classification"
    else:
        values = {v for split in splits.values() for v in split[label_field] if isinstance(v, str)}
        if not values:
            raise UserError(f"--label-field {label_field}: integer labels without ClassLabel names; give "
                            "--label-names (one per class, in class order)")
        names, task_type = sorted(values), "classification"
    if names is not None and (len(names) < 2 or len(set(names)) != len(names) or any(not n.strip() for n in names)):
        raise UserError(f"--label-names {names}: need at least 2 distinct, non-empty names")

    converter = RowConverter(task, text_fields, label_field, sep=sep, template=template, label_names=names,
                             options_field=options_field)
    if template:
        try:
            converter.input_text(dict(splits[train_split][0]))
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"--template {template!r}: {err!r} is not a column (columns: "
                            f"{splits[train_split].column_names})") from None
    train_rows = [r for r in map(converter.convert, splits[train_split]) if r is not None]
    train_skipped = dict(converter.skipped)
    converter.skipped.clear()
    test_rows = [r for r in map(converter.convert, splits[test_split]) if r is not None]
    test_rows = [test_rows[i] for i in subset_test(len(test_rows), max_test)]
    if len(train_rows) < max(shots):
        raise UserError(f"--dataset {dataset}: split {train_split!r} has {len(train_rows)} usable rows, fewer than "
                        f"--shots {max(shots)}; lower --shots")
    if not test_rows:
        raise UserError(f"--test-split {test_split}: no usable rows (unlabelled?); choose another split")

    folder = out / task
    building = out / f".{task}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        pool_order = metaicl_shuffle(len(train_rows), POOL_SEED)
        _write_jsonl(building / f"{task}_{POOL_K}_{POOL_SEED}_train.jsonl",
                     [train_rows[i] for i in pool_order[:max_pool]])
        for seed in seeds:
            order = pool_order if seed == POOL_SEED else metaicl_shuffle(len(train_rows), seed)
            for k in shots:
                prefix = building / f"{task}_{k}_{seed}"
                _write_jsonl(Path(f"{prefix}_train.jsonl"), [train_rows[i] for i in order[:k]])
                _write_jsonl(Path(f"{prefix}_dev.jsonl"), [train_rows[i] for i in order[k:2 * k]])
                _write_jsonl(Path(f"{prefix}_test.jsonl"), test_rows)
        if folder.exists():
            old = out / f".{task}.old-{os.getpid()}"
            folder.rename(old)
            building.rename(folder)
            shutil.rmtree(old)
        else:
            building.rename(folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    summary = {"dataset": dataset, "name": name, "revision": revision, "train_split": train_split,
               "test_split": test_split, "text_fields": list(text_fields), "sep": sep, "template": template,
               "label_field": label_field, "options_field": options_field, "shots": list(shots),
               "seeds": list(seeds), "max_pool": max_pool, "max_test": max_test,
               "rows": {"train": len(splits[train_split]), "test": len(splits[test_split])},
               "usable": {"train": len(train_rows), "test": len(test_rows)},
               "skipped": {"train": train_skipped, "test": dict(converter.skipped)},
               "pool": min(len(train_rows), max_pool)}
    meta = {"task_type": task_type, "options": names, "source": summary}
    atomic_write_text(out / "config" / "tasks" / f"{task}.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return summary


def run_data_hf(args) -> None:
    """The `data hf` subcommand."""
    summary = build_task(dataset=args.dataset, task=args.task, text_fields=args.text_fields,
                         label_field=args.label_field, out=args.out, name=args.name, revision=args.revision,
                         sep=args.sep, template=args.template, label_names=args.label_names,
                         options_field=args.options_field, train_split=args.train_split,
                         test_split=args.test_split, shots=args.shots, seeds=args.seeds, max_pool=args.max_pool,
                         max_test=args.max_test)
    skipped = {part: ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
               for part, reasons in summary["skipped"].items()}
    print(f"task {args.task} in {Path(args.out) / args.task}\n"
          f"  {summary['train_split']}: {summary['rows']['train']} rows, {summary['usable']['train']} usable "
          f"(skipped: {skipped['train']}); pool {summary['pool']} -> {args.task}_{POOL_K}_{POOL_SEED}_train.jsonl\n"
          f"  {summary['test_split']}: {summary['rows']['test']} rows, {summary['usable']['test']} in the test set "
          f"(skipped: {skipped['test']})\n"
          f"  shots {summary['shots']} x seeds {summary['seeds']}: <task>_<K>_<seed>_{{train,dev,test}}.jsonl\n"
          f"  metadata: {Path(args.out) / 'config' / 'tasks' / (args.task + '.json')}")
