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


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int, checked once for every op and module: a Python int or a NumPy integer
    (anything ``numbers.Integral``) is accepted and converted with ``int()``, so no NumPy scalar reaches a
    Triton launch; bools, floats (``3.0`` too, as torch's integer arguments refuse them), tensors and anything
    else raise a TypeError naming the argument; a value outside [low, high] a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        if low is None:
            raise ValueError(f"{name} must be <= {high}, got {value}")
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_int_choice(name: str, value, choices: tuple[int, ...]) -> int:
    """An int argument (see :func:`check_int`) that must be one of ``choices``."""
    value = check_int(name, value)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value}")
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
    # one int32 kernel argument: keeps the compiled signature fixed
    return check_int(name, value, low=0, high=2**31 - 1)
