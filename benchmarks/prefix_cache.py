"""Evaluation wall time with and without prefix caching, same model, tasks and seeds (docs/benchmarks.md).

    python benchmarks/prefix_cache.py --split bb_hr_to_lr --tasks misconceptions,odd_one_out --k 4 --max-test 8
"""

import argparse
import functools
import time

import maml_en_llm.evaluate as evaluate
from maml_en_llm.models import load_model_and_tokenizer
from maml_en_llm.paths import default_data_dir
from maml_en_llm.scoring import score_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(default_data_dir()))
    parser.add_argument("--split", default="bb_hr_to_lr")
    parser.add_argument("--tasks", default="misconceptions,odd_one_out")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seeds", default="100")
    parser.add_argument("--max-test", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args.model)
    for cached in (True, False):
        evaluate.score_options = functools.partial(score_options, prefix_cache=cached)
        started = time.perf_counter()
        result = evaluate.evaluate_model(model, tokenizer, data_dir=args.data_dir, split=args.split, k=args.k,
                                         seeds=[int(s) for s in args.seeds.split(",")], max_test=args.max_test,
                                         tasks=args.tasks.split(","), progress=False)
        seconds = time.perf_counter() - started
        print(f"prefix_cache={cached}: {seconds:.2f} s", {t: v["per_seed"] for t, v in result["tasks"].items()})


if __name__ == "__main__":
    main()
