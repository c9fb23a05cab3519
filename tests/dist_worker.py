"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU); not a test module itself.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py OUT MODEL DATA RUNS.json

1. Collectives: every rank sums and maxes rank-dependent tensors of mixed dtypes, shapes and layouts through
   the package's bucketed helpers and writes what it got to OUT/collectives-RANK.json.
2. Training: each entry {name: overrides} of RUNS.json is trained into OUT/name on the tiny split, as
   `maml-en-llm train` would under torchrun.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from maml_en_llm import distributed
from maml_en_llm.config import make_config
from maml_en_llm.errors import UserError
from maml_en_llm.train import train


def rank_tensors(rank: int) -> list[torch.Tensor]:
    """Tensors whose cross-rank sum the test computes by hand: float32, float64, int64, a transposed
    (non-contiguous) matrix, a scalar and one tensor larger than the test's 64-byte buckets."""
    scale = rank + 1
    return [
        torch.arange(6, dtype=torch.float32) * scale,
        torch.full((3,), 0.5 * scale, dtype=torch.float64),
        torch.arange(4, dtype=torch.int64) + 10 * scale,
        (torch.arange(6, dtype=torch.float32).view(2, 3) * scale).t(),
        torch.tensor(float(scale)),
        torch.linspace(0, 1, 40, dtype=torch.float32) * scale,
    ]


def collectives(out: Path) -> None:
    rank, world, _ = distributed.init_from_env("cpu")
    summed = rank_tensors(rank)
    distributed.all_reduce_sum_(summed, bucket_bytes=64)
    maxed = torch.tensor([float(rank), -float(rank), 3.0])
    distributed.all_reduce_max_(maxed)
    try:
        distributed.check_same_on_all_ranks(rank, "the test value", "make it equal")
        mismatch = None
    except UserError as err:
        mismatch = str(err)
    distributed.check_same_on_all_ranks(7, "a shared value", "never raised")
    (out / f"collectives-{rank}.json").write_text(json.dumps({
        "world": world, "summed": [t.tolist() for t in summed], "maxed": maxed.tolist(), "mismatch": mismatch,
        "buckets": len(distributed.buckets(summed, 64))}))


def main() -> None:
    out, model_dir, data_dir, runs_file = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    collectives(out)
    for name, overrides in json.loads(runs_file.read_text()).items():
        train(make_config(overrides=overrides), model_name=model_dir, data_dir=Path(data_dir), split="tiny",
              out_dir=out / name, device="cpu", progress=False)


if __name__ == "__main__":
    main()
