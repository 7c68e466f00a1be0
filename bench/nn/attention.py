"""Target attention over the behaviour sequence: DIN's local activation unit and a softmax
restricted to the real behaviours.

| piece | used by | source |
|---|---|---|
| :class:`DINAttention` | DIN | DIN's local activation unit (Fig. 2): MLP over [q, k, q-k, q*k] |
| :func:`masked_softmax` | DIN (softmax option), DIEN | softmax over the real behaviours only |
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bench.nn.mlp import MLP, make_activation


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` [B, T] over the True slots of ``mask`` [B, T]; exactly 0 elsewhere
    and on rows without any True slot (never NaN)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask


class DINAttention(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018, Sec. 4.3, Fig. 2) with weighted sum pooling.

    Each real behaviour k_t is scored against the candidate q by an MLP over [q, k, q-k, q*k];
    the user interest is sum_t w_t k_t. The paper does not normalise the weights (``softmax``
    False); with ``softmax`` True they are softmax-normalised over the real behaviours.

    Only real behaviours go through the MLP (they are gathered from the mask), so padding gets
    weight exactly 0 and never enters Dice's batch statistics. The first layer is one
    ``nn.Linear(4 D, H_1)`` over the concatenation, evaluated as
    (W_q + W_d) q + [W_k - W_d, W_p] [k, q*k] + b: the same function with the candidate's part
    computed once per sample instead of once per behaviour.

    Args:
        dim: D, width of q and of each k.
        hidden: attention MLP sizes, e.g. (80, 40) (PROTOCOL section 3); at least one.
        activation: "dice" | "prelu" | "relu" (DIN Fig. 2: PReLU/Dice).
        softmax: normalise the weights (not the paper's form).
    Shapes: query [B, D], keys [B, T, D], mask [B, T] bool -> (pooled [B, D], weights [B, T]).
    Raises ValueError for an empty ``hidden``.
    """

    def __init__(
        self,
        dim: int,
        hidden: tuple[int, ...] = (80, 40),
        activation: str = "dice",
        softmax: bool = False,
    ):
        super().__init__()
        if not hidden:
            raise ValueError("DINAttention needs at least one hidden layer size")
        self.dim = dim
        self.first = nn.Linear(4 * dim, hidden[0])
        self.first_act = make_activation(activation, hidden[0])
        self.rest = MLP(hidden[0], tuple(hidden[1:]), out_dim=1, activation=activation)
        self.softmax = softmax

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw attention scores [B, T] of the real behaviours, 0 at padding."""
        B, T, D = keys.shape
        flat = mask.reshape(-1).nonzero().squeeze(1)  # packed real slots, row-major
        if flat.numel() == 0:
            return keys.new_zeros(B, T)
        b_idx = flat.div(T, rounding_mode="floor")
        w_q, w_k, w_d, w_p = self.first.weight.split(D, dim=1)
        k = keys.reshape(B * T, D).index_select(0, flat)  # [N, D]
        q = query.index_select(0, b_idx)  # [N, D]
        h_q = F.linear(query, w_q + w_d, self.first.bias).index_select(0, b_idx)  # [N, H_1]
        h = torch.addmm(h_q, torch.cat([k, q * k], dim=-1), torch.cat([w_k - w_d, w_p], dim=1).t())
        s = self.rest(self.first_act(h)).squeeze(-1)  # [N]
        return keys.new_zeros(B * T).index_copy(0, flat, s).view(B, T)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.scores(query, keys, mask)
        if self.softmax:
            w = masked_softmax(w, mask)
        pooled = (w.unsqueeze(-1) * keys).sum(1)  # cheaper than a [B, 1, T] x [B, T, D] bmm on CPU
        return pooled, w
