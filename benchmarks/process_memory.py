"""What a long-lived process keeps after training: resident memory after `train()` returns, after a garbage
collection, and after `models.release_memory()` (gc, then glibc's malloc_trim), which compare calls between its
stages. Trains a short run of the default model in this process, so it needs `maml-en-llm data bigbench`:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/process_memory.py --method metaicl --steps 3 \\
        --split study/splits/social.json --config study/recipes/lora-k4.yaml
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost import rss_mb  # noqa: E402


def resident() -> str:
    """Resident memory of this process now and at its peak (ru_maxrss, KiB on Linux), in GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return f"resident {rss_mb() / 1024:.2f} GiB (peak so far {peak:.2f} GiB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="metaicl")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--split", default="study/splits/social.json")
    parser.add_argument("--config", default="study/recipes/lora-k4.yaml")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    from maml_en_llm.config import make_config
    from maml_en_llm.models import release_memory
    from maml_en_llm.train import train

    config = make_config(Path(args.config), {"steps": args.steps, "checkpoint_every": 0}, method=args.method)
    print(f"before training: {resident()}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        train(config, model_name=args.model, data_dir=None, split=args.split, out_dir=Path(out) / "run",
              progress=False, logger="none")
    print(f"after train() ({time.perf_counter() - started:.0f} s, {args.steps} {args.method} steps): {resident()}")
    gc.collect()
    print(f"after gc.collect(): {resident()}")
    trimmed = release_memory()
    print(f"after release_memory() (malloc_trim {'ran' if trimmed else 'unavailable'}): {resident()}")


if __name__ == "__main__":
    main()
