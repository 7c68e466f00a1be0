"""Recurrences over behaviour sequences: re-alignment of left-padded histories and the fused
GRU / AUGRU (DIEN's interest extractor and interest evolving layers).

| piece | used by | source |
|---|---|---|
| :func:`right_align`, :func:`left_align` | DIEN | moves left-padded histories to the front so padding never enters a recurrence |
| :func:`gru_sequence`, :func:`active_counts` | DIEN | GRU / AUGRU recurrence with a fused backward, skipping padding steps |
| :class:`AUGRU` | DIEN | DIEN's interest evolving layer: GRU with attentional update gate |
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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
