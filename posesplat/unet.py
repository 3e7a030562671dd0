"""3D U-Nets that refine the carved volume (two resolution levels, residual stacking)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


# PyTorch runs a float32 CPU convolution with a 3x3x3 kernel on oneDNN when the batch has more than one sample or
# batch * channels * depth * height exceeds this; otherwise on its reference kernel (slow_conv3d), 2-5x slower here
# (ConvParams::use_mkldnn in aten/src/ATen/native/Convolution.cpp, torch 2.13; measured in docs/benchmarks.md, table
# 7). Should a later torch change it, pairing costs speed, never a value (bench.trial_time shows the speed).
ONEDNN_MIN_ELEMENTS = 20480


class Conv3d(nn.Conv3d):
    """nn.Conv3d that runs one small CPU sample as a batch of two: the sample and zeros, channels last.

    The second sample sends the convolution to oneDNN (see ONEDNN_MIN_ELEMENTS), which runs faster still on
    channels-last input; its output is dropped and its gradient is zero, so the result is the same up to float
    rounding. Same parameters and state_dict as nn.Conv3d.
    """

    def forward(self, x: Tensor) -> Tensor:  # [1, C, D, H, W] -> [1, C', D, H, W]
        if self.kernel_size != (1, 1, 1) and _pad_batch(x):
            pair = torch.cat([x, torch.zeros_like(x)]).contiguous(memory_format=torch.channels_last_3d)
            return super().forward(pair)[:1].contiguous()
        return super().forward(x)


def _pad_batch(x: Tensor) -> bool:
    """Whether a batch of two reaches oneDNN where `x` alone would take PyTorch's slow reference kernel."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
            and x.shape[1] * x.shape[2] * x.shape[3] <= ONEDNN_MIN_ELEMENTS
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3x3 convolutions with GroupNorm and SiLU."""
    groups = max(1, cout // 4)
    return nn.Sequential(
        Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
        Conv3d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
    )


class UNet3D(nn.Module):
    """A two-level 3D U-Net: [B, C, X, Y, Z] -> [B, C, X, Y, Z] (any spatial size; padded to a multiple of 4)."""

    def __init__(self, channels: int, base: int):
        super().__init__()
        self.enc0 = _block(channels, base)
        self.enc1 = _block(base, 2 * base)
        self.mid = _block(2 * base, 4 * base)
        self.up1 = nn.ConvTranspose3d(4 * base, 2 * base, 2, stride=2)
        self.dec1 = _block(4 * base, 2 * base)
        self.up0 = nn.ConvTranspose3d(2 * base, base, 2, stride=2)
        self.dec0 = _block(2 * base, base)
        self.out = nn.Conv3d(base, channels, 1)
        nn.init.zeros_(self.out.weight)  # start as the identity: the carved volume passes through unchanged
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pad = [p for s in reversed(size) for p in (0, (-s) % 4)]
        h = F.pad(x, pad)
        e0 = self.enc0(h)
        e1 = self.enc1(F.max_pool3d(e0, 2))
        m = self.mid(F.max_pool3d(e1, 2))
        d1 = self.dec1(torch.cat([self.up1(m), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], dim=1))
        y = self.out(d0)[:, :, : size[0], : size[1], : size[2]]
        return x + y


class UNetStack(nn.Module):
    """`num_unets` residual U-Nets lifting the carved channels to `width` features; [B,Cin,...] -> [B,width,...]."""

    def __init__(self, cin: int, width: int, num_unets: int):
        super().__init__()
        self.lift = Conv3d(cin, width, 3, padding=1)
        self.unets = nn.ModuleList(UNet3D(width, width) for _ in range(num_unets))

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.lift(x))
        for unet in self.unets:
            h = unet(h)
        return h
