"""DeepFM (Guo et al., IJCAI 2017, arXiv 1703.04247): an FM component (first order + pairwise
inner products of the field embeddings, Eq. 2) and a DNN sharing the embeddings;
logit = y_FM + y_DNN (Eq. 1 before the sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import EmbeddingMLPConfig
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding, field_matrix, n_fields
from bench.nn.interaction import LinearPart, fm_second_order
from bench.nn.mlp import MLP


class DeepFM(nn.Module):
    """logit = linear(x) + sum_{i<j} <v_i, v_j> + DNN(concat v).

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is ignored.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        """embed_dim, mlp, mlp_activation, dropout (:class:`bench.nn.config.EmbeddingMLPConfig`)."""

    def __init__(self, schema: FeatureSchema, cfg: "DeepFM.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        self.embedding = FeatureEmbedding(schema, cfg.embed_dim)
        self.linear = LinearPart(schema)
        self.dnn = MLP(n_fields(schema) * cfg.embed_dim, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        v = field_matrix(self.embedding(batch))  # [B, m, d]
        logits = self.linear(batch) + fm_second_order(v) + self.dnn(v.flatten(1)).squeeze(-1)
        return ModelOutput(logits=logits)


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "deepfm", "DeepFM", DeepFM
