"""Where and in what precision the work runs: the device of this process (or every GPU, for inference), the
autocast type a card computes natively, model placement (channels_last on a GPU), and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from kaggle_utils.core import distributed
from kaggle_utils.core.config import ConfigError, TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code may draw from the global numpy state
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """This process's GPU (its local rank's under ``torchrun``), else the CPU."""
    return distributed.context().device


def inference_devices() -> list[torch.device]:
    """Every GPU of the machine (both cards of Kaggle's "T4 x2"), else the CPU: test studies are split over them."""
    if not torch.cuda.is_available():
        return [torch.device("cpu")]
    return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NATIVE_BF16 = (8, 0)  # compute capability from which a card computes bf16 natively (Ampere: A100, then H100, ...)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware. Not ``torch.cuda.is_bf16_supported()``: it says True on a
    T4 (7.5), which only emulates bf16, far slower than its fp16 tensor cores."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16


def autocast_dtype(device: torch.device, enabled: bool, preferred: str = "auto") -> torch.dtype | None:
    """The autocast type: None (fp32) on the CPU or when disabled; ``auto`` is bf16 on cards with native bf16
    (no grad scaler needed), fp16 with the grad scaler on older ones (T4, P100)."""
    if not enabled or device.type != "cuda":
        return None
    if preferred == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if preferred not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype {preferred!r} is not one of auto, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[preferred]


def mixed_precision(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` (from ``autocast_dtype``) on ``device``; None runs fp32, as on the CPU."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def inference_precision(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """Prediction in the training's precision: fp16 on a T4, bf16 on cards with it natively, fp32 on the CPU."""
    return mixed_precision(device, autocast_dtype(device, cfg.amp, cfg.amp_dtype))


def place_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """``model`` on ``device``, channels_last on a GPU when the config asks for it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last and device.type == "cuda" else model


def device_images(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader batch (B, [levels,] F, H, W) uint8 on ``device`` as float in [0, 1]; only uint8 crosses the bus."""
    return image.to(device, non_blocking=True).float().div_(255.0)


def on_device(values: object, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host numbers as a tensor on ``like``'s device (its dtype unless given), without waiting for that device.

    A copy from ordinary host memory waits for every kernel already queued; from pinned memory it is queued
    like a kernel (the pinned buffer is kept until the copy has run).
    """
    host = torch.as_tensor(values, dtype=dtype or like.dtype)
    if like.device.type != "cuda":
        return host.to(like.device)
    return host.pin_memory().to(like.device, non_blocking=True)


def uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) uniform draws on the device of ``like``, broadcastable over (C, H, W)."""
    return torch.empty(n, 1, 1, 1, device=like.device).uniform_(low, high)
