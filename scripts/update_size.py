"""How far each training run moved its model: the Frobenius norm of the change to the base model's weights.

    .venv/bin/python scripts/update_size.py RUN_DIR [RUN_DIR ...] [--merged] [--base MODEL]

A LoRA run (`RUN_DIR/adapter`) changes each adapted weight by scale * B @ A, scale = lora_alpha / r (or
lora_alpha / sqrt(r) under rsLoRA); its norm is the square root of the sum of those changes' squared entries, read
from the adapter alone. A full fine-tuning run is measured as `RUN_DIR/final` minus the base model's weights, tensor
by tensor; `--merged` does that for LoRA runs too (their `final` holds the merged weights), which loads the base.
The base is the run's `--model` (run.json), or `--base`. Two runs of one recipe that score differently can differ
in how far they moved the model rather than in where they moved it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import ExitStack
from pathlib import Path

import yaml
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from maml_en_llm.errors import UserError  # noqa: E402
from maml_en_llm.lora import change_sq_norm  # noqa: E402
from maml_en_llm.models import resolve_model  # noqa: E402


def fail(message: str):
    raise SystemExit(f"error: {message}")


def lora_update_norm(adapter_dir: Path) -> tuple[float, int]:
    """(the norm of the weight change a peft LoRA adapter makes when merged, how many weights it adapts)."""
    config_file, weights_file = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        fail(f"{adapter_dir}: no adapter_config.json and adapter_model.safetensors; give a run folder of a LoRA run")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        fail(f"{config_file}: peft_type {config.get('peft_type')!r}; only LoRA adapters can be measured")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        fail(f"{config_file}: per-module ranks or alphas (rank_pattern / alpha_pattern) are not supported")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    total, count = 0.0, 0
    with safe_open(str(weights_file), "pt") as weights:
        keys = set(weights.keys())
        for key in sorted(keys):
            if ".lora_A." not in key:
                continue
            partner = key.replace(".lora_A.", ".lora_B.")
            if partner not in keys:
                fail(f"{weights_file}: {key} has no {partner}")
            total += float(change_sq_norm(weights.get_tensor(key), weights.get_tensor(partner), scale))
            count += 1
    if not count:
        fail(f"{weights_file}: no lora_A / lora_B weights")
    return math.sqrt(total), count


def _weights(folder: Path):
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        fail(f"{folder}: no *.safetensors weights")
    return files


def full_update_norm(final_dir: Path, base_dir: Path) -> tuple[float, int]:
    """(the norm of final - base over every weight of the trained model, how many weights), tensor by tensor. A
    weight the base stores under the same name only once (tied embeddings) counts once."""
    total, count = 0.0, 0
    with ExitStack() as files:
        base_index = {}  # each base weight's name -> its file, each file opened once
        for path in _weights(base_dir):
            handle = files.enter_context(safe_open(str(path), "pt"))
            base_index.update({key: handle for key in handle.keys()})
        for path in _weights(final_dir):
            handle = files.enter_context(safe_open(str(path), "pt"))
            for key in sorted(handle.keys()):
                if key not in base_index:
                    fail(f"{path}: weight {key} is not in the base model ({base_dir}); give the run's base with --base")
                before, after = base_index[key].get_tensor(key), handle.get_tensor(key)
                if after.shape != before.shape:
                    fail(f"{path}: weight {key} is {tuple(after.shape)}, the base's is {tuple(before.shape)}; give "
                         "the run's base with --base")
                total += float((after.double() - before.double()).pow(2).sum())
                count += 1
    return math.sqrt(total), count


def run_base(run_dir: Path, base: str | None) -> Path:
    if base is None:
        try:
            base = json.loads((run_dir / "run.json").read_text())["model"]
        except (OSError, ValueError, KeyError):
            fail(f"{run_dir / 'run.json'}: no recorded model; give the base with --base")
    try:
        return Path(resolve_model(base))
    except UserError as err:
        fail(str(err))


def measure(run_dir: Path, merged: bool = False, base: str | None = None) -> dict:
    """One table row: the run's method, seed and steps (from its config.yaml), how it was measured and the norm."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        fail(f"{run_dir}: no config.yaml; give a `train` or `compare` run folder")
    config = yaml.safe_load(config_file.read_text())
    lora = (run_dir / "adapter").is_dir()
    if lora and not merged:
        kind, (norm, count) = "adapter", lora_update_norm(run_dir / "adapter")
    else:
        if not (run_dir / "final").is_dir():
            fail(f"{run_dir}: no final/ model; measure finished runs only")
        kind = "merged - base" if lora else "final - base"
        norm, count = full_update_norm(run_dir / "final", run_base(run_dir, base))
    return {"run": run_dir.name, "method": config.get("method"), "seed": config.get("seed"),
            "inner_optimizer": config.get("inner_optimizer") if config.get("method") in ("maml", "fomaml") else "-",
            "steps": config.get("steps"), "kind": kind, "weights": count, "norm": norm}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (`train --out`, or compare's runs/<name>)")
    parser.add_argument("--merged", action="store_true", help="LoRA runs too: final/ minus the base model")
    parser.add_argument("--base", default=None, help="the base model (default: each run's recorded --model)")
    args = parser.parse_args(argv)
    rows = [measure(run, args.merged, args.base) for run in args.runs]
    print("| run | method | inner_optimizer | seed | steps | measured | weights | ||delta W|| |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['run']} | {row['method']} | {row['inner_optimizer']} | {row['seed']} | {row['steps']} | "
              f"{row['kind']} | {row['weights']} | {row['norm']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
