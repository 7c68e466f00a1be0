"""Wide&Deep (Cheng et al., DLRS 2016, arXiv 1606.07792): a linear "wide" part and a DNN "deep"
part over the field embeddings, logits summed and trained jointly (paper Eq. 3).

The wide part is first order (one weight per feature value); the paper's hand-made
cross-product transformations are not built (docs/BASELINES.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import EmbeddingMLPConfig
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding, field_matrix, n_fields
from bench.nn.interaction import LinearPart
from bench.nn.mlp import MLP


class WideDeep(nn.Module):
    """logit = wide(x) + deep(concat of field embeddings).

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is ignored.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        """embed_dim, mlp, mlp_activation, dropout (:class:`bench.nn.config.EmbeddingMLPConfig`)."""

    def __init__(self, schema: FeatureSchema, cfg: "WideDeep.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        self.embedding = FeatureEmbedding(schema, cfg.embed_dim)
        self.linear = LinearPart(schema)
        self.dnn = MLP(n_fields(schema) * cfg.embed_dim, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        x = field_matrix(self.embedding(batch)).flatten(1)
        return ModelOutput(logits=self.linear(batch) + self.dnn(x).squeeze(-1))


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "wide_deep", "Wide&Deep", WideDeep
