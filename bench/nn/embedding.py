"""Field embeddings: one table per field (the paper's Eq. 1-2, categorical case), a faster CPU
lookup, and the field matrix of the non-sequence models.

| piece | used by | source |
|---|---|---|
| :class:`FeatureEmbedding`, :class:`Embedded` | every model | MIAN Eq. (1)-(2); candidate and behaviours share the item tables |
| :func:`field_matrix`, :func:`n_fields` | LR, Wide&Deep, DCN, DeepFM, xDeepFM | DIN paper's BaseModel: behaviours as a mean-pooled multi-valued field |

The non-sequence models' field matrix has m = 2 F_i + J + K fields:
``[candidate fields (F_i), pooled behaviour fields (F_i), user fields (J), context fields (K)]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.nn.contract import Batch, FeatureSchema
from bench.nn.pooling import masked_mean


@dataclass
class Embedded:
    """Field embeddings of one batch (MIAN.md section 1 names).

    e_i: [B, F_i, d] candidate item fields.
    e_b: [B, T, F_i, d] behaviours (0 at padding slots).
    e_u: [B, J, d] user fields.
    e_c: [B, K, d] context fields (K may be 0).
    mask: [B, T] bool, True at real behaviours.
    """

    e_i: torch.Tensor
    e_b: torch.Tensor
    e_u: torch.Tensor
    e_c: torch.Tensor
    mask: torch.Tensor


class FeatureEmbedding(nn.Module):
    """One embedding table per field (paper Eq. 2, categorical case); candidate and behaviours
    share the item-field tables. Row 0 (padding) is zero and receives no gradient.

    All tables of one group are stored as one concatenated ``nn.Embedding`` with per-field
    offsets, so a group is embedded by a single lookup. ``item_table(f)`` / ``tables`` expose the
    per-field views for tests.

    Args:
        schema: the dataset's :class:`FeatureSchema`.
        dim: embedding size d per field.
    """

    def __init__(self, schema: FeatureSchema, dim: int):
        super().__init__()
        self.schema = schema
        self.dim = dim
        self.item = _GroupEmbedding([f.vocab_size for f in schema.item_fields], dim)
        self.user = _GroupEmbedding([f.vocab_size for f in schema.user_fields], dim)
        self.context = _GroupEmbedding([f.vocab_size for f in schema.context_fields], dim)

    def forward(self, batch: Batch) -> Embedded:
        e_i = self.item(batch.item)  # [B, F_i, d]
        e_b = self.item(batch.hist)  # [B, T, F_i, d]; padding ids 0 -> zero rows
        e_u = self.user(batch.user)
        e_c = self.context(batch.context)
        return Embedded(e_i=e_i, e_b=e_b, e_u=e_u, e_c=e_c, mask=batch.hist_mask)

    def embed_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed item-field ids [..., F_i] -> [..., F_i, d] with the shared item tables."""
        return self.item(ids)


class _GroupEmbedding(nn.Module):
    """Concatenated per-field tables of one group: ids [..., F] -> [..., F, d]."""

    def __init__(self, vocab_sizes: list[int], dim: int):
        super().__init__()
        self.vocab_sizes = list(vocab_sizes)
        self.dim = dim
        offsets = torch.tensor([0] + self.vocab_sizes[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        total = int(sum(self.vocab_sizes))
        self.weight = nn.Parameter(torch.empty(max(total, 1), dim))
        nn.init.normal_(self.weight, std=1e-2 if dim else 0.0)
        with torch.no_grad():
            self.weight[offsets] = 0.0
        if total:
            self.weight.register_hook(self._zero_pad_grad)

    def _zero_pad_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[self.offsets] = 0.0
        return grad

    def table(self, f: int) -> torch.Tensor:
        """The view of field ``f``'s table: [vocab_size_f, d]."""
        start = int(self.offsets[f])
        return self.weight[start : start + self.vocab_sizes[f]]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] == 0:
            return self.weight.new_zeros(*ids.shape, self.dim)
        ids = ids + self.offsets
        if self.weight.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled():
            return _CPULookup.apply(self.weight, ids)
        return nn.functional.embedding(ids, self.weight)


class _CPULookup(torch.autograd.Function):
    """``F.embedding(ids, weight)`` with a faster CPU backward: one ``scatter_add_`` over an
    expanded index instead of ``embedding_dense_backward``, which adds each looked-up row with its
    own TensorIterator (about 1.2 ms for the 12,800 behaviour rows of a MovieLens-100K batch, 44 %
    of a Wide&Deep training step). Both add the rows of one table row in index order onto zeros, so
    the gradient is bitwise identical (tested against ``embedding_dense_backward``, 1 and 2
    threads); ~4x faster. CPU only: on CUDA, scatter_add_ uses atomics (not deterministic).

    weight [V, d], ids int64 [...] -> [..., d]."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.n_rows = weight.shape[0]
        return nn.functional.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        flat = ids.reshape(-1)
        g = grad.reshape(flat.numel(), grad.shape[-1]).contiguous()
        out = g.new_zeros(ctx.n_rows, g.shape[1])
        return out.scatter_add_(0, flat.unsqueeze(1).expand_as(g), g), None


def n_fields(schema: FeatureSchema) -> int:
    """Number of fields m of :func:`field_matrix`: 2 F_i + J + K."""
    return 2 * schema.n_item_fields + schema.n_user_fields + schema.n_context_fields


def field_matrix(emb: Embedded) -> torch.Tensor:
    """The non-sequence models' input: [B, m, d], m = 2 F_i + J + K.

    Fields in order: candidate item fields e_i, the behaviours as one multi-valued field per item
    field (masked mean over the real behaviours, 0 for an empty history), user fields e_u, context
    fields e_c. Source: the DIN paper's BaseModel (Sec. 4.2), whose behaviour features are pooled
    multi-hot fields.
    """
    return torch.cat([emb.e_i, masked_mean(emb.e_b, emb.mask), emb.e_u, emb.e_c], dim=1)


def embedding_penalty(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of the squared entries of every embedding row ``batch`` looks up, each row once.

    Covers every :class:`FeatureEmbedding` of ``model`` (the field embeddings, and the width-1
    weights of :class:`bench.nn.interaction.LinearPart`, FuxiCTR's LR embedding): per group, the
    distinct rows of the candidate and behaviour ids (item tables), the user ids and the context
    ids of the batch. Padding rows are 0 and add nothing. The trainer adds ``lambda *`` this to the
    loss (``train.embedding_regularizer``). BARS/FuxiCTR's ``embedding_regularizer`` adds
    (lambda / 2) ||W||^2 over whole tables (``BaseModel.regularization_loss``); issue 15 asks for the
    rows a batch uses, DIN's mini-batch aware regularisation (Zhou et al. 2018, Sec. 4.3), so a step
    costs O(rows used), not O(vocabulary), and rows of values absent from the batch are not shrunk.

    Shapes: batch.item [B, F_i], batch.hist [B, T, F_i], batch.user [B, J], batch.context [B, K]
    -> a 0-dim tensor (0 when ``model`` has no FeatureEmbedding). One ``torch.unique`` per group:
    no per-sample loop.
    """
    total = None
    for module in model.modules():
        if not isinstance(module, FeatureEmbedding):
            continue
        groups = ((module.item, (batch.item, batch.hist)), (module.user, (batch.user,)),
                  (module.context, (batch.context,)))
        for group, id_sets in groups:
            if not group.vocab_sizes:
                continue
            ids = torch.cat([(x + group.offsets).reshape(-1) for x in id_sets if x.numel()])
            rows = group.weight.index_select(0, torch.unique(ids))
            term = rows.pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=batch.label.device)
    return total
