"""xDeepFM (Lian et al., KDD 2018, arXiv 1803.05170): linear part + Compressed Interaction Network
(vector-wise explicit interactions, Eq. 6, sum-pooled) + DNN, one output unit (before the sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import EmbeddingMLPConfig, choice
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.embedding import FeatureEmbedding, field_matrix, n_fields
from bench.nn.interaction import CIN, CIN_ACTIVATIONS, LinearPart
from bench.nn.mlp import MLP


class XDeepFM(nn.Module):
    """logit = linear(x) + w_cin^T p+ + DNN(concat of field embeddings).

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is ignored.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        cin: tuple[int, ...] = (100, 100)
        cin_activation: str = choice("identity", CIN_ACTIVATIONS)
        cin_split_half: bool = False

    def __init__(self, schema: FeatureSchema, cfg: "XDeepFM.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg = cfg or self.Config()
        m = n_fields(schema)
        self.embedding = FeatureEmbedding(schema, cfg.embed_dim)
        self.linear = LinearPart(schema)
        self.cin = CIN(m, cfg.cin, activation=cfg.cin_activation, split_half=cfg.cin_split_half)
        self.cin_out = nn.Linear(self.cin.out_dim, 1, bias=False)
        self.dnn = MLP(m * cfg.embed_dim, cfg.mlp, out_dim=1, activation=cfg.mlp_activation, dropout=cfg.dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        x0 = field_matrix(self.embedding(batch))  # [B, m, d]
        logits = self.linear(batch) + self.cin_out(self.cin(x0)).squeeze(-1) + self.dnn(x0.flatten(1)).squeeze(-1)
        return ModelOutput(logits=logits)


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "xdeepfm", "xDeepFM", XDeepFM
