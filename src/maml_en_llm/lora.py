"""LoRA meta-training through peft: the adapters are the meta-learned parameters.

With `lora_rank > 0` the base model is frozen and peft adds rank-r adapters to the target modules; the training
loop's parameter dict then holds only the adapter tensors, so every method's inner loop, the second-order
meta-gradient (functional_call over the adapter dict) and the outer AdamW act on adapters alone. The adapters
are kept in fp32 even when the frozen base is stored in bf16 (see precision.py).

A LoRA run writes two folders:

    RUN_DIR/adapter/   peft adapter (adapter_config.json, adapter_model.safetensors) + tokenizer; load it with
                       `PeftModel.from_pretrained(base, RUN_DIR/adapter)` or lm-eval's `peft=RUN_DIR/adapter`
    RUN_DIR/final/     the adapters merged into the base, a plain HF folder (fp32), like a full fine-tuning run

`eval --model` and `compare` accept either folder (models.py merges an adapter folder on load).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from .errors import UserError

ALL_LINEAR = "all-linear"


def target_modules(spec: str) -> str | list[str]:
    """`all-linear` (peft's every linear layer but the output head) or a comma-separated list of module names."""
    spec = spec.strip()
    if spec == ALL_LINEAR:
        return ALL_LINEAR
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise UserError(f"lora_targets={spec!r}: give module names, e.g. q_proj,v_proj, or {ALL_LINEAR}")
    return names


def apply_lora(model: torch.nn.Module, *, rank: int, alpha: float, dropout: float, targets: str,
               task_type: str | None = "CAUSAL_LM", init_weights: bool | str = True) -> torch.nn.Module:
    """Freeze `model` and wrap it with fp32 LoRA adapters; returns the peft model (only adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(targets),
                        task_type=task_type, init_lora_weights=init_weights)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for users to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    except ValueError as err:  # e.g. "Target modules {...} not found in the base model"
        raise UserError(f"lora_targets={targets!r}: {str(err).splitlines()[0]}") from None
    for name, param in peft_model.named_parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()  # adapters are master weights: always fp32
    return peft_model


def change_sq_norm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """||scale * B @ A||_F^2, the squared size of the change one LoRA pair makes to its weight when merged, from two
    r x r products: ||B A||^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T)). A float64 scalar tensor on the
    adapters' device (no host sync)."""
    a, b = a.detach().double().flatten(1), b.detach().double().flatten(1)
    return scale * scale * ((b.T @ b) * (a @ a.T)).sum()


def weight_change_norm(peft_model) -> float | None:
    """How far the adapters have moved the model: the Frobenius norm, over every adapted weight, of the change
    merging would make (what scripts/update_size.py reads from a saved adapter). Cheap enough for every step. None
    when the model has no LoRA adapters."""
    from peft.tuners.lora import LoraLayer

    squares = [change_sq_norm(module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name])
               for module in peft_model.modules() if isinstance(module, LoraLayer)
               for name in module.active_adapters if name in module.lora_A]
    return math.sqrt(max(float(torch.stack(squares).sum()), 0.0)) if squares else None  # one host sync per call


def save_lora_run(peft_model, tokenizer, adapter_dir: Path, final_dir: Path, base_model: str) -> None:
    """Write the peft adapter folder and the merged HF folder (fp32). Consumes `peft_model` (it is merged).
    `base_model` is the --model the run started from; the adapter folder records it for loading."""
    import json
    import shutil

    from .models import ADAPTER_BASE_FILE, save_model

    adapter_dir, final_dir = Path(adapter_dir), Path(final_dir)
    staging = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / ADAPTER_BASE_FILE).write_text(json.dumps({"base_model": base_model}) + "\n")
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    staging.rename(adapter_dir)
    merged = peft_model.float().merge_and_unload()
    save_model(merged, tokenizer, final_dir)


def load_merged(adapter_dir: Path, base: str, *, dtype: torch.dtype, device, attn_implementation: str | None):
    """A saved adapter merged into its base model (what `eval --model RUN_DIR/adapter` scores)."""
    from peft import PeftModel

    from .models import load_model

    base_model = load_model(base, dtype=torch.float32, device=device, attn_implementation=attn_implementation)
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    return merged.to(dtype)
