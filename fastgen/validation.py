"""Argument checks shared by the ops: each error names the argument at fault."""

from __future__ import annotations

import math
import numbers

import torch


def check_float_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got {value.dtype}")
    return value


def check_like(name: str, value, ref_name: str, ref: torch.Tensor, *, broadcast: bool = False,
               shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``value`` is a floating tensor on ``ref``'s device with its dtype and shape (or broadcastable to it, or
    of the given ``shape``)."""
    check_float_tensor(name, value)
    if value.device != ref.device:
        raise ValueError(f"{name} is on {value.device} but {ref_name} is on {ref.device}")
    if value.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has dtype {ref.dtype}")
    if shape is not None:
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(value.shape)} but must have shape {tuple(shape)}")
    elif broadcast:
        try:
            shape = torch.broadcast_shapes(value.shape, ref.shape)
        except RuntimeError:
            shape = None
        if shape != ref.shape:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the shape of "
                             f"{ref_name}, {tuple(ref.shape)}")
    elif value.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but {ref_name} has shape {tuple(ref.shape)}")
    return value


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_seed(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not 0 <= int(value) < 2**31:  # one int32 kernel argument: keeps the compiled signature fixed
        raise ValueError(f"{name} must be in [0, 2**31), got {value}")
    return int(value)
