"""The `utils.py` of tasks exported by `maml-en-llm export lm-eval` (copied next to their YAMLs).

Standalone on purpose: lm-evaluation-harness imports it by path, and it must work where maml-en-llm is not
installed. Three hooks, named in every exported task YAML:

* `load_docs(task, seed)`: the seed's demonstrations ("train", in file order: lm-eval's `first_n` sampler takes
  the first k, as MetaICL does) and test examples ("test"), from `data/` next to this file, so the export folder
  can be moved.
* `process_results(doc, results)`: the prediction from the options' log-likelihoods. MetaICL picks the option
  with the lowest *mean* loss per token; lm-eval returns summed log-likelihoods. When the export was made with a
  tokenizer, each doc carries its options' token counts and the sum is divided by them (MetaICL's rule);
  otherwise the summed log-likelihood decides (lm-eval's `acc` rule). Ties go to the first option, as
  MetaICL's `np.argmin`.
* `metaicl_score(items)`: MetaICL's metric over a (task, seed), in percent: Macro-F1 over the gold classes for
  classification (a gold class never predicted counts 0), accuracy for multi-choice.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_docs(task: str, seed: int, **_ignored):
    """{"train": demonstrations, "test": test examples} of one task and seed, as `datasets.Dataset`s."""
    import datasets

    folder = HERE / "data" / task
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(_read_jsonl(folder / f"{seed}_train.jsonl")),
                                 "test": datasets.Dataset.from_list(_read_jsonl(folder / f"{seed}_test.jsonl"))})


def predict(log_likelihoods: list[float], option_tokens: list[int] | None = None) -> int:
    """Index of the best option: highest mean log-likelihood per token when token counts are given, else highest
    sum; the first one on ties."""
    scores = [ll / n for ll, n in zip(log_likelihoods, option_tokens)] if option_tokens else list(log_likelihoods)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def process_results(doc: dict, results: list) -> dict:
    """lm-eval hook: `results` holds one (log-likelihood, is_greedy) pair per option, in option order."""
    pred = predict([ll for ll, _ in results], doc.get("option_tokens"))
    options = doc["options"]
    return {"metaicl": (options[doc["label"]], options[pred], doc["task_type"])}


def macro_f1(predictions: list[str], golds: list[str]) -> float:
    f1s = []
    for label in dict.fromkeys(golds):
        true_positives = sum(p == g == label for p, g in zip(predictions, golds))
        predicted = sum(p == label for p in predictions)
        recall = true_positives / sum(g == label for g in golds)
        precision = true_positives / predicted if predicted else 1.0
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return 100.0 * sum(f1s) / len(f1s)


def metaicl_score(items: list) -> float:
    """lm-eval aggregation over one task's (gold, prediction, task type) items."""
    golds = [gold for gold, _, _ in items]
    predictions = [pred for _, pred, _ in items]
    if items[0][2] == "classification":
        return macro_f1(predictions, golds)
    return 100.0 * sum(p == g for p, g in zip(predictions, golds)) / len(golds)
