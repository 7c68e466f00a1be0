"""The input contract every model shares: feature schema, batches (and whole splits), model output.

Groups follow the paper's Sec. 3.2.1 (../shared/PROTOCOL.md section 1):

| name         | shape         | dtype   | meaning                                                        |
|--------------|---------------|---------|----------------------------------------------------------------|
| `item`       | [B, F_i]      | int64   | candidate item fields (e_i)                                    |
| `hist`       | [B, T, F_i]   | int64   | behaviours, same fields as `item`, most recent in the LAST slot |
| `hist_mask`  | [B, T]        | bool    | True where `hist` holds a real behaviour (left padding)        |
| `user`       | [B, J]        | int64   | user-profile fields (e_u)                                      |
| `context`    | [B, K]        | int64   | context fields (e_c); K may be 0                               |
| `label`      | [B]           | float32 | 0/1 click / review label                                      |
| `user_index` | [B]           | int64   | raw user key, for gAUC grouping only (never a model input)     |

Index 0 of every field is padding (embedding 0), index 1 is out-of-vocabulary.
Histories are left-padded: slot T-1 is the most recent behaviour, so slot t means
"the (T-t)-th most recent" whatever ``max_len`` is.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Iterator

import torch

PAD = 0
OOV = 1

BATCH_FIELDS = ("item", "hist", "hist_mask", "user", "context", "label", "user_index")


@dataclass(frozen=True)
class Field:
    """One categorical field: its name and vocabulary size (padding 0 and OOV 1 included)."""

    name: str
    vocab_size: int


@dataclass(frozen=True)
class FeatureSchema:
    """Fields of the four input groups of one prepared dataset.

    ``item_fields`` serve both the candidate item and each behaviour (one embedding table per
    field, shared). A field that the behaviours (or the candidates) of a dataset do not carry holds
    the padding index 0 there (Taobao: a behaviour-log event has no ad id; docs/DATA.md).
    ``max_len`` is T, the number of behaviour slots.
    """

    item_fields: tuple[Field, ...]
    user_fields: tuple[Field, ...]
    context_fields: tuple[Field, ...]
    max_len: int

    @property
    def n_item_fields(self) -> int:
        return len(self.item_fields)

    @property
    def n_user_fields(self) -> int:
        return len(self.user_fields)

    @property
    def n_context_fields(self) -> int:
        return len(self.context_fields)

    def to_dict(self) -> dict:
        return {
            "item_fields": [dataclasses.asdict(f) for f in self.item_fields],
            "user_fields": [dataclasses.asdict(f) for f in self.user_fields],
            "context_fields": [dataclasses.asdict(f) for f in self.context_fields],
            "max_len": self.max_len,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSchema":
        return cls(
            item_fields=tuple(Field(**f) for f in d["item_fields"]),
            user_fields=tuple(Field(**f) for f in d["user_fields"]),
            context_fields=tuple(Field(**f) for f in d["context_fields"]),
            max_len=int(d["max_len"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass
class Batch:
    """Samples of the shared contract as tensors (shapes in the module docstring): one mini-batch,
    or a whole split (B = number of samples N, then named :data:`Split`) whose batches are slices.
    """

    item: torch.Tensor
    hist: torch.Tensor
    hist_mask: torch.Tensor
    user: torch.Tensor
    context: torch.Tensor
    label: torch.Tensor
    user_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: getattr(self, k).to(device) for k in BATCH_FIELDS})

    def take(self, index: torch.Tensor | slice) -> "Batch":
        """The samples at ``index`` (a slice or a LongTensor of positions).

        Positions are gathered with ``index_select`` (about 0.15 ms less host time per 256-sample
        MovieLens-100K batch than advanced indexing; same tensors)."""
        if isinstance(index, slice):
            return Batch(**{k: getattr(self, k)[index] for k in BATCH_FIELDS})
        return Batch(**{k: torch.index_select(getattr(self, k), 0, index) for k in BATCH_FIELDS})

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator["Batch"]:
        """Yield batches sliced from the in-memory tensors.

        With ``shuffle`` a permutation drawn from ``generator`` orders the samples (one gather per
        batch); otherwise contiguous slices, no copy.
        """
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator, device="cpu").to(self.label.device)
            for start in range(0, n, batch_size):
                yield self.take(perm[start : start + batch_size])
        else:
            for start in range(0, n, batch_size):
                yield self.take(slice(start, start + batch_size))

    def trim_padding(self) -> "Batch":
        """This batch without the leading behaviour slots that are padding in every row (left
        padding: real behaviours fill the last slots); at least one slot is kept. hist [B, T, F_i]
        -> [B, T', F_i], hist_mask [B, T] -> [B, T'] with T' = the longest real history (>= 1).

        Exact for every model of the harness: each is invariant to extra left padding (positions
        and per-slot weights are indexed from the most recent behaviour; tested per model)."""
        used = self.hist_mask.any(0)
        T = int(used.shape[0])
        if T == 0 or bool(used[0]):
            return self
        first = int(used.to(torch.int8).argmax()) if bool(used.any()) else T - 1
        return dataclasses.replace(self, hist=self.hist[:, first:], hist_mask=self.hist_mask[:, first:])

    def length_sorted_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, "Batch"]]:
        """(positions, batch) pairs covering every sample once, for scoring: samples ordered by
        history length (stable), each batch :meth:`trim_padding`-ed, so a batch of short histories
        carries no padding. positions [b] int64 are the samples' indices in this split (to put the
        outputs back in split order)."""
        lengths = self.hist_mask.sum(1)
        order = torch.sort(lengths, stable=True).indices
        for start in range(0, len(self), batch_size):
            pos = order[start : start + batch_size]
            yield pos, self.take(pos).trim_padding()


#: All samples of one split, in memory: a :class:`Batch` with B = N (the harness's name for it).
#: A loaded cache's splits are ``bench.data.store.LazySplit`` objects instead (histories gathered
#: per batch from memory-mapped offsets), with the same ``take`` / ``batches`` /
#: ``length_sorted_batches`` / ``to`` and the same batches.
Split = Batch


@dataclass
class ModelOutput:
    """What every model's ``forward(batch)`` returns.

    logits: [B] float, pre-sigmoid click scores.
    aux_loss: scalar tensor already multiplied by its weight (DIEN's alpha * L_aux), added to the
        mean BCE by the trainer; None when the model has none.
    attention: named attention weights for inspection, e.g. MIAN's ``gim`` [B, 7],
        ``ibim`` [B, T], ``iuim`` [B, J], ``icim`` [B, K]; empty when the model has none.
    """

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)
