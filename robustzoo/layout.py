"""Memory-layout checks: when channels-last is unsafe for a model on a device.

PyTorch runs CPU convolutions through oneDNN. Its x86 1x1-convolution kernel (``jit_1x1``) writes past
its workspace in the backward pass of a *strided* 1x1 convolution on channels-last input whose input
channels are fewer than the kernel's channel block (8 floats with AVX2, 16 with AVX-512): the process
crashes ("double free or corruption"), hangs, or gets wrong gradients (oneDNN issue #6035, open in
2026). A ResNet's strided shortcut convolution hits it at small widths (width 0.0625 gives 4 channels
there). Contiguous (NCHW) tensors take another kernel and are safe, so the fix is to not ask for
channels-last on such a model; it only ever changes speed, never the result.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["channels_last_hazard"]


def _channel_block() -> int:
    """oneDNN's f32 channel block on this CPU (its SIMD width in floats); 0 where the kernel is not used.

    torch's kernel level can be capped (``ATEN_CPU_CAPABILITY``) below what oneDNN uses, so the CPU's own
    AVX-512 flag counts too where Linux reports it."""
    cap = torch.backends.cpu.get_cpu_capability()
    if "AVX512" in cap or (cap == "AVX2" and " avx512f" in _cpu_flags()):
        return 16
    return 8 if "AVX2" in cap else 0


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((" " + line.split(":", 1)[1] for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def channels_last_hazard(model: nn.Module, device: torch.device | str) -> str | None:
    """Why channels-last would be unsafe for ``model`` on ``device`` (a sentence), or None when it is safe.

    Only CPUs with oneDNN's AVX2/AVX-512 1x1 kernels are affected, and only strided 1x1 convolutions with
    fewer input channels than the channel block (see the module docstring)."""
    if torch.device(device).type != "cpu" or not (block := _channel_block()):
        return None
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.groups == 1
                and m.in_channels < block):
            return (f"{name} is a strided 1x1 convolution with {m.in_channels} input channels, fewer than the "
                    f"{block}-channel block of this CPU's oneDNN kernel, whose channels-last backward pass "
                    "crashes or corrupts gradients (oneDNN issue #6035)")
    return None
