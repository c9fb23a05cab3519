"""The size of the first meta-gradients of second-order MAML through shared Adam moments, against adam_eps.

At the first meta-step the shared moments are zero, so the inner Adam step moves each weight by about
inner_lr * g / (|g| + eps): nearly sign(g). Its derivative with respect to g is about inner_lr * eps / (|g| + eps)^2,
which is inner_lr / eps where g is 0. Second-order MAML differentiates through that step, so its meta-gradient
picks up a term of order 1 / eps from every weight whose support gradient is (near) zero. Under LoRA that is every
A matrix: B starts at zero, so the loss's gradient with respect to A is zero at the first step, and the first
meta-gradient grows as 1 / adam_eps. Under full fine-tuning few gradients are exactly zero and the first
meta-gradient is only a few times first-order's. First-order MAML does not differentiate through the step and is
unaffected. The meta-gradient is clipped (max_grad_norm) before the outer step, so the damage is bounded by one
outer step in a wrong direction, but that step also fills the outer Adam's second moments, which damp those
weights' later steps.

This script trains 2 meta-steps of each (method, full/LoRA, adam_eps) on a random tiny Llama and synthetic tasks
(benchmarks/gpu_step.py's), with the real train loop, and prints the meta-gradient norm before clipping
(`grad_norm` in metrics.jsonl) of each step. Two more maml rows raise only the inner steps' epsilon
(`inner_adam_eps`), leaving the outer AdamW's at 1e-8. CPU, under a minute:

    PYTHONPATH=src python benchmarks/first_meta_step.py
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import write_model, write_tasks  # noqa: E402

RECIPE = dict(steps=2, k=2, tasks_per_step=2, support_size=1, query_size=1, lr=1e-3, inner_lr=1e-3, warmup_steps=0,
              checkpoint_every=0, seed=0)


def grad_norms(method: str, lora_rank: int, adam_eps: float, model: Path, data: Path, out: Path,
               inner_adam_eps: float | None = None) -> list[float]:
    """The meta-gradient norms before clipping of a 2-step run of this recipe."""
    from maml_en_llm.config import make_config
    from maml_en_llm.train import train

    config = make_config(overrides={**RECIPE, "method": method, "lora_rank": lora_rank, "adam_eps": adam_eps,
                                    "inner_adam_eps": inner_adam_eps})
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own messages
        train(config, model_name=str(model), data_dir=data, split="bench", out_dir=out, device="cpu",
              dtype="float32", progress=False)
    return [json.loads(line)["grad_norm"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = write_model(work / "model", "tiny", "cpu")
        data = write_tasks(work / "data", example_chars=40)
        print("| method | weights | adam_eps | inner_adam_eps | meta-gradient norm, step 1 | step 2 |")
        print("|---|---|---|---|---|---|")
        rows = [(method, lora, eps, None) for method in ("fomaml", "maml") for lora in (0, 4)
                for eps in (1e-8, 1e-6, 1e-4)]
        rows += [("maml", 4, 1e-8, inner) for inner in (1e-6, 1e-4)]  # only the inner steps' epsilon raised
        for method, lora, eps, inner in rows:
            norms = grad_norms(method, lora, eps, model, data, work / f"{method}-{lora}-{eps}-{inner}", inner)
            weights = f"LoRA r{lora}" if lora else "full"
            inner_text = "-" if inner is None else f"{inner:g}"
            print(f"| {method} | {weights} | {eps:g} | {inner_text} | {norms[0]:,.3g} | {norms[1]:,.3g} |",
                  flush=True)


if __name__ == "__main__":
    main()
