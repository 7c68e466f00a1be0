"""DIN: Deep Interest Network (Zhou et al., KDD 2018, arXiv 1706.06978).

The candidate item's concatenated field embeddings q score each real behaviour k_t through the
local activation unit (an MLP over [q, k, q-k, q*k], Fig. 2); the user interest is the weighted
sum sum_t w_t k_t, NOT softmax-normalised in the paper's form (Eq. 3). The prediction MLP sees
[user fields, candidate fields, user interest, context fields]. Dice is the paper's activation
(DIN+Dice, Sec. 4.4 and Table 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.attention import DINAttention
from bench.nn.config import EmbeddingMLPConfig, choice
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding
from bench.nn.mlp import ACTIVATIONS, MLP


class DIN(nn.Module):
    """Target attention over the behaviour sequence, then an MLP.

    Shapes: batch -> ModelOutput(logits [B], attention={"din": weights [B, T]}) with the weights in
    the batch's (left-padded) slot order, 0 at padding. ``item_table`` is ignored.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        mlp_activation: str = choice("dice", ACTIVATIONS)  # DIN+Dice (Sec. 4.4)
        att_mlp: tuple[int, ...] = (80, 40)
        att_activation: str = choice("dice", ACTIVATIONS)
        softmax: bool = False

    def __init__(self, schema: FeatureSchema, cfg: "DIN.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        d = cfg.embed_dim
        item_width = schema.n_item_fields * d
        self.embedding = FeatureEmbedding(schema, d)
        self.attention = DINAttention(item_width, cfg.att_mlp, activation=cfg.att_activation, softmax=cfg.softmax)
        in_dim = (schema.n_user_fields + 2 * schema.n_item_fields + schema.n_context_fields) * d
        self.mlp = MLP(in_dim, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embedding(batch)
        q = emb.e_i.flatten(1)  # [B, F_i d]
        keys = emb.e_b.flatten(2)  # [B, T, F_i d]
        interest, weights = self.attention(q, keys, emb.mask)
        x = torch.cat([emb.e_u.flatten(1), q, interest, emb.e_c.flatten(1)], dim=1)
        return ModelOutput(logits=self.mlp(x).squeeze(-1), attention={"din": weights})


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "din", "DIN", DIN
