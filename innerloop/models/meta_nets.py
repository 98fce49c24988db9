"""The networks of the MAML paper (Finn et al. 2017): sinusoid MLP and the 4-block few-shot CNNs.

Every model names its final layer ``head`` so ANIL can select it. Normalisation uses batch statistics always, as
the reference implementation does in the inner loop and at meta-test time (cbfinn/maml#37); this also keeps the
models free of buffers that ``vmap`` would have to update in place.

:class:`BatchNorm2d` is written with plain tensor ops instead of ``torch.nn.BatchNorm2d``: under ``vmap`` the
second-order gradient through torch's native ``batch_norm`` kernel is wrong (torch 2.13; see
``tests/meta/test_functional.py::test_native_batchnorm_vmap_second_order``), while the plain-op version matches the
per-task loop exactly. Parameter names (``weight``, ``bias``) are the same as torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm2d", "SinusoidMLP", "ConvNet4", "omniglot_cnn", "miniimagenet_cnn"]


class BatchNorm2d(nn.Module):
    """Batch normalisation with batch statistics only (no running averages), from plain tensor ops.

    Args:
        channels (int): number of channels C.
        eps (float): added to the variance. Default: 1e-5.

    Shapes: ``x [B, C, H, W] -> [B, C, H, W]``, normalised per channel over ``(B, H, W)`` with the biased variance.

    Examples:
        >>> bn = BatchNorm2d(3)
        >>> ref = torch.nn.BatchNorm2d(3, track_running_stats=False)
        >>> x = torch.randn(4, 3, 5, 5)
        >>> torch.allclose(bn(x), ref(x), atol=1e-5)
        True
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)  # [1, C, 1, 1]
        var = (x - mean).pow(2).mean((0, 2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class SinusoidMLP(nn.Module):
    """``in -> 40 -> ReLU -> 40 -> ReLU -> out``, the sinusoid regressor of the paper.

    Args:
        in_features (int): input size. Default: 1.
        hidden (int): width of both hidden layers. Default: 40.
        out_features (int): output size. Default: 1.

    Shapes: ``x [..., in_features] -> [..., out_features]``.

    Examples:
        >>> SinusoidMLP()(torch.zeros(10, 1)).shape
        torch.Size([10, 1])
    """

    def __init__(self, in_features: int = 1, hidden: int = 40, out_features: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ConvNet4(nn.Module):
    """Four blocks of ``conv3x3 -> BatchNorm -> ReLU`` (+ 2x2 max-pool or stride 2), then a linear ``head``.

    Omniglot (paper): 64 filters, stride-2 convolutions, features averaged over the remaining 2x2 grid -> 64.
    mini-ImageNet (paper): 32 filters, stride-1 convolutions + 2x2 max-pool, flattened (84 -> 5x5 -> 800).

    Args:
        ways (int): number of classes (output logits).
        in_channels (int): 1 for Omniglot, 3 for mini-ImageNet. Default: 1.
        hidden (int): filters per block. Default: 64.
        max_pool (bool): max-pool instead of strided convolutions. Default: False.
        image_size (int): input height = width, used to size the head when flattening. Default: 28.

    Shapes: ``x [B, C, H, W] -> logits [B, ways]``.

    Examples:
        >>> omniglot_cnn(5)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self, ways: int, in_channels: int = 1, hidden: int = 64, max_pool: bool = False, image_size: int = 28
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 1 if max_pool else 2
            blocks += [
                nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                BatchNorm2d(hidden),
                nn.ReLU(),
            ]
            if max_pool:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            else:
                size = (size + 1) // 2
            channels = hidden
        self.max_pool = max_pool
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden * size * size if max_pool else hidden, ways)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # [B, hidden, h, w]
        h = h.flatten(1) if self.max_pool else h.mean((2, 3))
        return self.head(h)


def omniglot_cnn(ways: int) -> ConvNet4:
    """The paper's Omniglot CNN: 64 filters, strided, 28x28 grayscale input."""
    return ConvNet4(ways, in_channels=1, hidden=64, max_pool=False, image_size=28)


def miniimagenet_cnn(ways: int, image_size: int = 84) -> ConvNet4:
    """The paper's mini-ImageNet CNN: 32 filters with max-pool, 84x84 RGB input."""
    return ConvNet4(ways, in_channels=3, hidden=32, max_pool=True, image_size=image_size)
