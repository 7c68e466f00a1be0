"""Fully connected towers and their activations: the DNN tower of Wide&Deep, DCN, DeepFM,
xDeepFM, DIN, DIEN and MIAN's prediction layer; Dice (DIN, Eq. 9)."""
from __future__ import annotations

import torch
from torch import nn

#: The activation names :func:`make_activation` accepts.
ACTIVATIONS = ("relu", "prelu", "dice")


class MLP(nn.Module):
    """Fully connected tower: Linear -> activation (-> dropout) per hidden size, optional output.

    Args:
        in_dim: input width.
        hidden: hidden sizes, e.g. (200, 80) (PROTOCOL section 3).
        out_dim: width of a final linear layer without activation, or None for no output layer.
        activation: "relu" | "prelu" | "dice".
        dropout: dropout after each hidden activation.
    Shapes: [..., in_dim] -> [..., out_dim or hidden[-1]].
    """

    def __init__(
        self,
        in_dim: int,
        hidden: tuple[int, ...] | list[int],
        out_dim: int | None = 1,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers.append(nn.Linear(width, h))
            layers.append(make_activation(activation, h))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Dice(nn.Module):
    """Dice activation (DIN, Zhou et al. KDD 2018, Eq. 9): p(s) * s + (1 - p(s)) * alpha * s,
    p(s) = sigmoid(BN(s)) with batch statistics (no affine), over the last dimension of size
    ``dim``. Shapes: [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.training and flat.shape[0] < 2:
            # batch statistics need >= 2 rows (a last batch of one sample): use the running ones
            normed = nn.functional.batch_norm(flat, self.bn.running_mean, self.bn.running_var, training=False, eps=self.bn.eps)
        else:
            normed = self.bn(flat)
        p = torch.sigmoid(normed).reshape(shape)
        # p * x + (1 - p) * alpha * x, in three element-wise ops
        return x * (self.alpha + (1 - self.alpha) * p)


def make_activation(name: str, dim: int) -> nn.Module:
    """"relu" | "prelu" | "dice" -> module for a layer of width ``dim``.

    Raises ValueError for an unknown name."""
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(dim)
    if name == "dice":
        return Dice(dim)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
