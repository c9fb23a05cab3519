"""What `--dtype` means when weights are updated (training, and `eval --adapt-steps`).

* float32 — weights, gradients, optimizer states and compute in fp32.
* bfloat16 — mixed precision: the model's forward and backward run under bf16 autocast, while the weights being
  trained (the "master" copy), their gradients, the outer AdamW's moments and every inner optimizer's state
  stay fp32. Inner updates are computed in fp32, so a 1e-5 inner or outer step moves the weights as it does in
  fp32 (stored in bf16, most such updates would round to no change: bf16 keeps 8 bits of mantissa). With LoRA
  the frozen base weights are *stored* in bf16 too (they never change); the adapters are fp32.
* float16 — refused for anything that updates weights: it would need loss scaling, which is not implemented.
  Use bfloat16. (Evaluation without adaptation may load a model in float16.)

Second-order MAML differentiates through autocast's casts like any other op, so the rules are the same for every
method. Autocast works on CPU and CUDA (bf16 matrix units make it fast on recent GPUs; on CPUs without them it can
be slower than fp32: it is there for memory and parity, not CPU speed).
"""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError

TRAIN_DTYPES = ("float32", "bfloat16")


def check_update_dtype(dtype: str, where: str = "--dtype") -> str:
    """The dtype name if weights may be trained in it, else a one-line UserError."""
    name = str(dtype).removeprefix("torch.")
    if name == "float16":
        raise UserError(f"{where} float16: training and adaptation in float16 need loss scaling, which is not "
                        "implemented; use bfloat16 (mixed precision with fp32 master weights) or float32")
    if name not in TRAIN_DTYPES:
        raise UserError(f"{where} {dtype}: expected one of {', '.join(TRAIN_DTYPES)} for training")
    return name


def storage_dtype(dtype: str, lora: bool) -> torch.dtype:
    """The dtype the model's weights are loaded in: fp32 masters, except a frozen LoRA base under bfloat16."""
    return torch.bfloat16 if dtype == "bfloat16" and lora else torch.float32


def autocast(dtype: str, device: torch.device | str):
    """The context the model's compute runs in: bf16 autocast for bfloat16, nothing for float32."""
    if dtype != "bfloat16":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
