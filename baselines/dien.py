"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019, arXiv 1809.03672).

1. Interest extractor: a GRU (an ``nn.GRU`` module) over the behaviours' concatenated field
   embeddings (interest extractor layer). Histories arrive left-padded; they are rotated so the real behaviours
   come first (:func:`bench.nn.sequence.right_align`) and the rows are sorted by length, so the
   GRU runs on packed sequences (``pack_padded_sequence``): padding never enters the recurrence
   and costs nothing. The constructor's ``gru_impl="fused"`` (the default) runs the same weights through
   :func:`bench.nn.sequence.gru_sequence` instead (the AUGRU's recurrence; equal outputs and
   gradients, about the same CPU time as ``nn.GRU`` on a 2-core CPU).
2. Auxiliary loss L_aux, total loss L_target + alpha L_aux: h_t must tell the real next behaviour e_{t+1} from a sampled
   negative e'_{t+1}; masked to the steps whose next behaviour is real, averaged over those pairs,
   weighted by alpha (``aux_weight``). The score is the paper's sigma(<h_t, e>) (needs
   hidden size = D); ``aux_mlp=(100, 50)`` gives the official code's auxiliary MLP on [h_t, e]
   with sigmoid activations instead.
3. Target attention: a_t = softmax_t(h_t^T W e_a) over the real steps, e_a = the
   candidate's concatenated field embeddings.
4. Interest evolving layer: AUGRU over h_1..h_L driven by a_t; its final state h'_L (the state
   after the most recent real behaviour) joins [user fields, candidate fields, context fields] in
   the prediction MLP (Fig. 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.nn.attention import masked_softmax
from bench.nn.config import EmbeddingMLPConfig, choice
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding
from bench.nn.mlp import ACTIVATIONS, MLP
from bench.nn.sequence import AUGRU, active_counts, gru_sequence, left_align, right_align

#: The interest extractor implementations of ``DIEN(..., gru_impl=...)``.
GRU_IMPLS = ("fused", "torch")


class DIEN(nn.Module):
    """GRU interest extractor + auxiliary loss, attention, AUGRU interest evolution, MLP.

    Args:
        schema: the dataset's fields; item field 0 is the item id.
        cfg: :class:`DIEN.Config`.
        item_table: [V_item_id, F_i] integer item fields of each item-id index (LongTensor or
            array), V_item_id = the item-id field's vocabulary size. Needed when ``use_aux``.
        gru_impl: the interest extractor's implementation, an exact speed path (so not in the
            Config nor the run id): "fused" (:func:`bench.nn.sequence.gru_sequence` on the
            ``nn.GRU``'s weights) | "torch" (the ``nn.GRU`` module on packed sequences).
    Negatives: during training, ``torch.randint(2, V_item_id, (B, T - 1))`` from torch's global
    generator; the negative of step t (paired with h_t) is ``item_table[neg[b, t]]``, embedded with
    the shared item tables. Eval mode draws nothing.
    Shapes: batch -> ModelOutput(logits [B], aux_loss = alpha * L_aux (scalar; None in eval mode or
    with ``use_aux`` False), attention={"dien": a [B, T]} in the batch's left-padded slot order).
    Raises ValueError if ``use_aux`` and no ``item_table``, for an ``item_table`` of the wrong
    shape, or a ``gru_impl`` not in :data:`GRU_IMPLS`.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        mlp_activation: str = choice("dice", ACTIVATIONS)
        hidden_size: int | None = None  # GRU/AUGRU width; None = F_i * embed_dim (as DIEN's code)
        use_aux: bool = True
        aux_weight: float = 1.0
        aux_mlp: tuple[int, ...] = ()  # () = the paper's <h_t, e>; (100, 50) = the official code's MLP

    def __init__(self, schema: FeatureSchema, cfg: "DIEN.Config | None" = None, item_table: torch.Tensor | None = None,
                 *, gru_impl: str = "fused"):
        super().__init__()
        if gru_impl not in GRU_IMPLS:
            raise ValueError(f"DIEN: gru_impl must be one of {', '.join(map(repr, GRU_IMPLS))}, got {gru_impl!r}")
        self.gru_impl = gru_impl
        self.cfg = cfg = cfg or self.Config()
        d = cfg.embed_dim
        D = schema.n_item_fields * d
        H = cfg.hidden_size or D
        self.embedding = FeatureEmbedding(schema, d)
        self.extractor = nn.GRU(D, H)  # time-major [T, B, D]
        self.att_w = nn.Linear(D, H, bias=False)  # h_t^T W e_a
        self.evolution = AUGRU(H, H)
        in_dim = (schema.n_user_fields + schema.n_item_fields + schema.n_context_fields) * d + H
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.dropout)
        self.aux_net: nn.Module | None = None
        if cfg.use_aux:
            if item_table is None:
                raise ValueError(
                    "DIEN with use_aux=True needs item_table (LongTensor [V_item_id, F_i]) to sample "
                    "negative behaviours; pass it or set use_aux=False"
                )
            table = torch.as_tensor(item_table).long()
            v_item = schema.item_fields[0].vocab_size
            if table.dim() != 2 or table.shape != (v_item, schema.n_item_fields) or v_item <= 2:
                raise ValueError(
                    f"DIEN item_table must have shape [{v_item}, {schema.n_item_fields}] "
                    f"(item-id vocabulary x item fields, vocabulary > 2), got {tuple(table.shape)}"
                )
            self.register_buffer("item_table", table, persistent=False)
            if cfg.aux_mlp:
                layers: list[nn.Module] = []
                width = H + D
                for h in cfg.aux_mlp:
                    layers += [nn.Linear(width, h), nn.Sigmoid()]
                    width = h
                layers.append(nn.Linear(width, 1))
                self.aux_net = nn.Sequential(*layers)
            elif H != D:
                raise ValueError(f"DIEN aux_mlp=() scores <h_t, e> and needs hidden_size == {D}, got {H}")

    def forward(self, batch: Batch) -> ModelOutput:
        B, T = batch.hist_mask.shape
        lengths = batch.hist_mask.sum(1)
        # rows sorted by history length (longest first): the recurrences skip padding steps
        order = torch.argsort(lengths, descending=True, stable=True)
        lengths = lengths.index_select(0, order)
        counts = active_counts(lengths, T)
        left_mask = batch.hist_mask.index_select(0, order)
        hist, mask, _ = right_align(batch.hist.index_select(0, order), left_mask)  # real behaviours first
        emb = self.embedding
        e = emb.embed_items(hist.transpose(0, 1)).flatten(2)  # [T, B, D], time-major
        h = self.extract(e, lengths, counts)  # [T, B, H]; step t < L_b sees only real behaviours
        q = emb.embed_items(batch.item.index_select(0, order)).flatten(1)  # [B, D], e_a
        scores = (h * self.att_w(q)).sum(-1)  # [T, B], h_t^T W e_a (cheaper than a strided bmm)
        a = masked_softmax(scores.t(), mask)  # [B, T]
        final = self.evolution(h, a.t(), counts)  # [B, H]: h'_{L_b}, the state after the last behaviour
        user = emb.user(batch.user.index_select(0, order)).flatten(1)
        context = emb.context(batch.context.index_select(0, order)).flatten(1)
        logits = self.mlp(torch.cat([user, q, final, context], dim=1)).squeeze(-1)
        aux = None
        if self.training and self.cfg.use_aux:
            aux = self.cfg.aux_weight * self.auxiliary_loss(h, e, mask.t())
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(B, device=order.device)
        return ModelOutput(
            logits=logits.index_select(0, inverse),
            aux_loss=aux,
            attention={"dien": left_align(a, left_mask).index_select(0, inverse)},
        )

    def extract(self, e: torch.Tensor, lengths: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Interest extractor states [T, B, H] (0 after each row's length) of the time-major,
        right-aligned behaviours ``e`` [T, B, D]; rows sorted by ``lengths`` [B], longest first."""
        gru = self.extractor
        if self.gru_impl == "torch":
            packed = nn.utils.rnn.pack_padded_sequence(e, lengths.clamp_min(1).cpu(), enforce_sorted=True)
            return nn.utils.rnn.pad_packed_sequence(gru(packed)[0], total_length=e.shape[0])[0]
        return gru_sequence(e, gru.weight_ih_l0, gru.bias_ih_l0, gru.weight_hh_l0, gru.bias_hh_l0, counts=counts)

    def auxiliary_loss(self, h: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_aux (DIEN), unweighted, on time-major right-aligned tensors.

        h: [T, B, H] extractor states, e: [T, B, D] behaviour embeddings, mask: [T, B] real steps
        (real first). Draws the negatives ``torch.randint(2, V, (B, T - 1))``; the negative of
        step t is ``neg[b, t]``. See :meth:`pair_loss`.
        """
        T, B, _ = e.shape
        if T < 2:
            return h.new_zeros(())
        neg = torch.randint(2, self.item_table.shape[0], (B, T - 1), device=self.item_table.device)
        # only the real pairs are scored (the padding pairs' terms are masked out of the mean anyway)
        pairs = mask[1:]  # [T-1, B]
        e_neg = self.embedding.embed_items(self.item_table[neg.t()[pairs]]).flatten(1)  # [P, D]
        return self.pair_loss(h[:-1][pairs], e[1:][pairs], e_neg, pairs.new_ones(e_neg.shape[0]))

    def pair_loss(self, h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """-mean over real pairs of [log s(h_t, e_{t+1}) + log(1 - s(h_t, e'_{t+1}))], 0 without pairs.

        h: [..., H], pos / neg: [..., D], pair_mask: [...] bool (True where e_{t+1} is real).
        s = sigmoid(<h_t, e>) (the paper's form), or of the auxiliary MLP's score of [h_t, e] when
        ``aux_mlp`` is set (its first layer is applied to h_t once for positive and negative).
        """
        if self.aux_net is not None:
            first = self.aux_net[0]
            w_h, w_e = first.weight.split([h.shape[-1], pos.shape[-1]], dim=1)
            z = F.linear(h, w_h, first.bias).unsqueeze(0) + F.linear(torch.stack([pos, neg]), w_e)
            s = self.aux_net[1:](z).squeeze(-1)  # [2, ...]
        else:
            s = ((h * pos).sum(-1), (h * neg).sum(-1))
        nll = -(F.logsigmoid(s[0]) + F.logsigmoid(-s[1]))
        m = pair_mask.to(nll.dtype)
        return (nll * m).sum() / m.sum().clamp_min(1.0)


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "dien", "DIEN", DIEN
