"""Float32 master weights for trainable weights loaded in half precision, as FSDP's mixed precision keeps them.

Full fine-tuning on a GPU loads the 7B models in bf16; plain SGD on bf16 weights rounds most updates away (a weight
of 0.02 moves in steps of 1.2e-4; at lr 1e-5 over 99% of the updates of a tiny model's weights changed nothing).
So the trainable weights are kept in float32 and the forward runs under autocast to the dtype they were loaded in.
The trainer and the training benchmark (`bench/train_throughput.py`, both of its rows) use this one way.

    dtype, kept = keep_float32_masters(params)      # dtype: the autocast dtype, None when nothing was half precision
    with autocast_to(dtype, device.type): loss = ...
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch


def keep_float32_masters(params: Iterable[torch.nn.Parameter]) -> tuple[torch.dtype | None, list]:
    """Turn the half-precision ones of `params` into float32 in place. Returns (the dtype they had, which the forward
    autocasts to, or None when none had one; [(param, its original dtype)], to put them back)."""
    kept = [(param, param.dtype) for param in params if param.dtype in (torch.bfloat16, torch.float16)]
    with torch.no_grad():
        for param, _ in kept:
            param.data = param.data.float()
    return (kept[0][1] if kept else None), kept


def autocast_to(dtype: torch.dtype | None, device_type: str):
    """The forward's context: autocast to `dtype` where master weights are kept (`dtype` not None), else nothing."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
