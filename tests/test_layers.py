"""rayfed.models.layers: the shortcut convolutions compute the notebook's layers' functions and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rayfed.models import CNN, Discriminator, FairnessGenerator
from rayfed.models.layers import TrimmedConv2d, UpsampleConv2d, live_taps, use_reference_ops


def assert_same_as_plain(layer: nn.Conv2d, reference, x: torch.Tensor, tol: float) -> None:
    """layer(x) against reference(plain, x), `plain` an nn.Conv2d with the layer's weights: the same output,
    and the same gradients for the input, the weight and the bias."""
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    plain.load_state_dict(layer.state_dict())
    out, ref = layer(x), reference(plain, x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    grad = torch.randn_like(ref)
    ours = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)
    theirs = torch.autograd.grad(ref, (x, plain.weight, plain.bias), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_live_taps_hand_cases():
    # 3x3, stride 2, pad 1 on a 1x1 map: one output, only the centre tap meets the pixel.
    assert live_taps(1, 3, 2, 1) == (1, 1, 0, 0)
    # ... on a 2x2 map: the output's window covers rows -1, 0, 1: taps 1 and 2.
    assert live_taps(2, 3, 2, 1) == (1, 2, 0, 0)
    # 'same' 3x3 on a 1x1 map: the centre only.
    assert live_taps(1, 3, 1, 1) == (1, 1, 0, 0)
    # Every tap is live on an 8x8 map.
    assert live_taps(8, 3, 2, 1) == (0, 2, 1, 0)
    # 5x5, pad 2, stride 1 on 2 pixels: taps 1..3; one pixel of padding is still read on each side.
    assert live_taps(2, 5, 1, 2) == (1, 3, 1, 1)


@pytest.mark.parametrize(
    "size,kernel,stride,padding",
    [
        (1, 3, 2, 1),
        (2, 3, 2, 1),
        (1, 3, 1, 1),
        (2, 3, 1, 1),
        (3, 3, 2, 1),
        (4, 3, 2, 1),
        (8, 3, 2, 1),
        (2, 5, 1, 2),
        (3, 5, 2, 2),
        (1, 5, 1, 2),
        (3, 3, 1, 0),
    ],
)
def test_trimmed_conv_equals_conv(size, kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.randn(5, 4, size, size + 1, requires_grad=True)  # also a non-square map
    assert_same_as_plain(TrimmedConv2d(4, 6, kernel, stride, padding), lambda plain, x: plain(x), x, tol=1e-5)


def test_trimmed_conv_rejects_what_it_cannot_trim():
    with pytest.raises(ValueError):
        TrimmedConv2d(2, 2, 3, padding="same")
    with pytest.raises(ValueError):
        TrimmedConv2d(2, 2, 3, padding=1, dilation=2)


def test_upsample_conv_hand_case():
    # One channel, kernel rows (1, 10, 100) x columns (1, 2, 4) = w[r, c] = row[r] * col[c], input [[1, 2]]:
    # output (0, 0) reads upsampled rows -1, 0, 1 (pad, x0, x0) and columns -1, 0, 1 (pad, x00, x00).
    layer = UpsampleConv2d(1, 1)
    with torch.no_grad():
        layer.weight.copy_((torch.tensor([1.0, 10, 100])[:, None] * torch.tensor([1.0, 2, 4]))[None, None])
        layer.bias.zero_()
    out = layer(torch.tensor([[[[1.0, 2.0]]]]))
    assert out.shape == (1, 1, 2, 4)
    # (0, 0): rows {1: 10, 2: 100} on x0 = 1 row; columns {1: 2, 2: 4} see x[0] -> 110 * (2 + 4) * 1 = 660.
    assert out[0, 0, 0, 0].item() == pytest.approx(660.0)
    # (0, 1): columns 0..2 read upsampled columns 0, 1, 2 -> x[0], x[0], x[1]: 110 * (1*1 + 2*1 + 4*2) = 1210.
    assert out[0, 0, 0, 1].item() == pytest.approx(1210.0)
    torch.testing.assert_close(out, use_reference_ops(copy.deepcopy(layer))(torch.tensor([[[[1.0, 2.0]]]])))


@pytest.mark.parametrize("size", [2, 4, 8])
def test_upsample_conv_equals_upsample_then_conv(size):
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size + 2, requires_grad=True)
    assert_same_as_plain(UpsampleConv2d(3, 5), lambda plain, x: plain(F.interpolate(x, scale_factor=2)), x, tol=1e-4)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_models_equal_their_notebook_layers(shape):
    """The CNN, G and D with shortcuts against the same weights on the notebook's plain operations (train mode,
    so BatchNorm uses batch statistics and the whole forward pass is compared)."""
    torch.manual_seed(2)
    x = torch.randn(6, *shape)
    z, labels = torch.randn(6, 16), torch.arange(6) % 10
    for model, args in [
        (CNN(shape), (x,)),
        (FairnessGenerator(16, 10, shape), (z, labels)),
        (Discriminator(10, shape), (x, labels)),
    ]:
        reference = use_reference_ops(copy.deepcopy(model))
        torch.manual_seed(3)
        ours = model(*args)
        torch.manual_seed(3)  # the CNN's dropout draws the same mask
        theirs = reference(*args)
        for a, b in zip(
            ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_use_reference_ops_switches_every_shortcut():
    G = use_reference_ops(FairnessGenerator(8, 10, (1, 8, 8)))
    flags = [m.reference for m in G.modules() if isinstance(m, (TrimmedConv2d, UpsampleConv2d))]
    assert flags == [True, True]
