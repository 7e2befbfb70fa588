"""Tests for pdeaccel.nets: shapes, periodic equivariance, parameter counts, gradients, factory."""

from __future__ import annotations

import pytest
import torch

from pdeaccel.nets import (
    MLP,
    PRDP_NS_CORRECTION,
    ConvResNet,
    UNet,
    build_net,
    count_parameters,
)

SPACE = {1: (11,), 2: (9, 6), 3: (5, 4, 7)}  # odd and even sizes, none a power of two


def _mlp_params(n_in: int, n_out: int, width: int, depth: int) -> int:
    if depth == 0:
        return n_in * n_out + n_out
    return (n_in * width + width) + (depth - 1) * (width * width + width) + (width * n_out + n_out)


def _resnet_params(ndim: int, c_in: int, c_out: int, hidden: int, blocks: int, k: int) -> int:
    return (c_in * hidden + hidden) + blocks * 2 * (hidden * hidden * k**ndim + hidden) \
        + (hidden * c_out + c_out)


def _unet_params(ndim: int, c_in: int, c_out: int, hidden: int, levels: int, k: int) -> int:
    def double_conv(a: int, m: int, b: int) -> int:
        return k**ndim * (a * m + m * b) + m + b

    w = [hidden * 2**l for l in range(levels)]
    total = double_conv(c_in, w[0], w[0])
    for l in range(1, levels + 1):
        total += double_conv(w[l - 1], w[min(l, levels - 1)], w[min(l, levels - 1)])
    for l in range(levels):
        total += double_conv(2 * w[l], w[l], w[max(l - 1, 0)])
    return total + w[0] * c_out + c_out


def _roll(x: torch.Tensor, shift: tuple[int, ...]) -> torch.Tensor:
    return torch.roll(x, shift, dims=tuple(range(2, 2 + len(shift))))


def _assert_equal_to_roundoff(a: torch.Tensor, b: torch.Tensor) -> None:
    # Equivariance holds exactly in exact arithmetic; the CPU float64 convolution (im2col + BLAS)
    # sums in a position-dependent order, so rows can differ in the last bit or two. A broken
    # periodicity shows up at O(1) (see the zero-padding counter-tests).
    tol = 16 * torch.finfo(a.dtype).eps * max(a.abs().max().item(), 1.0)
    assert (a - b).abs().max().item() <= tol


# ---------------------------------------------------------------- MLP

def test_mlp_heat_1d_and_2d_shapes():
    net1 = MLP(30, 30, width=16, depth=3, out_shape=(1, 30))
    assert net1(torch.randn(4, 1, 30)).shape == (4, 1, 30)
    net2 = MLP(900, 900, width=8, depth=2, out_shape=(1, 30, 30))
    assert net2(torch.randn(3, 1, 30, 30)).shape == (3, 1, 30, 30)
    assert MLP(12, 5, width=4)(torch.randn(2, 3, 4)).shape == (2, 5)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_parameter_count_and_layers(depth):
    net = MLP(7, 5, width=6, depth=depth)
    assert count_parameters(net) == _mlp_params(7, 5, 6, depth)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == depth + 1


def test_mlp_flattens_channel_major():
    # depth 0 is y = W·vec(x) + b; vec must be C-order over (channel, space) so a weight matrix
    # reshaped to [out, C, N] contracts channel c, point i with entry (c, i).
    torch.manual_seed(0)
    net = MLP(2 * 5, 3, depth=0, dtype=torch.float64)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    lin = net.layers[0]
    expected = torch.einsum("ocn,bcn->bo", lin.weight.reshape(3, 2, 5), x) + lin.bias
    torch.testing.assert_close(net(x), expected)


def test_mlp_rejects_bad_sizes():
    with pytest.raises(ValueError, match="in_features=|entries per sample"):
        MLP(30, 30)(torch.randn(2, 1, 31))
    with pytest.raises(ValueError, match="out_shape"):
        MLP(30, 30, out_shape=(1, 29))
    with pytest.raises(ValueError, match="activation must be one of 'relu', .*got 'sigmoid'"):
        MLP(3, 3, activation="sigmoid")
    with pytest.raises(ValueError, match="depth"):
        MLP(3, 3, depth=-1)


# ---------------------------------------------------------------- ConvResNet

@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["circular", "zeros", "replicate", "reflect"])
def test_resnet_preserves_shape(ndim, padding_mode):
    net = ConvResNet(ndim, 2, 3, hidden=4, blocks=2, padding_mode=padding_mode)
    assert net(torch.randn(2, 2, *SPACE[ndim])).shape == (2, 3, *SPACE[ndim])


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resnet_circular_is_translation_equivariant(ndim, dtype):
    torch.manual_seed(ndim)
    net = ConvResNet(ndim, 2, 2, hidden=4, blocks=2, kernel_size=3, dtype=dtype)
    x = torch.randn(2, 2, *SPACE[ndim], dtype=dtype)
    shift = (3, -2, 1)[:ndim]
    _assert_equal_to_roundoff(net(_roll(x, shift)), _roll(net(x), shift))


def test_resnet_zero_padding_is_not_translation_equivariant():
    # Guards the test above: with a non-periodic padding the boundary breaks the symmetry.
    torch.manual_seed(0)
    net = ConvResNet(1, 1, 1, hidden=4, blocks=2, padding_mode="zeros")
    x = torch.randn(1, 1, 11)
    assert not torch.allclose(net(_roll(x, (3,))), _roll(net(x), (3,)))


@pytest.mark.parametrize("ndim,k,blocks", [(1, 5, 2), (2, 3, 1), (3, 3, 0)])
def test_resnet_parameter_count(ndim, k, blocks):
    net = ConvResNet(ndim, 3, 2, hidden=5, blocks=blocks, kernel_size=k)
    assert count_parameters(net) == _resnet_params(ndim, 3, 2, 5, blocks, k)


def test_resnet_prdp_ns_configuration_has_about_222k_parameters():
    net = ConvResNet(**PRDP_NS_CORRECTION)
    n = count_parameters(net)
    assert n == _resnet_params(2, 2, 2, 64, 3, 3)
    assert abs(n - 222_000) / 222_000 < 0.005
    assert net(torch.randn(1, 2, 8, 8)).shape == (1, 2, 8, 8)


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        ConvResNet(2, 1, 1, kernel_size=4)
    with pytest.raises(ValueError, match="padding_mode must be one of 'circular', .*got 'periodic'"):
        ConvResNet(2, 1, 1, padding_mode="periodic")
    with pytest.raises(ValueError, match=r"ndim must be an integer in \[1, 3\], got 4"):
        ConvResNet(4, 1, 1)
    with pytest.raises(ValueError, match=r"\[batch, 2, n, n\]"):
        ConvResNet(2, 2, 1, hidden=2, blocks=1)(torch.randn(1, 3, 4, 4))


# ---------------------------------------------------------------- UNet

@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["circular", "zeros", "replicate", "reflect"])
def test_unet_shapes_divisible_and_not(ndim, padding_mode):
    net = UNet(ndim, 2, 3, hidden=2, levels=2, padding_mode=padding_mode)
    # reflect must mirror the 3×3 halo at the coarsest level, which needs 2 cells there
    spaces = [SPACE[ndim], (8, 4, 12)[:ndim]] if padding_mode != "reflect" else [(9, 10, 8)[:ndim]]
    for space in spaces:
        assert net(torch.randn(2, 2, *space)).shape == (2, 3, *space)


def test_unet_pad_and_crop_matches_the_documented_embedding():
    # A 7×5 field is handled as the 8×8 field with the padding split evenly (0|1 rows, 1|2
    # columns), and the output is that field's output on the original cells.
    torch.manual_seed(0)
    net = UNet(2, 1, 2, hidden=2, levels=2, padding_mode="zeros", dtype=torch.float64)
    x = torch.randn(2, 1, 7, 5, dtype=torch.float64)
    big = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    big[:, :, 0:7, 1:6] = x
    torch.testing.assert_close(net(x), net(big)[:, :, 0:7, 1:6], rtol=0, atol=0)


@pytest.mark.parametrize("padding_mode,kernel_size,min_size", [
    ("zeros", 3, 8), ("replicate", 5, 8), ("circular", 3, 8), ("circular", 5, 16), ("reflect", 3, 16),
])
def test_unet_minimum_size(padding_mode, kernel_size, min_size):
    net = UNet(1, 1, 1, hidden=2, levels=3, kernel_size=kernel_size, padding_mode=padding_mode)
    assert net(torch.randn(1, 1, min_size)).shape == (1, 1, min_size)
    with pytest.raises(ValueError, match=f"spatial size >= {min_size} .*got spatial shape"):
        net(torch.randn(1, 1, min_size - 1))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_unet_circular_equivariant_under_shifts_by_multiples_of_2_to_levels(ndim):
    torch.manual_seed(0)
    levels = 2
    net = UNet(ndim, 1, 2, hidden=2, levels=levels, padding_mode="circular", activation="gelu",
               dtype=torch.float64)
    x = torch.randn(2, 1, *(16, 8, 8)[:ndim], dtype=torch.float64)
    shift = tuple(4 * s for s in (1, -1, 1)[:ndim])
    _assert_equal_to_roundoff(net(_roll(x, shift)), _roll(net(x), shift))
    # Non-periodic padding (and hence non-periodic upsampling) breaks this at the boundary.
    net_zeros = UNet(ndim, 1, 2, hidden=2, levels=levels, padding_mode="zeros", activation="gelu",
                     dtype=torch.float64)
    assert not torch.allclose(net_zeros(_roll(x, shift)), _roll(net_zeros(x), shift))


@pytest.mark.parametrize("ndim,levels,k", [(1, 3, 5), (2, 2, 3), (3, 1, 3)])
def test_unet_parameter_count(ndim, levels, k):
    net = UNet(ndim, 3, 2, hidden=3, levels=levels, kernel_size=k)
    assert count_parameters(net) == _unet_params(ndim, 3, 2, 3, levels, k)


def test_unet_wandel_configuration_parameter_count():
    net = UNet(2, 3, 3, hidden=20, levels=4)
    n = count_parameters(net)
    assert n == _unet_params(2, 3, 3, 20, 4, 3) == 1_686_180 + 180 * 3 + 21 * 3
    assert abs(n - 1.7e6) / 1.7e6 < 0.02


def test_unet_gradcheck_through_pad_and_crop():
    torch.manual_seed(0)
    net = UNet(2, 1, 1, hidden=2, levels=2, padding_mode="circular", activation="tanh",
               dtype=torch.float64)
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,), fast_mode=True)


# ---------------------------------------------------------------- shared

def _tiny_nets(dtype: torch.dtype | None = None) -> list[tuple[torch.nn.Module, tuple[int, ...]]]:
    return [
        (MLP(10, 10, width=4, depth=2, activation="tanh", out_shape=(1, 10), dtype=dtype), (2, 1, 10)),
        (ConvResNet(2, 2, 1, hidden=3, blocks=2, dtype=dtype), (2, 2, 6, 5)),
        (UNet(3, 1, 2, hidden=2, levels=1, activation="gelu", dtype=dtype), (2, 1, 4, 3, 5)),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_gradients_reach_every_parameter(index):
    torch.manual_seed(1)
    net, shape = _tiny_nets()[index]
    net(torch.randn(shape)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize("index", [0, 1, 2])
def test_float32_default_and_float64_option(index):
    net32, shape = _tiny_nets()[index]
    assert all(p.dtype == torch.float32 for p in net32.parameters())
    assert net32(torch.randn(shape)).dtype == torch.float32
    net64, _ = _tiny_nets(torch.float64)[index]
    assert all(p.dtype == torch.float64 for p in net64.parameters())
    assert net64(torch.randn(shape, dtype=torch.float64)).dtype == torch.float64


def test_build_net_builds_each_architecture():
    assert isinstance(build_net("mlp", in_features=4, out_features=4, width=3), MLP)
    assert isinstance(build_net("resnet", **PRDP_NS_CORRECTION), ConvResNet)
    net = build_net("unet", ndim=2, in_channels=1, out_channels=1, hidden=2, levels=1)
    assert isinstance(net, UNet)
    assert count_parameters(net) == _unet_params(2, 1, 1, 2, 1, 3)


def test_build_net_errors_name_allowed_values():
    with pytest.raises(ValueError, match="allowed: mlp, resnet, unet"):
        build_net("transformer")
    with pytest.raises(ValueError, match="widht.*allowed: in_features, out_features, width, depth"):
        build_net("mlp", in_features=4, out_features=4, widht=3)
    with pytest.raises(ValueError, match="needs argument\\(s\\) in_channels, out_channels"):
        build_net("resnet", ndim=2)


def test_count_parameters_trainable_only():
    net = ConvResNet(1, 1, 1, hidden=2, blocks=1)
    net.lift.requires_grad_(False)
    assert count_parameters(net) == _resnet_params(1, 1, 1, 2, 1, 3)
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - (1 * 2 + 2)
