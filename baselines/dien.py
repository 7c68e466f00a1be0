"""DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019, arXiv 1809.03672).

1. Interest extractor: ``nn.GRU`` over the behaviours' concatenated field embeddings (Eq. 1-4).
   Histories arrive left-padded; they are rotated so the real behaviours come first
   (:func:`baselines.blocks.right_align`), so padding never enters the recurrence of a real step.
2. Auxiliary loss (Eq. 5-6): h_t must tell the real next behaviour e_{t+1} from a sampled
   negative e'_{t+1}; masked to the steps whose next behaviour is real, averaged over those pairs,
   weighted by alpha (``aux_weight``). Scored by the official code's auxiliary MLP on
   [h_t, e] (``aux_mlp``; an empty tuple gives the inner product <h_t, e>).
3. Target attention (Eq. 8): a_t = softmax_t(h_t^T W e_a) over the real steps, e_a = the
   candidate's concatenated field embeddings.
4. Interest evolution: AUGRU (Eq. 9) over h_1..h_L driven by a_t; its final state h'_L (the state
   after the most recent real behaviour) joins [user fields, candidate fields, context fields] in
   the prediction MLP (Fig. 3).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.contract import Batch, FeatureSchema, ModelOutput
from baselines.blocks import AUGRU, left_align, masked_softmax, right_align
from baselines.layers import MLP, FeatureEmbedding


class DIEN(nn.Module):
    """GRU interest extractor + auxiliary loss, attention, AUGRU interest evolution, MLP.

    Args:
        schema: the dataset's fields; item field 0 is the item id.
        cfg: :class:`DIEN.Config`.
        item_table: [V_item_id, F_i] integer item fields of each item-id index (LongTensor or
            array), V_item_id = the item-id field's vocabulary size. Needed when ``use_aux``.
    Negatives: during training, ``torch.randint(2, V_item_id, (B, T - 1))`` from torch's global
    generator; the negative of step t (paired with h_t) is ``item_table[neg[b, t]]``, embedded with
    the shared item tables. Eval mode draws nothing.
    Shapes: batch -> ModelOutput(logits [B], aux_loss = alpha * L_aux (scalar; None in eval mode or
    with ``use_aux`` False), attention={"dien": a [B, T]} in the batch's left-padded slot order).
    Raises ValueError if ``use_aux`` and no ``item_table``, or for an ``item_table`` of the wrong
    shape.
    """

    @dataclass(frozen=True)
    class Config:
        embed_dim: int = 16
        mlp: tuple[int, ...] = (200, 80)
        mlp_activation: str = "dice"
        dropout: float = 0.0
        hidden_size: int | None = None  # GRU/AUGRU width; None = F_i * embed_dim (as DIEN's code)
        use_aux: bool = True
        aux_weight: float = 1.0
        aux_mlp: tuple[int, ...] = (100, 50)

    def __init__(self, schema: FeatureSchema, cfg: "DIEN.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        d = cfg.embed_dim
        D = schema.n_item_fields * d
        H = cfg.hidden_size or D
        self.embedding = FeatureEmbedding(schema, d)
        self.extractor = nn.GRU(D, H, batch_first=True)
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
        hist, mask, _ = right_align(batch.hist, batch.hist_mask)
        emb = self.embedding(dataclasses.replace(batch, hist=hist, hist_mask=mask))
        e = emb.e_b.flatten(2)  # [B, T, D], real behaviours first
        h, _ = self.extractor(e)  # [B, T, H]; steps t < L_b see only real behaviours
        q = emb.e_i.flatten(1)  # [B, D]
        scores = torch.bmm(h, self.att_w(q).unsqueeze(-1)).squeeze(-1)  # [B, T]
        a = masked_softmax(scores, mask)
        final = self.evolution(h, a)  # [B, H]; a = 0 after step L_b keeps h'_{L_b}
        x = torch.cat([emb.e_u.flatten(1), q, final, emb.e_c.flatten(1)], dim=1)
        aux = None
        if self.training and self.cfg.use_aux:
            aux = self.cfg.aux_weight * self.auxiliary_loss(h, e, mask)
        return ModelOutput(
            logits=self.mlp(x).squeeze(-1),
            aux_loss=aux,
            attention={"dien": left_align(a, batch.hist_mask)},
        )

    def auxiliary_loss(self, h: torch.Tensor, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_aux (DIEN Eq. 5) on right-aligned states and behaviours, unweighted.

        h: [B, T, H] extractor states, e: [B, T, D] behaviour embeddings, mask: [B, T] real steps
        (real first). Draws the negatives; see :meth:`pair_loss`.
        """
        B, T, _ = e.shape
        if T < 2:
            return h.new_zeros(())
        neg = torch.randint(2, self.item_table.shape[0], (B, T - 1), device=self.item_table.device)
        e_neg = self.embedding.embed_items(self.item_table[neg]).flatten(2)  # [B, T-1, D]
        return self.pair_loss(h[:, :-1], e[:, 1:], e_neg, mask[:, 1:])

    def pair_loss(self, h: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        """-mean over real pairs of [log s(h_t, e_{t+1}) + log(1 - s(h_t, e'_{t+1}))], 0 without pairs.

        h: [B, P, H], pos / neg: [B, P, D], pair_mask: [B, P] bool (True where e_{t+1} is real).
        s = sigmoid of the auxiliary net's score of [h_t, e].
        """
        if self.aux_net is not None:
            x = torch.cat([h.unsqueeze(0).expand(2, -1, -1, -1), torch.stack([pos, neg])], dim=-1)
            s = self.aux_net(x).squeeze(-1)  # [2, B, P]
        else:
            s = (h.unsqueeze(0) * torch.stack([pos, neg])).sum(-1)
        nll = -(F.logsigmoid(s[0]) + F.logsigmoid(-s[1]))
        m = pair_mask.to(nll.dtype)
        return (nll * m).sum() / m.sum().clamp_min(1.0)
