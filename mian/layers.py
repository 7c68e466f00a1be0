"""MIAN's building blocks: the behaviour encoder (Pre-LN / Post-LN Transformer), the behaviour
attention of IBIM, the field-wise attention of IUIM / ICIM and the Global Interaction Module.

Source: Zhang et al., "Multi-Interactive Attention Network for Fine-grained Feature Learning in CTR
Prediction", WSDM 2021 (equations as transcribed in ../shared/paper/MIAN.md section 2; the
project's resolutions of the paper's gaps are that file's section 7, cited below as "7.n").

Every score in the paper has the same form: a linear map of a concatenation, a tanh, then a softmax
(Eq. 7-8, 10, 13, 15). Because tanh bounds the scores to [-1, 1], ``exp`` cannot overflow and the
softmax is computed directly as ``exp(s) * mask / sum(exp(s) * mask)``: the weights are exactly 0 on
padding and a row without any real position gets all-zero weights (never NaN).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

TRANSFORMER_KINDS = ("pre_ln", "post_ln", "none")
#: readings of the IBIM score, Eq. (8) (MIAN.md 7.2; :class:`BehaviourAttention`)
IBIM_SCORES = ("per_slot", "shared", "bilinear")
#: readings of GIM's output, Eq. (14)-(15) (MIAN.md 7.4, 7.6; :class:`GlobalInteraction`)
GIM_MODES = ("sum", "concat", "sum_concat", "uniform")


def tanh_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of ``tanh(scores)`` over the last dimension, restricted to ``mask``.

    Args:
        scores: [..., N] pre-tanh scores (the linear part of Eq. 8 / 10 / 13 / 15).
        mask: [..., N] bool, True at real positions; None = all real.
    Returns:
        [..., N] weights, summing to 1 over the real positions, exactly 0 elsewhere, and all 0 in a
        row without any real position.
    """
    e = torch.exp(torch.tanh(scores))  # in [1/e, e]: no overflow, no max-subtraction needed
    if mask is not None:
        e = e * mask.to(e.dtype)
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


class BehaviourEncoder(nn.Module):
    """Stage 1 of IBIM: a Transformer over the behaviour sequence (MIAN.md 2.2, Eq. 3'-6').

    ``kind="pre_ln"`` is the Pre-LN block of Xiong et al. (ICML 2020), the paper's choice:
    ``y = x + MHSA(LN(x)); z = y + FFN(LN(y))`` per layer, then a final LayerNorm (7.1).
    ``kind="post_ln"`` is the original Transformer block (Vaswani et al.; Table 4 "w/ Transformer",
    7.9 (i)): ``y = LN(x + MHSA(x)); z = LN(y + FFN(y))``, no final LayerNorm.
    Both are ``torch.nn.TransformerEncoderLayer`` with ``norm_first`` True / False, so the two
    variants differ only in where the LayerNorms stand.

    The optional learned positional embedding is indexed from the END of the sequence (slot -1 is
    the most recent behaviour, histories are left-padded), so a batch with any T <= ``max_len``
    gives the real behaviours the same positions. Padding is excluded by a key-padding mask; a row
    without any real behaviour lets its last (padding) slot be attended to, only so that torch's
    attention stays finite (all-masked rows give NaN); its outputs are never used downstream.

    Args:
        d_model: token width = F_i * embed_dim (a behaviour's concatenated item fields).
        n_heads: attention heads; must divide ``d_model``.
        n_layers: number of blocks.
        ffn_dim: hidden width of the position-wise FFN (ReLU).
        dropout: dropout inside the blocks.
        kind: "pre_ln" | "post_ln".
        max_len: the schema's T (size of the positional table).
        positional: add a learned positional embedding.
        length_buckets: 1 = one pass over all T slots; n > 1 = rows grouped by history span into
            up to n buckets (widths ceil(T / 2^k)), each encoded on its own trailing window; the
            outputs at slots before a row's oldest behaviour are then 0 (they are padding). The
            real slots' outputs do not depend on this setting (a speed-up only).
    Shapes: x [B, T, d_model], mask [B, T] bool (True = real) -> h [B, T, d_model], T <= max_len.
    Raises:
        ValueError: unknown ``kind`` or ``n_heads`` not dividing ``d_model``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_layers: int,
        ffn_dim: int,
        dropout: float,
        kind: str,
        max_len: int,
        positional: bool,
        length_buckets: int = 1,
    ):
        super().__init__()
        if length_buckets < 1:
            raise ValueError(f"length_buckets must be >= 1, got {length_buckets}")
        if kind not in ("pre_ln", "post_ln"):
            raise ValueError(f"BehaviourEncoder kind must be 'pre_ln' or 'post_ln', got {kind!r}")
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(
                f"n_heads={n_heads} must divide the behaviour width d_model={d_model} "
                "(= number of item fields x embed_dim)"
            )
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.kind = kind
        self.max_len = max_len
        self.length_buckets = length_buckets
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward=ffn_dim,
                dropout=dropout,
                activation="relu",
                batch_first=True,
                norm_first=(kind == "pre_ln"),
            )
            for _ in range(n_layers)
        )
        # Xiong et al.: the Pre-LN stack ends with a LayerNorm; Post-LN blocks already end with one.
        self.final_norm = nn.LayerNorm(d_model) if kind == "pre_ln" else None
        if positional:
            self.position = nn.Parameter(torch.empty(max_len, d_model))
            nn.init.normal_(self.position, std=1e-2)
        else:
            self.register_parameter("position", None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        if self.position is not None:
            x = x + self.position[self.max_len - T :]
        if self.length_buckets == 1:
            return self._encode(x, mask)
        # Span of each row = slots from its oldest real behaviour to the end (its length when
        # left-padded). Rows are grouped by span into buckets of widths ceil(T / 2^k); each group
        # runs on its own trailing window of slots, so mostly-short histories cost little. Exact:
        # a row's real slots see the same positions and keys whatever the window.
        first = mask.to(torch.int8).argmax(1)
        span = torch.where(mask.any(1), T - first, torch.zeros_like(first))
        widths = sorted({-(-T // 2**k) for k in range(self.length_buckets)})
        bucket = torch.bucketize(span, torch.tensor(widths, device=span.device))
        groups = []
        for k in range(len(widths)):  # a few groups of rows (not positions)
            rows = ((bucket == k) & (span > 0)).nonzero().squeeze(1)  # empty rows: nothing to encode
            if rows.numel():
                groups.append((rows, int(span[rows].max())))
        if len(groups) == 1 and groups[0][0].numel() == B:  # one group holds every row
            w = groups[0][1]
            h = self._encode(x[:, T - w :], mask[:, T - w :])
            return h if w == T else F.pad(h, (0, 0, T - w, 0))
        h = x.new_zeros(x.shape)  # slots outside a row's window are padding: left 0
        for rows, w in groups:
            h[rows, T - w :] = self._encode(x[rows, T - w :], mask[rows, T - w :])
        return h

    def _encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Rows with no real behaviour: unmask the last slot so no attention row is fully masked.
        attend = mask.clone()
        attend[:, -1] |= ~mask.any(1)
        padding = ~attend
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class BehaviourAttention(nn.Module):
    """Stage 2 of IBIM: attention between the candidate item and the behaviour states,
    Eq. (7)-(9): ``V_t = [e_i; h_t]``, ``gamma_t = tanh(V_t . W_t + b_t)``,
    ``alpha = softmax_t(gamma)`` over the real behaviours, ``R_ibim = sum_t alpha_t V_t``.

    ``score="per_slot"`` (default, 7.2) reads the subscript of W_t, b_t literally: one weight
    vector and bias per behaviour slot, where slot t is counted back from the most recent
    behaviour (parameters sized by ``max_len`` and indexed from the end), which makes the ranking
    of behaviours depend on the candidate. ``score="shared"`` uses one W, b for every slot (then
    the candidate half of the score is a constant across t and only sharpens the weights).
    ``score="bilinear"`` adds ``e_i^T M h_t`` to the per-slot score, ``gamma_t = tanh(V_t . W_t +
    b_t + e_i^T M h_t)`` with M a learned [D_i, d_h] matrix (initialised to 0, so training starts
    from the per-slot reading): Eq. (8)'s additive score weighs a behaviour by its slot and its own
    content, never by its similarity to the candidate; the bilinear term lets the candidate pick
    the behaviours that resemble it (a reading beyond 7.2, compared in the readings study).

    ``R_ibim`` is computed as ``[e_i * sum_t alpha_t ; sum_t alpha_t h_t]``, which is
    ``sum_t alpha_t V_t`` term for term (the e_i half is kept, 7.3) without materialising the
    [B, T, D_i + d_h] tensor of V_t. A row without real behaviours has all-zero weights and
    ``R_ibim = 0`` (the empty sum).

    Args:
        item_dim: D_i = width of e_i (F_i * embed_dim).
        state_dim: d_h = width of h_t.
        max_len: the schema's T.
        score: "per_slot" | "shared" | "bilinear".
    Shapes: e_i [B, D_i], h [B, T, d_h], mask [B, T] bool, T <= max_len ->
        (R_ibim [B, D_i + d_h], alpha [B, T]).
    Raises:
        ValueError: unknown ``score``.
    """

    def __init__(self, item_dim: int, state_dim: int, max_len: int, score: str = "per_slot"):
        super().__init__()
        if score not in IBIM_SCORES:
            raise ValueError(f"ibim_score must be one of {', '.join(IBIM_SCORES)}, got {score!r}")
        self.item_dim = item_dim
        self.state_dim = state_dim
        self.max_len = max_len
        self.score = score
        slots = 1 if score == "shared" else max_len
        self.weight = nn.Parameter(torch.empty(slots, item_dim + state_dim))
        self.bias = nn.Parameter(torch.zeros(slots))
        bound = 1.0 / math.sqrt(item_dim + state_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if score == "bilinear":
            self.bilinear = nn.Parameter(torch.zeros(item_dim, state_dim))  # M
        else:
            self.register_parameter("bilinear", None)

    @property
    def out_dim(self) -> int:
        return self.item_dim + self.state_dim

    def forward(
        self, e_i: torch.Tensor, h: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T = h.shape[1]
        if self.score == "shared":
            w_i, w_h = self.weight[0, : self.item_dim], self.weight[0, self.item_dim :]
            scores = (e_i @ w_i).unsqueeze(1) + h @ w_h + self.bias  # [B, T]
        else:
            w = self.weight[self.max_len - T :]  # [T, D_i + d_h], slot -1 = most recent
            b = self.bias[self.max_len - T :]
            w_i, w_h = w[:, : self.item_dim], w[:, self.item_dim :]
            # V_t . W_t = e_i . W_t^(i) + h_t . W_t^(h), all slots at once
            scores = e_i @ w_i.T + (h * w_h).sum(-1) + b  # [B, T]
        if self.bilinear is not None:  # + e_i^T M h_t
            scores = scores + torch.bmm(h, (e_i @ self.bilinear).unsqueeze(-1)).squeeze(-1)
        alpha = tanh_softmax(scores, mask)  # Eq. (7)-(8)
        pooled = torch.bmm(alpha.unsqueeze(1), h).squeeze(1)  # sum_t alpha_t h_t
        r = torch.cat([e_i * alpha.sum(1, keepdim=True), pooled], -1)  # Eq. (9)
        return r, alpha


class FieldAttention(nn.Module):
    """Field-wise attention of IUIM (Eq. 10-11) and ICIM (Eq. 12-13).

    For each field j: ``V^j = [e_i; e^j]``, score ``tanh(V^j . W^j + b^j)`` with one weight vector
    and bias per field (the superscripts of W_u^j, b_u^j / W_c^k, b_c^k), softmax over the fields,
    output ``R = sum_j alpha_j V^j`` exactly as written (the e_i half is kept, 7.3). All fields are
    scored by one einsum.

    Args:
        n_fields: J (user fields) or K (context fields); must be >= 1.
        item_dim: D_i = width of e_i.
        field_dim: width of one field embedding (embed_dim).
    Shapes: e_i [B, D_i], fields [B, n_fields, field_dim] -> (R [B, D_i + field_dim],
        alpha [B, n_fields]).
    Raises:
        ValueError: ``n_fields`` < 1.
    """

    def __init__(self, n_fields: int, item_dim: int, field_dim: int):
        super().__init__()
        if n_fields < 1:
            raise ValueError(f"field-wise attention needs at least one field, got {n_fields}")
        self.n_fields = n_fields
        self.item_dim = item_dim
        self.field_dim = field_dim
        self.weight = nn.Parameter(torch.empty(n_fields, item_dim + field_dim))
        self.bias = nn.Parameter(torch.zeros(n_fields))
        bound = 1.0 / math.sqrt(item_dim + field_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def out_dim(self) -> int:
        return self.item_dim + self.field_dim

    def forward(self, e_i: torch.Tensor, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, J, _ = fields.shape
        v = torch.cat([e_i.unsqueeze(1).expand(B, J, self.item_dim), fields], -1)  # [B, J, D_i+d]
        scores = torch.einsum("bjd,jd->bj", v, self.weight) + self.bias
        alpha = tanh_softmax(scores)  # Eq. (10) / (13)
        r = torch.einsum("bj,bjd->bd", alpha, v)  # Eq. (11) / (13)
        return r, alpha


class GlobalInteraction(nn.Module):
    """GIM, Eq. (14)-(15): attention over the representations
    ``r_g = [e_i; e_c; e_b; e_u; R_ibim; R_iuim; R_icim]``, in one of four readings (``mode``).

    The representations have different widths, so Eq. (15)'s weighted sum does not type-check as
    written (7.4). The readings:

    - ``"sum"`` (default, 7.4 option a): each present r_l is first projected to a common width D by
      its own linear map, ``p_l = r_l A_l + c_l``. The score is one scalar per representation,
      ``tanh(p_l . w_l + b_l)`` (a reparametrisation of Eq. 15's ``tanh(r_l . W_l + b_l)`` with
      ``W_l = A_l w_l``), the weights are a softmax over the present representations, and the output
      ``R_g = sum_l alpha_l p_l`` [B, D] alone feeds the MLP (7.6's recommendation).
    - ``"concat"`` (7.4 option b): no projection; the score is Eq. (15)'s literally,
      ``tanh(r_l . W_l + b_l)`` with W_l of width dims[l], the same softmax, and the output is the
      weighted concatenation ``[alpha_1 r_1; ...; alpha_7 r_7]`` [B, sum(dims)] (absent ones left out):
      every representation reaches the MLP, scaled by its weight.
    - ``"sum_concat"`` (7.6, "optionally concatenate r_g"): as ``"sum"``, and the output is
      ``[R_g; r_g]`` [B, D + sum(dims)], r_g the unweighted concatenation of Eq. (14).
    - ``"uniform"`` (a control, not a reading): as ``"sum"`` with ``alpha_l = 1/k`` over the k
      present representations (no score parameters): what the learned weights add.

    An absent representation (a removed module, or an empty field group) has width 0, no
    parameters and weight exactly 0 in every mode.

    The seven projections run as one batched matmul: the representations are concatenated (r_g of
    Eq. 14), gathered into a zero-padded [B, L, max width] tensor, and multiplied by the matching
    zero-padded per-representation weight blocks. ``"concat"``'s scores are one segment sum
    (``index_add``) over the columns of r_g.

    Args:
        dims: widths of the seven representations in the paper's order, 0 for an absent one.
        dim: the common width D (unused by ``"concat"``).
        mode: "sum" | "concat" | "sum_concat" | "uniform".
    Shapes: reps = seven tensors [B, dims[l]] (None where dims[l] == 0) ->
        (output [B, out_dim], alpha [B, 7]); ``out_dim`` = D, sum(dims), D + sum(dims), D by mode.
    Raises:
        ValueError: unknown ``mode``, no representation is present, or ``reps`` disagrees with ``dims``.
    """

    def __init__(self, dims: Sequence[int], dim: int, mode: str = "sum"):
        super().__init__()
        if mode not in GIM_MODES:
            raise ValueError(f"gim_mode must be one of {', '.join(GIM_MODES)}, got {mode!r}")
        self.dims = tuple(int(x) for x in dims)
        self.dim = dim
        self.mode = mode
        self.present = tuple(l for l, w in enumerate(self.dims) if w > 0)
        if not self.present:
            raise ValueError("GIM needs at least one representation")
        widths = [self.dims[l] for l in self.present]
        total, widest, n = sum(widths), max(widths), len(widths)
        self.total = total
        self.register_buffer("columns", torch.tensor(self.present, dtype=torch.long), persistent=False)
        if mode == "concat":
            # segment[c] = which present representation column c of r_g belongs to
            segment = torch.repeat_interleave(torch.arange(n), torch.tensor(widths))
            self.register_buffer("segment", segment, persistent=False)
            self.score_weight = nn.Parameter(torch.empty(total))  # stacked W_l of Eq. (15)
            self.score_bias = nn.Parameter(torch.zeros(n))  # b_l
            start = 0
            for w in widths:  # nn.Linear(w, 1)'s default scale, per block
                nn.init.uniform_(self.score_weight[start : start + w], -1.0 / math.sqrt(w), 1.0 / math.sqrt(w))
                start += w
            return
        # gather[l, s] = row of r_g (and of proj_weight) feeding position s of representation l;
        # `total` points at an appended zero column / row.
        gather = torch.full((n, widest), total, dtype=torch.long)
        start = 0
        for row, w in enumerate(widths):
            gather[row, :w] = torch.arange(start, start + w)
            start += w
        self.register_buffer("gather", gather, persistent=False)
        self.proj_weight = nn.Parameter(torch.empty(total, dim))  # stacked A_l, rows by l
        self.proj_bias = nn.Parameter(torch.zeros(n, dim))  # c_l
        scored = mode != "uniform"
        if scored:
            self.score_weight = nn.Parameter(torch.empty(n, dim))  # w_l
            self.score_bias = nn.Parameter(torch.zeros(n))  # b_l
        start = 0
        for w in widths:  # nn.Linear's default scale, per block
            bound = 1.0 / math.sqrt(w)
            nn.init.uniform_(self.proj_weight[start : start + w], -bound, bound)
            start += w
        if scored:
            nn.init.uniform_(self.score_weight, -1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))

    @property
    def out_dim(self) -> int:
        """Width of the output that feeds the MLP (see the class docstring)."""
        return {"sum": self.dim, "uniform": self.dim, "concat": self.total, "sum_concat": self.dim + self.total}[self.mode]

    def forward(self, reps: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(reps) != len(self.dims):
            raise ValueError(f"GIM expects {len(self.dims)} representations, got {len(reps)}")
        parts = [reps[l] for l in self.present]
        r_g = torch.cat(parts, -1)  # Eq. (14), absent parts left out
        if r_g.shape[-1] != self.total:
            raise ValueError(
                f"GIM representations have total width {r_g.shape[-1]}, "
                f"expected {self.total} (dims {self.dims})"
            )
        B = r_g.shape[0]
        n = len(self.present)
        if self.mode == "concat":
            # r_l . W_l for every l at once: a segment sum of r_g * [W_1; ...; W_L]
            scores = r_g.new_zeros(B, n).index_add(1, self.segment, r_g * self.score_weight) + self.score_bias
            alpha = tanh_softmax(scores)  # Eq. (15) weights
            out = r_g * alpha.index_select(1, self.segment)  # [alpha_1 r_1; ...; alpha_L r_L]
        else:
            L, widest = self.gather.shape
            flat = self.gather.reshape(-1)  # index_select: its backward is a fast index_add
            r_pad = F.pad(r_g, (0, 1)).index_select(1, flat).view(B, L, widest)
            w_pad = F.pad(self.proj_weight, (0, 0, 0, 1)).index_select(0, flat).view(L, widest, self.dim)
            p = torch.bmm(r_pad.transpose(0, 1), w_pad).transpose(0, 1) + self.proj_bias  # [B, L, D]
            if self.mode == "uniform":
                alpha = p.new_full((B, n), 1.0 / n)
            else:
                scores = (p * self.score_weight).sum(-1) + self.score_bias  # [B, L]
                alpha = tanh_softmax(scores)  # Eq. (15) weights
            out = torch.bmm(alpha.unsqueeze(1), p).squeeze(1)  # R_g [B, D]
            if self.mode == "sum_concat":
                out = torch.cat([out, r_g], -1)  # [R_g; r_g]
        weights = alpha.new_zeros(B, len(self.dims)).index_copy(1, self.columns, alpha)
        return out, weights
