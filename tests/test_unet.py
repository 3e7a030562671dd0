"""The U-Nets' convolutions: a single CPU sample reaches oneDNN, with the values of nn.Conv3d."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from posesplat.carve import CARVE_CHANNELS
from posesplat.unet import ONEDNN_MIN_ELEMENTS, Conv3d, UNetStack


def _convolutions(fn) -> list[tuple[str, int]]:
    """(aten op, kernel size) of each convolution a call runs, forward and backward."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [(e.name, e.input_shapes[1][-1]) for e in prof.events()
            if e.name in ("aten::slow_conv3d_forward", "aten::mkldnn_convolution") and len(e.input_shapes) > 1]


def test_a_single_sample_never_takes_the_slow_reference_convolution():
    """A trial's U-Net stack (batch 1, grid 32) runs every 3x3x3 convolution on oneDNN. PyTorch's heuristic sends a
    batch-1 volume this small to slow_conv3d, 2-5x slower (docs/benchmarks.md, table 7); the 1x1x1 output
    convolution stays there (a matrix product, faster there than on oneDNN)."""
    torch.manual_seed(0)
    net = UNetStack(CARVE_CHANNELS, 8, 1)
    x = torch.randn(1, CARVE_CHANNELS, 32, 32, 32)
    convs = _convolutions(lambda: net(x).square().sum().backward())
    assert [k for op, k in convs if op == "aten::mkldnn_convolution"] == [3] * 11  # lift + 5 blocks of two
    assert [k for op, k in convs if op == "aten::slow_conv3d_forward"] == [1], convs


@pytest.mark.parametrize("shape", [(1, 5, 12, 10, 14), (1, 8, 32, 32, 32), (2, 5, 8, 8, 8), (1, 24, 32, 32, 8)])
def test_conv3d_gives_nn_conv3ds_values_and_gradients(shape):
    """Padded or not (batch 2, or above ONEDNN_MIN_ELEMENTS), outputs and gradients are nn.Conv3d's within float
    rounding, and the state_dict is the same (checkpoints load either way)."""
    torch.manual_seed(1)
    ref = torch.nn.Conv3d(shape[1], 6, 3, padding=1)
    conv = Conv3d(shape[1], 6, 3, padding=1)
    conv.load_state_dict(ref.state_dict())
    assert conv.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(*shape, requires_grad=True)
    outs, grads = [], []
    for m in (ref, conv):
        x.grad = None
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
    assert outs[1].shape == outs[0].shape
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):  # sums over many voxels: rounding relative to the largest entry
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
    assert shape[1] * shape[2] * shape[3] <= ONEDNN_MIN_ELEMENTS or shape == (1, 24, 32, 32, 8)
