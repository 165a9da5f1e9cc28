"""Convolutions that compute exactly what the notebook's layers compute, with fewer multiply-adds.

Both are `nn.Conv2d` subclasses with the same parameters, initialisation and state-dict keys as the layers they
replace, so models and checkpoints are unchanged; only the arithmetic is reorganised (results agree to float
rounding, gradients included). `use_reference_ops` switches a model back to the notebook's plain operations,
which is what the benchmarks' notebook loop runs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def live_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """Along one axis: the kernel taps that ever touch the input rather than zero padding.

    Returns (first, last, pad_before, pad_after): a convolution with taps first..last only, over the input
    padded by pad_before / pad_after (a negative value crops), has the same output as the full one.
    Output o = (size + 2p - k) // s + 1; tap t touches input index j*s - p + t for j in [0, o), so it is
    live iff t >= p - (o - 1) * s and t <= size - 1 + p.
    """
    outputs = (size + 2 * padding - kernel) // stride + 1
    first = max(0, padding - (outputs - 1) * stride)
    last = min(kernel - 1, size - 1 + padding)
    window_end = (outputs - 1) * stride - padding + last  # last input index the trimmed kernel reads
    return first, last, padding - first, window_end - (size - 1)


class TrimmedConv2d(nn.Conv2d):
    """A zero-padded Conv2d that skips the kernel taps which, for the input's size, only meet padding.

    A 3x3 'same' convolution of a 1x1 feature map (the notebook CNN's last block on 8x8 digits, the
    discriminator's last two blocks) is a 1x1 convolution with the kernel's centre: 9x fewer multiply-adds,
    and its backward pass no longer fills a weight gradient that is zero everywhere but the centre.
    The skipped taps' gradients are exactly zero either way. Where one output position remains, the
    convolution runs as the matrix product it is. Inputs where every tap is live run unchanged.
    """

    reference = False  # True: the plain nn.Conv2d (see use_reference_ops)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or self.dilation != (1, 1):
            raise ValueError("TrimmedConv2d needs integer zero padding and no dilation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return super().forward(x)
        r0, r1, top, bottom = live_taps(x.shape[-2], self.kernel_size[0], self.stride[0], self.padding[0])
        c0, c1, left, right = live_taps(x.shape[-1], self.kernel_size[1], self.stride[1], self.padding[1])
        if (r0, r1, c0, c1) == (0, self.kernel_size[0] - 1, 0, self.kernel_size[1] - 1):
            return super().forward(x)
        window, weight = F.pad(x, (left, right, top, bottom)), self.weight[:, :, r0 : r1 + 1, c0 : c1 + 1]
        if window.shape[-2:] == weight.shape[-2:] and self.groups == 1:
            # One output position: the convolution is a matrix product over the flattened window.
            return F.linear(window.flatten(1), weight.flatten(1), self.bias)[:, :, None, None]
        return F.conv2d(window, weight, self.bias, self.stride, 0, 1, self.groups)


class UpsampleConv2d(nn.Conv2d):
    """Nearest 2x upsampling followed by this 3x3 'same' convolution (the generator's Upsample + Conv2d),
    computed on the low-resolution input.

    Output pixel (2i + a, 2j + b) sees upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. input rows
    (i - 1, i) when a = 0 with taps (w0, w1 + w2), and (i, i + 1) when a = 1 with taps (w0 + w1, w2);
    likewise for columns. So the 3x3 kernel collapses into four 2x2 kernels, one per output phase (a, b):
    16 instead of 36 multiply-adds per input pixel and channel pair. The output is stored channels-last.
    """

    reference = False  # True: upsample, then the plain 3x3 convolution (see use_reference_ops)

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, 1, 1)

    @staticmethod
    def _phase_kernels(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3-tap kernel along `dim` as the 2-tap kernels of phase 0 (w0, w1 + w2) and phase 1 (w0 + w1, w2)."""
        w0, w1, w2 = weight.unbind(dim)
        return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))
        # Channels-last throughout (the layout oneDNN's CPU convolutions prefer); the result keeps it.
        padded = F.pad(x.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1))
        height, width = x.shape[-2:]
        rows = []
        for a, row_kernel in enumerate(self._phase_kernels(self.weight, 2)):
            # phase (a, b) reads input rows i - 1 + a .. i + a: the padded map's rows a .. a + height
            phases = [
                F.conv2d(padded[:, :, a : a + height + 1, b : b + width + 1], kernel, self.bias)
                for b, kernel in enumerate(self._phase_kernels(row_kernel, 3))
            ]
            rows.append(torch.stack([p.permute(0, 2, 3, 1) for p in phases], dim=3))  # N, H, W, b, C
        out = torch.stack(rows, dim=2)  # N, H, a, W, b, C
        out = out.reshape(len(x), 2 * height, 2 * width, self.out_channels)
        return out.permute(0, 3, 1, 2)  # N, C, 2H, 2W, stored channels-last


def use_reference_ops(module: nn.Module) -> nn.Module:
    """Switch every shortcut layer in `module` to the notebook's plain operations (in place; returns it)."""
    for layer in module.modules():
        if isinstance(layer, (TrimmedConv2d, UpsampleConv2d)):
            layer.reference = True
    return module


__all__ = ["TrimmedConv2d", "UpsampleConv2d", "live_taps", "use_reference_ops"]
