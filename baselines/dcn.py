"""Deep & Cross Network (Wang et al., ADKDD 2017, arXiv 1708.05123).

x_0 = concatenated field embeddings; a cross network (Eq. 3) and a DNN run in parallel on x_0,
and a combination layer maps [x_L, h_deep] to the logit (the paper's combination layer, before the sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import EmbeddingMLPConfig
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding, field_matrix, n_fields
from bench.nn.interaction import CrossNetwork
from bench.nn.mlp import MLP


class DCN(nn.Module):
    """logit = w^T [CrossNetwork(x_0), DNN(x_0)] + b.

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is ignored.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        cross_layers: int = 3

    def __init__(self, schema: FeatureSchema, cfg: "DCN.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        width = n_fields(schema) * cfg.embed_dim
        self.embedding = FeatureEmbedding(schema, cfg.embed_dim)
        self.cross = CrossNetwork(width, cfg.cross_layers)
        self.dnn = MLP(width, cfg.mlp, out_dim=None, activation=cfg.mlp_activation, dropout=cfg.dropout)
        self.combine = nn.Linear(width + self.dnn.out_width, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = field_matrix(self.embedding(batch)).flatten(1)
        logits = self.combine(torch.cat([self.cross(x0), self.dnn(x0)], dim=1)).squeeze(-1)
        return ModelOutput(logits=logits)


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "dcn", "Deep&Cross", DCN
