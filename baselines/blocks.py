"""Building blocks of the Table 2 baselines, written once (the field embedding, ``MLP``, ``Dice``
and ``masked_mean`` live in :mod:`baselines.layers`).

| block | used by | source |
|---|---|---|
| :func:`field_matrix` | LR, Wide&Deep, DCN, DeepFM, xDeepFM | DIN paper's BaseModel: behaviours as a mean-pooled multi-valued field |
| :class:`LinearPart` | LR, Wide&Deep, DeepFM, xDeepFM | one weight per feature value (logistic regression / "wide" / FM first order) |
| :func:`fm_second_order` | DeepFM | Rendle's FM pairwise term, DeepFM Eq. (2) |
| :class:`CrossNetwork` | DCN | DCN Eq. (3): x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l |
| :class:`CIN` | xDeepFM | xDeepFM Eq. (6) and sum pooling |
| :class:`DINAttention` | DIN | DIN's local activation unit (Fig. 2): MLP over [q, k, q-k, q*k] |
| :func:`masked_softmax` | DIN (softmax option), DIEN | softmax over the real behaviours only |
| :func:`right_align` | DIEN | moves left-padded histories to the front so padding never enters a recurrence |
| :func:`gru_sequence` | DIEN | GRU / AUGRU recurrence with a fused backward, skipping padding steps |
| :class:`AUGRU` | DIEN | DIEN's interest evolving layer: GRU with attentional update gate |

The non-sequence models' field matrix has m = 2 F_i + J + K fields:
``[candidate fields (F_i), pooled behaviour fields (F_i), user fields (J), context fields (K)]``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from bench.contract import Batch, FeatureSchema
from baselines.layers import MLP, Embedded, FeatureEmbedding, make_activation


# --------------------------------------------------------------------------------------------
# Field matrix of the non-sequence models and the linear part
# --------------------------------------------------------------------------------------------


def n_fields(schema: FeatureSchema) -> int:
    """Number of fields m of :func:`field_matrix`: 2 F_i + J + K."""
    return 2 * schema.n_item_fields + schema.n_user_fields + schema.n_context_fields


def field_matrix(emb: Embedded) -> torch.Tensor:
    """The non-sequence models' input: [B, m, d], m = 2 F_i + J + K.

    Fields in order: candidate item fields e_i, the behaviours as one multi-valued field per item
    field (masked mean over the real behaviours, 0 for an empty history), user fields e_u, context
    fields e_c. Source: the DIN paper's BaseModel (Sec. 4.2), whose behaviour features are pooled
    multi-hot fields.
    """
    return torch.cat([emb.e_i, pool_behaviours(emb.e_b, emb.mask), emb.e_u, emb.e_c], dim=1)


def pool_behaviours(e_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of behaviour embeddings e_b [B, T, F, d] over the real slots of ``mask``
    [B, T] -> [B, F, d]; 0 for an empty history. Same values as
    :func:`baselines.layers.masked_mean`, computed as one [B, 1, T] x [B, T, F d] bmm (about a
    third cheaper on CPU, backward included)."""
    B, T, F_i, d = e_b.shape
    m = mask.to(e_b.dtype)
    w = m / m.sum(1, keepdim=True).clamp_min(1.0)  # [B, T]
    return torch.bmm(w.unsqueeze(1), e_b.reshape(B, T, F_i * d)).view(B, F_i, d)


class LinearPart(nn.Module):
    """Sum of one scalar weight per feature value plus a bias (the "wide"/first-order term).

    The weights are a :class:`FeatureEmbedding` of width 1, so the candidate item and the
    behaviours share one weight table per item field, padding weighs 0, and a pooled behaviour
    field contributes the mean weight of its real values (as :func:`field_matrix`).

    Shapes: batch -> [B] logits.
    """

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self.weights = FeatureEmbedding(schema, 1)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        return field_matrix(self.weights(batch)).sum(dim=(1, 2)) + self.bias


def fm_second_order(x: torch.Tensor) -> torch.Tensor:
    """FM pairwise interactions sum_{i<j} <v_i, v_j> over the fields of ``x`` [B, m, d] -> [B].

    Computed as 0.5 * sum_d ((sum_i v_i)^2 - sum_i v_i^2) (Rendle 2010, Lemma 3.1; DeepFM Eq. 2).
    """
    s = x.sum(dim=1)
    return 0.5 * (s * s - (x * x).sum(dim=1)).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# DCN cross network
# --------------------------------------------------------------------------------------------


class CrossNetwork(nn.Module):
    """DCN's cross network (Wang et al. 2017, Eq. 3): x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l.

    Args:
        dim: width D of x_0 (the flattened field embeddings).
        n_layers: number of cross layers L.
    Parameters ``weight`` [L, D] (Xavier-normal, as a [D, 1] kernel) and ``bias`` [L, D] (zeros).
    Shapes: x_0 [B, D] -> x_L [B, D]. The loop runs over the L layers, never over samples.
    """

    def __init__(self, dim: int, n_layers: int):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"the cross network needs at least 1 layer, got {n_layers}")
        self.weight = nn.Parameter(torch.randn(n_layers, dim) * math.sqrt(2.0 / (dim + 1)))
        self.bias = nn.Parameter(torch.zeros(n_layers, dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias):
            x = torch.addcmul(x + b, x0, (x @ w).unsqueeze(-1))
        return x


# --------------------------------------------------------------------------------------------
# xDeepFM compressed interaction network
# --------------------------------------------------------------------------------------------


class CIN(nn.Module):
    """xDeepFM's Compressed Interaction Network (Lian et al. 2018, Eq. 6, then sum pooling).

    X^k_{h,*} = sum_{i, j} W^{k,h}_{i,j} (X^{k-1}_{i,*} o X^0_{j,*}); each layer's feature maps
    are sum-pooled over the embedding dimension, p^k_h = sum_d X^k_{h,d}, and concatenated.
    The paper's 1x1 convolution is a linear map over the H_{k-1} * m channel axis (``nn.Linear``,
    the same parameters as ``nn.Conv1d(kernel_size=1)``).

    Args:
        n_fields: m, the number of fields of X^0.
        layer_sizes: H_1, ..., H_K, e.g. (100, 100) (PROTOCOL section 3).
        activation: "identity" (Eq. 6 has none) | "relu" | "prelu" | "dice".
        split_half: the official code's variant: half of each hidden layer's maps feed the next
            layer, the other half the output (not in the paper's equations). Sizes of hidden layers
            but the last must then be even.
    Shapes: X^0 [B, m, d] -> p+ [B, out_dim].
    Raises ValueError for an empty ``layer_sizes`` or an odd size with ``split_half``.
    """

    def __init__(
        self,
        n_fields: int,
        layer_sizes: tuple[int, ...] = (100, 100),
        activation: str = "identity",
        split_half: bool = False,
    ):
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN layer_sizes must hold at least one layer size")
        self.layers = nn.ModuleList()
        self.activations = nn.ModuleList()
        self.next_sizes: list[int] = []
        prev, out_dim = n_fields, 0
        for k, h in enumerate(layer_sizes):
            last = k == len(layer_sizes) - 1
            if split_half and not last and h % 2:
                raise ValueError(f"CIN with split_half needs even hidden layer sizes, got {h}")
            self.layers.append(nn.Linear(prev * n_fields, h))
            self.activations.append(nn.Identity() if activation == "identity" else make_activation(activation, h))
            nxt = h // 2 if split_half and not last else h
            self.next_sizes.append(nxt)
            out_dim += h - nxt if split_half and not last else h
            prev = nxt
        self.split_half = split_half
        self.out_dim = out_dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        B, m, d = x0.shape
        x0t = x0.transpose(1, 2)  # [B, d, m]
        xk = x0t  # [B, d, H_{k-1}]
        pooled = []
        for k, (layer, act) in enumerate(zip(self.layers, self.activations)):
            z = (xk.unsqueeze(3) * x0t.unsqueeze(2)).reshape(B, d, -1)  # [B, d, H_{k-1} * m]
            h = act(layer(z))  # [B, d, H_k]
            if self.split_half and k < len(self.layers) - 1:
                xk, out = h.split([self.next_sizes[k], h.shape[-1] - self.next_sizes[k]], dim=-1)
            else:
                xk, out = h, h
            pooled.append(out.sum(dim=1))
        return torch.cat(pooled, dim=1)


# --------------------------------------------------------------------------------------------
# Target attention (DIN's local activation unit) and masked softmax
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# DIEN: re-alignment of left-padded histories and AUGRU
# --------------------------------------------------------------------------------------------


def right_align(hist: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move the real behaviours of left-padded histories to the front (padding at the end).

    Args:
        hist: [B, T, ...] left-padded (real behaviours in the last L_b slots, oldest first).
        mask: [B, T] bool, True at real behaviours.
    Returns:
        (aligned [B, T, ...], aligned_mask [B, T], index [B, T]) where ``aligned[b, t] =
        hist[b, index[b, t]]``: slot t < L_b holds the (t+1)-th oldest real behaviour, slots
        t >= L_b hold padding. ``index`` is a rotation by T - L_b, so
        ``x_left[b, s] = x_aligned[b, (s - T + L_b) mod T]`` inverts it.
    """
    B, T = mask.shape
    lengths = mask.sum(dim=1)  # [B]
    pos = torch.arange(T, device=mask.device)
    index = (pos.unsqueeze(0) + (T - lengths).unsqueeze(1)) % T  # [B, T]
    gather_index = index.reshape(B, T, *([1] * (hist.dim() - 2))).expand_as(hist)
    aligned = hist.gather(1, gather_index)
    aligned_mask = pos.unsqueeze(0) < lengths.unsqueeze(1)
    return aligned, aligned_mask, index


def left_align(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`right_align` for a [B, T] tensor given the ORIGINAL left-padded mask."""
    B, T = mask.shape
    lengths = mask.sum(dim=1)
    pos = torch.arange(T, device=mask.device)
    index = (pos.unsqueeze(0) - (T - lengths).unsqueeze(1)) % T
    return x.gather(1, index)


class _GRUFunction(torch.autograd.Function):
    """GRU or AUGRU recurrence: one autograd node with a hand-written backward.

    Works on re-arranged gates (see :func:`gru_sequence`, which builds them from ``nn.GRU``'s
    weights): input gates ``[n, r, zbar]``, recurrent gates ``[r, zbar, n]``, zbar = 1 - z (the
    z rows negated, so a sigmoid yields zbar directly), and the r/z recurrent biases folded into
    the input gates:
    r_t = s(x_r + U_r h), zbar_t = s(x_zbar + U_zbar h), n_t = tanh(x_n + r_t (U_n h + b_hn)),
    u_t = zbar_t (GRU) or a_t zbar_t (AUGRU, DIEN), h_t = h_{t-1} + u_t (n_t - h_{t-1}).

    forward(x_gates [T, B, 3H], att [T, B] or None, w_h [3H, H], b_hn [H], counts, last_only)
    -> states [T, B, H] from h_0 = 0, or with ``last_only`` each row's state after its last
    active step [B, H]. ``counts[t]`` is the number of rows active at step t: rows must be sorted
    by length (longest first) so the active rows are always a prefix; inactive rows are skipped
    (their states in the [T, B, H] output are 0). This is exact for right-aligned histories.

    The time loop holds only what depends on the previous step: the recurrent matmul, the gate
    nonlinearities and the state update (forward), the gradient recursion (backward), on the
    active [n_t, H] rows. Input projections and weight gradients are single matmuls over all steps.
    """

    @staticmethod
    def forward(ctx, x_gates, att, w_h, b_hn, counts: list[int], last_only: bool):
        T, B, H3 = x_gates.shape
        H = H3 // 3
        steps = sum(1 for c in counts if c > 0)
        out = x_gates.new_empty(T, B, H)
        out[steps:] = 0.0
        gates = x_gates.new_empty(T, B, 2 * H)  # r, zbar
        n = x_gates.new_empty(T, B, H)
        hg = x_gates.new_empty(T, B, 3 * H)  # U h (+ b_hn on the n rows)
        u_all = x_gates.new_empty(T, B, H) if att is not None else None
        w_t = w_h.t().contiguous()
        # per-step views made once (one C++ call each) instead of ~30 Python-level slices per step
        X_n, X_rz = x_gates[..., :H].unbind(0), x_gates[..., H:].unbind(0)
        HG, HG_rz, HG_n = hg.unbind(0), hg[..., : 2 * H].unbind(0), hg[..., 2 * H :].unbind(0)
        G, R, ZB, N, O = gates.unbind(0), gates[..., :H].unbind(0), gates[..., H:].unbind(0), n.unbind(0), out.unbind(0)
        A = att.unsqueeze(-1).unbind(0) if att is not None else None
        U = u_all.unbind(0) if att is not None else None
        h = x_gates.new_zeros(B, H)
        for t in range(steps):
            k = counts[t]
            if k < B:
                O[t][k:] = 0.0
                h = h[:k]
                cut = lambda v: v[:k]  # noqa: E731
            else:
                cut = lambda v: v  # noqa: E731
            hg_t = torch.mm(h, w_t, out=cut(HG[t]))
            hg_n = cut(HG_n[t])
            hg_n += b_hn
            g_t = torch.add(cut(X_rz[t]), cut(HG_rz[t]), out=cut(G[t])).sigmoid_()
            n_t = torch.addcmul(cut(X_n[t]), cut(R[t]), hg_n, out=cut(N[t])).tanh_()
            u = cut(ZB[t]) if A is None else torch.mul(cut(ZB[t]), cut(A[t]), out=cut(U[t]))
            h = torch.addcmul(h, u, n_t - h, out=cut(O[t]))
            del hg_t, g_t
        ctx.counts, ctx.steps, ctx.last_only = counts, steps, last_only
        ctx.save_for_backward(att, w_h, out, gates, n, hg, u_all)
        if not last_only:
            return out
        lengths = torch.tensor(counts, device=out.device).unsqueeze(1).gt(torch.arange(B, device=out.device)).sum(0)
        return out[(lengths - 1).clamp_min(0), torch.arange(B, device=out.device)]  # rows of length 0: h_0 = 0

    @staticmethod
    def backward(ctx, grad):
        att, w_h, out, gates, n, hg, u_all = ctx.saved_tensors
        counts, steps, last_only = ctx.counts, ctx.steps, ctx.last_only
        T, B, H = out.shape
        one = out.new_ones(())
        E = out.new_empty(T, B, 4 * H)  # d[x_n, x_r, x_zbar] = E[..., :3H]; d[U h]_{r, zbar, n} = E[..., H:]
        E[steps:] = 0.0
        d_att = out.new_zeros(T, B) if att is not None else None
        dh = grad.clone() if last_only else out.new_zeros(B, H)  # rows join as t decreases
        E_all, E_n, E_r, E_z, E_hn, E_h = (
            E.unbind(0), E[..., :H].unbind(0), E[..., H : 2 * H].unbind(0),
            E[..., 2 * H : 3 * H].unbind(0), E[..., 3 * H :].unbind(0), E[..., H:].unbind(0),
        )
        R, ZB, N, O, HG_n = gates[..., :H].unbind(0), gates[..., H:].unbind(0), n.unbind(0), out.unbind(0), hg[..., 2 * H :].unbind(0)
        A = att.unsqueeze(-1).unbind(0) if att is not None else None
        U = u_all.unbind(0) if att is not None else None
        D_att = d_att.unbind(0) if att is not None else None
        GR = grad.unbind(0) if not last_only else None
        for t in range(steps - 1, -1, -1):
            k = counts[t]
            if k < B:
                E_all[t][k:] = 0.0
                cut = lambda v: v[:k]  # noqa: E731
            else:
                cut = lambda v: v  # noqa: E731
            g = cut(dh) if last_only else cut(dh) + cut(GR[t])
            n_t, r, zb = cut(N[t]), cut(R[t]), cut(ZB[t])
            du = g * (n_t - cut(O[t - 1])) if t else g * n_t
            if A is None:
                u = zb
            else:
                u = cut(U[t])
                torch.linalg.vecdot(du, zb, out=cut(D_att[t]))
                du = du * cut(A[t])
            torch.mul(du, torch.addcmul(zb, zb, zb, value=-1.0), out=cut(E_z[t]))
            dn = g * u
            dpre_n = torch.mul(dn, torch.addcmul(one, n_t, n_t, value=-1.0), out=cut(E_n[t]))
            torch.mul(dpre_n, r, out=cut(E_hn[t]))
            torch.mul(dpre_n * cut(HG_n[t]), torch.addcmul(r, r, r, value=-1.0), out=cut(E_r[t]))
            torch.addmm(g - dn, cut(E_h[t]), w_h, out=cut(dh))
        d_w = E[1:, :, H:].reshape(-1, 3 * H).t() @ out[:-1].reshape(-1, H) if ctx.needs_input_grad[2] else None
        d_b = E[..., 3 * H :].sum((0, 1)) if ctx.needs_input_grad[3] else None
        return E[..., : 3 * H], d_att, d_w, d_b, None, None


def gru_sequence(
    x: torch.Tensor,
    w_ih: torch.Tensor,
    b_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor,
    att: torch.Tensor | None = None,
    counts: list[int] | None = None,
    last_only: bool = False,
) -> torch.Tensor:
    """States of a GRU (``att`` None) or AUGRU (``att`` [T, B]) from h_0 = 0.

    x: [T, B, I] time-major inputs; w_ih [3H, I], b_ih [3H], w_hh [3H, H], b_hh [3H] in
    ``nn.GRU``'s layout (gates r, z, n). ``counts`` [T]: active rows per step (rows sorted by
    length, longest first; see :func:`active_counts`), default all rows at all steps. Returns all
    states [T, B, H] (0 at inactive steps), or with ``last_only`` the state after each row's last
    active step [B, H]. The input projections of all steps are one matmul; the recurrence is
    :class:`_GRUFunction`. Equal to ``nn.GRU`` on packed sequences (tested).
    """
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    r, z, n = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    w_x = torch.cat([w_ih[n], w_ih[r], -w_ih[z]])
    b_x = torch.cat([b_ih[n], b_ih[r] + b_hh[r], -(b_ih[z] + b_hh[z])])
    w_h = torch.cat([w_hh[r], -w_hh[z], w_hh[n]])
    counts = [B] * T if counts is None else counts
    return _GRUFunction.apply(F.linear(x, w_x, b_x), att, w_h, b_hh[n], counts, last_only)


def active_counts(lengths: torch.Tensor, T: int) -> list[int]:
    """[T] numbers of rows with length > t, for ``lengths`` [B] sorted in descending order.

    One host transfer per batch (the loop bounds of the recurrence)."""
    return (lengths.unsqueeze(0) > torch.arange(T, device=lengths.device).unsqueeze(1)).sum(1).tolist()


class AUGRU(nn.Module):
    """GRU with attentional update gate (DIEN, Zhou et al. 2019, interest evolving layer).

    u'_t = a_t * u_t, h'_t = (1 - u'_t) o h'_{t-1} + u'_t o h~_t, where u_t is the GRU's update
    weight of the candidate state h~_t. Parameters have ``nn.GRUCell``'s names, layout and
    initialisation, so ``h + a * (GRUCell(x, h) - h)`` is the same step (the tests' reference).

    Shapes (time-major): x [T, B, input_size], att [T, B] (0 at padding, so a padding step leaves
    the state unchanged) -> final state [B, hidden_size] (h'_0 = 0). With ``counts`` (rows sorted
    by length, see :func:`active_counts`) padding steps are skipped instead of computed.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        cell = nn.GRUCell(input_size, hidden_size)
        self.weight_ih = cell.weight_ih
        self.weight_hh = cell.weight_hh
        self.bias_ih = cell.bias_ih
        self.bias_hh = cell.bias_hh
        self.hidden_size = hidden_size

    def forward(self, x: torch.Tensor, att: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        return gru_sequence(x, self.weight_ih, self.bias_ih, self.weight_hh, self.bias_hh, att, counts, last_only=True)
