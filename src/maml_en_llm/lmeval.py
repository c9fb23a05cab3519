"""`maml-en-llm export lm-eval`: a split's test tasks as lm-evaluation-harness tasks.

    OUT/metaicl_<split>.yaml                 group: the split; its score is the mean over tasks
    OUT/metaicl_<split>__<task>.yaml         group: one task; its score is the mean over seeds
    OUT/metaicl_<split>__<task>__<seed>.yaml one (task, seed): k-shot multiple choice, metric `metaicl`
    OUT/utils.py                             loader, prediction rule and metric (`lmeval_utils.py`)
    OUT/data/<task>/<seed>_{train,test}.jsonl the seed's demonstration file and test examples
    OUT/export.json                          the settings and command that made the export

Each (task, seed) task shows lm-eval the seed's demonstration file in order with the `first_n` sampler, so its k
demonstrations are the ones `maml-en-llm eval` uses, and joins them with MetaICL's separators (direct prompt:
input, "\\n", output; "\\n\\n\\n" between examples; space format: " " everywhere). The metric is MetaICL's: Macro-F1
(classification) or accuracy (multi-choice), in percent, per seed; the groups average as `results.json` does.

Where the numbers can differ from `maml-en-llm eval`: lm-eval tokenizes the whole context as one string, MetaICL
(and this package) piece by piece, which can merge tokens across a separator; lm-eval does not apply MetaICL's
per-example (256) and per-sequence (1024) token caps; and without `--tokenizer` it predicts by summed instead of
per-token-mean log-likelihood. docs/lm-eval.md shows the check on a tiny model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Sequence

from .errors import UserError
from .evaluate import load_eval_data
from .paths import default_data_dir
from .prompts import PromptFormat, encode_options, make_tokenize
from .tasks import EVAL_SEEDS, demonstrations_file, read_examples

DELIMITERS = {"newline": ("\n", "\n\n\n"), "space": (" ", " ")}  # (target, few-shot) delimiters, direct prompt
MARKER = "export.json"


def lm_eval_name(text: str) -> str:
    """A name lm-eval accepts as a task or group name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _doc(example, index: int, kind: str, task_type: str, option_tokens: list[int] | None = None) -> dict:
    doc = {"doc_id": f"{kind}-{index}", "input": example.input, "output": example.output,
           "options": list(example.options), "label": list(example.options).index(example.output),
           "task_type": task_type}
    if option_tokens is not None:
        doc["option_tokens"] = option_tokens
    return doc


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def task_yaml(name: str, alias: str, task: str, seed: int, k: int, fmt: str) -> str:
    target_delimiter, fewshot_delimiter = DELIMITERS[fmt]
    return f"""\
task: {_q(name)}
task_alias: {_q(alias)}
custom_dataset: !function utils.load_docs
dataset_kwargs:
  task: {_q(task)}
  seed: {seed}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
num_fewshot: {k}
output_type: multiple_choice
doc_to_text: input
doc_to_target: label
doc_to_choice: options
target_delimiter: {_q(target_delimiter)}
fewshot_delimiter: {_q(fewshot_delimiter)}
process_results: !function utils.process_results
metric_list:
  - metric: metaicl
    aggregation: !function utils.metaicl_score
    higher_is_better: true
metadata:
  version: 1.0
"""


def group_yaml(name: str, alias: str, members: Sequence[str]) -> str:
    return (f"group: {_q(name)}\ngroup_alias: {_q(alias)}\ntask:\n" + "".join(f"  - {_q(m)}\n" for m in members)
            + "aggregate_metric_list:\n  - metric: metaicl\n    aggregation: mean\n    weight_by_size: false\n"
            + "metadata:\n  version: 1.0\n")


def export_split(*, data_dir: Path | None, split: str, out: Path, k: int = 16, seeds: Sequence[int] = EVAL_SEEDS,
                 tasks: Sequence[str] | None = None, max_test: int | None = None, fmt: str = "newline",
                 tokenizer=None, command: str | None = None) -> dict:
    """Write the lm-eval tasks of `split` into `out` (replacing an earlier export there); returns export.json."""
    if fmt not in DELIMITERS:
        raise UserError(f"--format {fmt!r}: choose newline or space")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UserError(f"--out {out}: exists and is not an earlier export; choose a new or empty folder")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    data = load_eval_data(data_dir, split, k, seeds, max_test, tasks)  # every file read and checked
    prompt = PromptFormat("direct", newlines=fmt == "newline")
    tokenize = make_tokenize(tokenizer) if tokenizer is not None else None
    prefix = lm_eval_name(f"metaicl_{data.split.name}")

    building = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    (building / "data").mkdir(parents=True)
    try:
        shutil.copyfile(Path(str(resources.files("maml_en_llm") / "lmeval_utils.py")), building / "utils.py")
        task_groups = []
        for task in data.tasks:
            task_type = data.task_types[task]
            members = []
            for cell in (c for c in data.cells if c.task == task):
                folder = building / "data" / task
                folder.mkdir(exist_ok=True)
                # the whole demonstration file, in order: first_n takes the same first k as `eval`
                demos = read_examples(demonstrations_file(data_dir, task, cell.seed, k), task) if k else []
                tests = []
                for i, example in enumerate(cell.test):
                    counts = None
                    if tokenize is not None:
                        counts = [len(scored) for _, scored in encode_options(tokenize, example, prompt, is_first=k == 0)]
                    tests.append(_doc(example, i, "test", task_type, counts))
                for name, docs in (("train", [_doc(e, i, "demo", task_type) for i, e in enumerate(demos)]),
                                   ("test", tests)):
                    (folder / f"{cell.seed}_{name}.jsonl").write_text(
                        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
                name = f"{prefix}__{lm_eval_name(task)}__{cell.seed}"
                (building / f"{name}.yaml").write_text(task_yaml(name, f"{task} seed {cell.seed}", task, cell.seed,
                                                                 k, fmt), encoding="utf-8")
                members.append(name)
            group = f"{prefix}__{lm_eval_name(task)}"
            (building / f"{group}.yaml").write_text(group_yaml(group, task, members), encoding="utf-8")
            task_groups.append(group)
        (building / f"{prefix}.yaml").write_text(group_yaml(prefix, f"split {data.split.name}", task_groups),
                                                 encoding="utf-8")
        info = {"group": prefix, "split": data.split.name, "tasks": list(data.tasks), "seeds": list(data.seeds),
                "k": k, "prompt": "direct", "format": fmt, "max_test": max_test,
                "prediction": "mean log-likelihood per option token (MetaICL)" if tokenize else
                              "summed log-likelihood (lm-eval's acc rule)",
                "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
                "command": command}
        (building / MARKER).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return info


def run_export(args, command_line: str) -> None:
    """The `export lm-eval` subcommand."""
    if args.k < 0:
        raise UserError(f"--k must be >= 0, got {args.k}")
    tokenizer = None
    if args.tokenizer:
        from .models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    info = export_split(data_dir=args.data_dir, split=args.split, out=args.out, k=args.k, seeds=args.seeds,
                        tasks=args.tasks, max_test=args.max_test, fmt=args.format, tokenizer=tokenizer,
                        command=command_line)
    print(f"lm-eval tasks for split {info['split']} ({len(info['tasks'])} tasks x {len(info['seeds'])} seeds, "
          f"k={info['k']}) in {args.out}; prediction by {info['prediction']}\nrun them with:\n"
          f"  lm_eval --model hf --model_args pretrained=MODEL --include_path {args.out} --tasks {info['group']}")
