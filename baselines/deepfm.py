"""DeepFM (Guo et al., IJCAI 2017, arXiv 1703.04247): an FM component (first order + pairwise
inner products of the field embeddings, Eq. 2) and a DNN sharing the embeddings;
logit = y_FM + y_DNN (Eq. 1 before the sigmoid).
"""
from __future__ import annotations

from dataclasses import dataclass

from baselines.wide_deep import WideDeep
from bench.nn.config import EmbeddingMLPConfig
from bench.nn.contract import Batch, ModelOutput
from bench.nn.embedding import field_matrix
from bench.nn.interaction import fm_second_order


class DeepFM(WideDeep):
    """logit = linear(x) + sum_{i<j} <v_i, v_j> + DNN(concat v).

    Shapes: batch -> ModelOutput(logits [B]). ``item_table`` is ignored. Its layers are
    Wide&Deep's (field embeddings, the first-order ``linear`` part, the ``dnn``); it adds the FM's
    pairwise term, on the same embeddings.
    """

    @dataclass(frozen=True)
    class Config(EmbeddingMLPConfig):
        """embed_dim, mlp, mlp_activation, dropout (:class:`bench.nn.config.EmbeddingMLPConfig`)."""

    def forward(self, batch: Batch) -> ModelOutput:
        v = field_matrix(self.embedding(batch))  # [B, m, d]
        logits = self.linear(batch) + fm_second_order(v) + self.dnn(v.flatten(1)).squeeze(-1)
        return ModelOutput(logits=logits)


#: Registry entry (bench/training/registry.py lists this module): the name in the CLI and the run records,
#: the label in the tables, the class built.
NAME, LABEL, MODEL = "deepfm", "DeepFM", DeepFM
