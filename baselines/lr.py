"""LR: logistic regression over all sparse fields, one weight per feature value (MIAN Table 2 (1)).

The behaviours enter as one mean-pooled multi-valued field per item field (DIN paper's BaseModel
input), sharing the candidate's weight table (:class:`bench.nn.interaction.LinearPart`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.config import ModelConfig
from bench.nn.contract import Batch, FeatureSchema, ModelOutput
from bench.nn.interaction import LinearPart


class LR(nn.Module):
    """Logistic regression: logit = b + sum of the weights of the batch's feature values.

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is accepted for the shared
    constructor signature and ignored.
    """

    @dataclass(frozen=True)
    class Config(ModelConfig):
        """LR has no hyper-parameter besides the trainer's (lr, batch size)."""

    def __init__(self, schema: FeatureSchema, cfg: "LR.Config | None" = None, item_table: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg or self.Config()
        self.linear = LinearPart(schema)

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(logits=self.linear(batch))


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "lr", "LR", LR
