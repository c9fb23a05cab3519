"""Task metrics (MetaICL's definitions) and the statistics that compare methods. Pure functions, no I/O.

Every metric is in percent (0-100). Classification tasks use Macro-F1, multi-choice tasks accuracy, exactly as
MetaICL's `MetaICLData.evaluate`: predictions and gold labels are compared after stripping surrounding whitespace;
the F1 of each class *present in the gold labels* is averaged; a gold class that is never predicted has F1 0; a
predicted class absent from gold lowers the recall of the gold classes it was wrongly given to but has no F1 of
its own.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

METRIC_OF_TASK_TYPE = {"classification": "macro_f1", "multi-choice": "accuracy"}


def _stripped_pairs(predictions: Sequence[str], golds: Sequence[str]) -> tuple[list[str], list[str]]:
    """Both lists with surrounding whitespace stripped, as MetaICL compares them ("yes " counts as "yes")."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold labels")
    if not golds:
        raise ValueError("no examples to score")
    return [p.strip() for p in predictions], [g.strip() for g in golds]


def accuracy(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Percent of predictions equal to their gold label (whitespace-stripped)."""
    predictions, golds = _stripped_pairs(predictions, golds)
    return 100.0 * sum(p == g for p, g in zip(predictions, golds)) / len(golds)


def macro_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Mean F1 over the classes present in `golds`, in percent (MetaICL's Macro-F1; whitespace-stripped labels)."""
    predictions, golds = _stripped_pairs(predictions, golds)
    f1s = []
    for label in dict.fromkeys(golds):  # gold classes, first-seen order
        true_positives = sum(p == g == label for p, g in zip(predictions, golds))
        predicted = sum(p == label for p in predictions)
        actual = sum(g == label for g in golds)
        recall = true_positives / actual
        # MetaICL takes precision 1 for a class never predicted; its recall is then 0, so F1 is 0 either way.
        precision = true_positives / predicted if predicted else 1.0
        f1s.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return 100.0 * sum(f1s) / len(f1s)


def metric_name(task_type: str) -> str:
    if task_type not in METRIC_OF_TASK_TYPE:
        raise ValueError(f"task_type must be one of {list(METRIC_OF_TASK_TYPE)}, got {task_type!r}")
    return METRIC_OF_TASK_TYPE[task_type]


def task_metric(task_type: str, predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Macro-F1 for classification, accuracy for multi-choice (percent)."""
    return macro_f1(predictions, golds) if metric_name(task_type) == "macro_f1" else accuracy(predictions, golds)


def summarize(per_seed: Mapping[int, float]) -> dict:
    """One task's numbers over seeds: {"per_seed": {"<seed>": value}, "mean", "worst"}.

    Seed keys become strings so the dict survives a JSON round trip unchanged."""
    if not per_seed:
        raise ValueError("no seeds to summarize")
    values = [float(v) for v in per_seed.values()]
    return {"per_seed": {str(seed): float(v) for seed, v in per_seed.items()},
            "mean": float(np.mean(values)), "worst": float(min(values))}


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t interval.

    Degenerate cases: no values -> all NaN; one value -> (value, NaN, NaN) (no spread to estimate);
    identical values -> (value, value, value)."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(data.mean())
    if data.size == 1:
        return (mean, math.nan, math.nan)
    sem = float(data.std(ddof=1)) / math.sqrt(data.size)
    if sem == 0.0:
        return (mean, mean, mean)
    half = float(stats.t.ppf(0.975, data.size - 1)) * sem
    return (mean, mean - half, mean + half)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Align two result sets: mappings pair over their common keys (sorted), sequences by position."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) & set(b), key=repr)
        return np.array([a[k] for k in keys], dtype=float), np.array([b[k] for k in keys], dtype=float)
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        raise TypeError("pass two mappings (paired by key) or two sequences (paired by position)")
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def paired_test(a: Mapping[Hashable, float] | Sequence[float], b: Mapping[Hashable, float] | Sequence[float]) -> dict:
    """Is `a` better than `b` over matched cells (e.g. task x seed)? Differences are a - b.

    Returns mean_diff, its 95% t-interval, the paired t-test and Wilcoxon signed-rank p-values (two-sided) and n.
    With fewer than 2 pairs the p-values are NaN; when every difference is 0 they are 1."""
    xa, xb = _paired(a, b)
    diffs = xa - xb
    mean, low, high = mean_ci95(diffs)
    n = int(diffs.size)
    if n < 2:
        p_t = p_w = math.nan
    elif np.all(diffs == 0):
        p_t = p_w = 1.0
    else:
        p_t = float(stats.ttest_rel(xa, xb).pvalue) if np.std(diffs) > 0 else 0.0
        p_w = float(stats.wilcoxon(xa, xb).pvalue)
    return {"mean_diff": mean, "ci95": [low, high], "p_value_t": p_t, "p_value_wilcoxon": p_w, "n": n}


def seed_test(a: Sequence[float], b: Sequence[float] | float, power: float = 0.8) -> dict:
    """Do two recipes differ once their training seeds are counted as a source of noise? `a` holds one score per
    training seed (a row's mean over its test cells); `b` the same for the other recipe, or one number for a model
    that is not trained (the base model: no training seed). Two-sided Welch t-test (one-sample t-test against a
    number), the 95% CI of mean(a) - mean(b), and the smallest true difference the same design detects at 0.05 with
    this power, (t_0.975 + t_power) x the difference's standard error, at the estimated spread."""
    xa = np.asarray(a, dtype=float)
    constant = not isinstance(b, (list, tuple, np.ndarray))
    xb = np.asarray([b] if constant else b, dtype=float)
    diff = float(xa.mean() - xb.mean())
    result = {"mean_diff": diff, "n_a": int(xa.size), "n_b": None if constant else int(xb.size),
              "ci95": [math.nan, math.nan], "p_value": math.nan, "mde": None}
    if xa.size < 2 or (not constant and xb.size < 2):
        return result
    var_a = xa.var(ddof=1) / xa.size
    var_b = 0.0 if constant else xb.var(ddof=1) / xb.size
    se = math.sqrt(var_a + var_b)
    if se == 0:
        result.update(ci95=[diff, diff], p_value=1.0 if diff == 0 else 0.0)
        return result
    df = (xa.size - 1.0 if constant else  # else Welch-Satterthwaite
          (var_a + var_b) ** 2 / (var_a ** 2 / (xa.size - 1) + var_b ** 2 / (xb.size - 1)))
    t975 = float(stats.t.ppf(0.975, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {**result, "ci95": [diff - t975 * se, diff + t975 * se], "p_value": p,
            "mde": float((t975 + stats.t.ppf(power, df)) * se), "df": float(df)}


def result_cells(block: Mapping) -> dict[tuple[str, str], float]:
    """The (task, seed) -> value cells of an evaluation block (`results` or `results["adapted"]`), for `paired_test`."""
    return {(task, seed): value for task, entry in block["tasks"].items() for seed, value in entry["per_seed"].items()}
