"""Mixed precision for one run: the autocast dtype and the gradient scaler.

``amp="auto"`` means bf16 on a CUDA device that supports it, else fp16 with a
``GradScaler``, and full precision on any other device. ``"bf16"`` may also be asked
for on the CPU (PyTorch's CPU autocast), which is how the tests exercise the AMP path
on a machine without a GPU; ``"fp16"`` needs CUDA.
"""
from __future__ import annotations

import contextlib

import torch

from mmlib.utils import MMLibError


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision)."""
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode == "auto":
            return None
        if mode == "bf16" and device.type == "cpu":
            return torch.bfloat16
        raise MMLibError(f"amp={mode!r} needs a CUDA device (this run uses {device}); use amp='auto' or 'off'"
                         + (" (or 'bf16' on the CPU)." if mode == "fp16" else "."))
    bf16_ok = torch.cuda.is_bf16_supported()
    if mode == "bf16" and not bf16_ok:
        raise MMLibError("amp='bf16' is not supported by this GPU; use amp='fp16' or 'auto'.")
    if mode == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


class Precision:
    """Autocast + GradScaler for one device (the scaler is active only with fp16)."""

    def __init__(self, mode: str, device: torch.device):
        self.device = device
        self.dtype = amp_dtype(mode, device)
        self.scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                           enabled=self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass, then unscale the gradients so clipping and modulation see their true size."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # a no-op without fp16

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
        self.scaler.update()
