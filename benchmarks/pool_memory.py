"""Memory of a split's meta-training pools: the resident memory that `load_training_tasks` adds, its wall time,
and the pickled size of the pools, which every `compare --jobs` work item carried to its worker before workers got
a plan without them (`compare.worker_plan`). Needs `maml-en-llm data bigbench`:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/pool_memory.py --split study/splits/headroom.json
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost import rss_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="study/splits/headroom.json")
    parser.add_argument("--config", default="study/recipes/lora-k4.yaml")
    args = parser.parse_args()

    from maml_en_llm.config import make_config
    from maml_en_llm.paths import default_data_dir
    from maml_en_llm.train import load_training_tasks

    config = make_config(args.config, {}, method="metaicl")
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    tasks = load_training_tasks(config, default_data_dir(), args.split)
    seconds = time.perf_counter() - started
    after = rss_mb()
    examples = sum(len(task.pool) for task in tasks)
    pickled = len(pickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"{args.split}: {len(tasks)} training tasks, {examples:,} examples")
    print(f"load_training_tasks: {seconds:.1f} s, resident memory +{(after - before) / 1024:.2f} GiB")
    print(f"pickled pools: {pickled / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
