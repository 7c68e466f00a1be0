"""Prepared splits in storage form: histories as offsets into one event array, gathered per batch.

Issue 16. A split no longer holds its behaviour sequences materialised ([N, T, F_i] plus a [N, T]
mask, 1.2 KB per sample at T = 50); it holds, per sample, only what is O(fields):

| array        | shape    | dtype          | meaning                                                        |
|--------------|----------|----------------|----------------------------------------------------------------|
| `item`       | [N, F_i] | int32          | candidate item field indices                                   |
| `user`       | [N, J]   | int32          | user-profile field indices                                     |
| `context`    | [N, K]   | int32          | context field indices                                          |
| `label`      | [N]      | float32        | 0/1                                                            |
| `user_index` | [N]      | int32 or int64 | raw user key (int32 when every key fits; canonically int64)    |
| `hist_start` | [N]      | int32 or int64 | first event of the sample's kept history window                |
| `hist_end`   | [N]      | int32 or int64 | one past its most recent event (strictly earlier than the sample) |

and ONE per-dataset event array ``events`` [E + 1, F_i] int32: row 0 zeros (the padding every
padded slot reads, so a gather needs no masking), then the item-field indices of every behaviour
event, sorted by (user, time) (:func:`bench.data.samples.build`). Sample i's history is
``events[hist_start[i]:hist_end[i]]`` (``1 <= hist_start <= hist_end``, ``hist_end - hist_start
<= T``), oldest first.

The **canonical form** of a split is what the cache stored before issue 16 and what the dataset
fingerprint hashes: ``item``, ``hist`` [N, T, F_i] int32 (left-padded: slot T-1 = the most recent
event, padding 0 in every field), ``hist_mask`` [N, T] bool, ``user``, ``context``, ``label``,
``user_index`` int64. :meth:`LazySplit.history` rebuilds any rows of it with one vectorised gather
(no per-sample loop); :meth:`LazySplit.canonical` streams it in row chunks.

:class:`LazySplit` also is the harness's ``Split`` for training: :meth:`~LazySplit.take`,
:meth:`~LazySplit.batches` and :meth:`~LazySplit.length_sorted_batches` give the same
:class:`bench.nn.contract.Batch` objects (int64 ids, bool mask, float32 label) as an in-memory
``Split`` of the canonical arrays, gathered on the fly from memory-mapped files, so training reads
pages rather than loading everything. The whole-split tensors (``split.hist``, ``split.item``, ...)
remain available for small datasets and inspection: each is materialised on first access (int64,
as the in-memory ``Split``) and kept; the trainer never touches them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from bench.nn.contract import BATCH_FIELDS, Batch

#: the per-sample arrays a split stores, in file order (``<split>.<name>.npy``)
STORED: tuple[str, ...] = ("item", "user", "context", "label", "user_index", "hist_start", "hist_end")
#: canonical dtype of each Batch field (the pre-issue-16 cache's, which the fingerprint hashes)
CANONICAL_DTYPES: dict[str, np.dtype] = {
    "item": np.dtype(np.int32), "hist": np.dtype(np.int32), "hist_mask": np.dtype(bool),
    "user": np.dtype(np.int32), "context": np.dtype(np.int32), "label": np.dtype(np.float32),
    "user_index": np.dtype(np.int64),
}
#: bytes of one canonical chunk streamed by :meth:`LazySplit.canonical` (about)
CHUNK_BYTES = 1 << 22


def narrow_int(values: np.ndarray) -> np.ndarray:
    """``values`` as int32 when every value fits, else int64 (a storage choice: the canonical
    dtype stays int64)."""
    values = np.asarray(values)
    if values.size == 0 or (values.min() >= np.iinfo(np.int32).min and values.max() <= np.iinfo(np.int32).max):
        return values.astype(np.int32)
    return values.astype(np.int64)


@dataclass(frozen=True)
class CanonicalArray:
    """One canonical array described without being materialised: its ``dtype``, ``shape`` and
    ``chunks()``, an iterator of C-contiguous arrays whose concatenation along axis 0 is the array
    (what :func:`bench.data.fingerprint` hashes, byte for byte)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]


class LazySplit:
    """One split in storage form (module docstring), numpy arrays in memory or memory-mapped.

    arrays: the :data:`STORED` arrays; events: [E + 1, F_i] int32 (row 0 zeros), shared by the
    splits of a dataset;
    max_len: T. ``split[name]`` gives a whole canonical numpy array (as the old ``Built.splits``
    dicts; ``hist`` and ``hist_mask`` are gathered then, not kept), ``split.<name>`` a whole-split
    torch tensor as the in-memory ``Split`` has it (materialised once and kept).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], events: np.ndarray, max_len: int,
                 device: torch.device | str = "cpu"):
        missing = [k for k in STORED if k not in arrays]
        if missing:
            raise ValueError(f"LazySplit: missing arrays {missing}; expected {list(STORED)}")
        self.arrays = {k: arrays[k] for k in STORED}
        self.events = events
        self.max_len = int(max_len)
        self.device = torch.device(device)
        # plain ndarray views of the same buffers (memory-mapped or not): the hot paths' np.take
        self._plain = {k: np.asarray(a) for k, a in self.arrays.items()}
        self._events = np.asarray(events)

    # ------------------------------------------------------------------ numpy side (storage, canonical form)

    def __len__(self) -> int:
        return int(self.arrays["label"].shape[0])

    def lengths(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """History lengths [B] int64 of ``rows`` (all samples by default)."""
        return self.arrays["hist_end"][rows].astype(np.int64) - self.arrays["hist_start"][rows]

    def _rows(self, rows: np.ndarray | slice) -> np.ndarray:
        """Positions [B] int64 of ``rows`` (an int array, or a slice of this split)."""
        if isinstance(rows, slice):
            return np.arange(*rows.indices(len(self)), dtype=np.int64)
        return np.asarray(rows, dtype=np.int64)

    def _take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``arrays[name][rows]`` (rows: int64 positions) as a new in-memory array (``np.take``:
        about 15x faster than fancy indexing of a memory-mapped array)."""
        return np.take(self._plain[name], rows, axis=0)

    def history(self, rows: np.ndarray | slice = slice(None), width: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """The canonical history of ``rows`` (an int array of positions or a slice): ``hist``
        [B, W, F_i] int32, left-padded with zeros, slot W-1 the most recent event, and ``mask``
        [B, W] bool; W = ``width`` (default T; a smaller width keeps the W most recent slots and
        must be >= every length of ``rows``). One vectorised gather ``events[end - W + slot]``,
        padded slots reading the zero row 0 of ``events``."""
        rows = self._rows(rows)
        start, end = self._take("hist_start", rows).astype(np.int64), self._take("hist_end", rows).astype(np.int64)
        W = self.max_len if width is None else int(width)
        slots = np.arange(W)
        mask = slots[None, :] >= (W - (end - start))[:, None]
        pos = np.where(mask, end[:, None] - W + slots[None, :], 0)
        return np.take(self._events, pos, axis=0), mask

    def history_counts(self, flags: np.ndarray) -> np.ndarray:
        """[N] int64: how many events of each sample's history have ``flags`` set (``flags``: bool
        [E + 1], one per row of ``events``; prefix sums over the rows, no gather)."""
        cum = np.concatenate([[0], np.cumsum(np.asarray(flags, dtype=np.int64))])
        return cum[self.arrays["hist_end"].astype(np.int64)] - cum[self.arrays["hist_start"].astype(np.int64)]

    def rows(self, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Every canonical Batch field of ``rows`` as numpy arrays (canonical dtypes)."""
        rows = self._rows(rows)
        hist, mask = self.history(rows)
        out = {"hist": hist, "hist_mask": mask}
        for name in ("item", "user", "context", "label", "user_index"):
            out[name] = self._take(name, rows).astype(CANONICAL_DTYPES[name], copy=False)
        return {k: out[k] for k in BATCH_FIELDS}

    def __getitem__(self, name: str) -> np.ndarray:
        """The whole canonical array ``name`` (one of :data:`bench.nn.contract.BATCH_FIELDS`)."""
        if name in ("hist", "hist_mask"):
            return self.history()[0 if name == "hist" else 1]
        if name not in CANONICAL_DTYPES:
            raise KeyError(name)
        return np.asarray(self.arrays[name], dtype=CANONICAL_DTYPES[name])

    def keys(self) -> tuple[str, ...]:
        return BATCH_FIELDS

    def canonical(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> CanonicalArray:
        """Canonical array ``name`` as a :class:`CanonicalArray`, streamed in row chunks of about
        ``chunk_bytes`` (never materialised whole)."""
        n, T, F = len(self), self.max_len, self.events.shape[1]
        dtype = CANONICAL_DTYPES[name]
        if name == "hist":
            shape = (n, T, F)
        elif name == "hist_mask":
            shape = (n, T)
        else:
            shape = tuple(int(d) for d in self.arrays[name].shape)
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, chunk_bytes // row_bytes)

        def chunks() -> Iterator[np.ndarray]:
            for lo in range(0, n, step):
                rows = slice(lo, min(lo + step, n))
                if name in ("hist", "hist_mask"):
                    yield self.history(rows)[0 if name == "hist" else 1]
                else:
                    yield np.ascontiguousarray(self.arrays[name][rows], dtype=dtype)
        return CanonicalArray(dtype, tuple(int(d) for d in shape), chunks)

    def id_arrays(self) -> dict[str, np.ndarray]:
        """What :func:`bench.data.check_ids` bounds-checks: ``item``, ``hist`` (= the event array:
        every history value is an event's or padding 0), ``user``, ``context``."""
        return {"item": self.arrays["item"], "hist": self.events, "user": self.arrays["user"],
                "context": self.arrays["context"]}

    def offset_error(self) -> str | None:
        """None when the history offsets are consistent (1 <= start <= end <= rows of ``events``,
        end - start <= T) and row 0 of ``events`` is the zero padding, else what is wrong (one
        vectorised pass)."""
        if len(self.events) == 0 or np.asarray(self.events[0]).any():
            return "the event array's row 0 is not the zero padding row"
        if len(self) == 0:
            return None
        start, end = self.arrays["hist_start"], self.arrays["hist_end"]
        length = end.astype(np.int64) - start
        if int(start.min()) < 1 or int(length.min()) < 0:
            return "a history starts before the first event or ends before it starts"
        if int(end.max()) > self.events.shape[0]:
            return f"a history ends at event {int(end.max())} > the {self.events.shape[0]} events"
        if int(length.max()) > self.max_len:
            return f"a history holds {int(length.max())} events > max_len {self.max_len}"
        return None

    # ------------------------------------------------------------------ torch side (the trainer's Split)

    def to(self, device: torch.device | str) -> "LazySplit":
        """This split with batches delivered on ``device`` (gathered on the host, then moved)."""
        device = torch.device(device)
        return self if device == self.device else LazySplit(self.arrays, self.events, self.max_len, device)

    def take(self, index: torch.Tensor | slice) -> Batch:
        """The samples at ``index`` (a slice or a LongTensor of positions) as a :class:`Batch`:
        int64 ids, hist [B, T, F_i], bool mask, float32 label, gathered from the stored arrays
        (the same tensors ``Split.take`` gives on the canonical arrays)."""
        rows = self._rows(index if isinstance(index, slice) else index.cpu().numpy())
        hist, mask = self.history(rows)

        def tensor(name: str, dtype) -> torch.Tensor:
            return torch.from_numpy(self._take(name, rows).astype(dtype, copy=False))

        batch = Batch(item=tensor("item", np.int64), hist=torch.from_numpy(hist.astype(np.int64)),
                      hist_mask=torch.from_numpy(mask), user=tensor("user", np.int64),
                      context=tensor("context", np.int64), label=tensor("label", np.float32),
                      user_index=tensor("user_index", np.int64))
        return batch if self.device.type == "cpu" else batch.to(self.device)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Batch]:
        """As :meth:`bench.nn.contract.Batch.batches`: with ``shuffle`` a permutation drawn from
        ``generator`` (``torch.randperm`` on the CPU, the same draws) orders the samples, else
        contiguous slices; each batch gathered by :meth:`take`."""
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator, device="cpu")
            for start in range(0, n, batch_size):
                yield self.take(perm[start : start + batch_size])
        else:
            for start in range(0, n, batch_size):
                yield self.take(slice(start, start + batch_size))

    def length_sorted_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, Batch]]:
        """As :meth:`bench.nn.contract.Batch.length_sorted_batches`: (positions [b] int64, batch)
        pairs covering every sample once, ordered by history length (stable sort), each batch
        :meth:`~bench.nn.contract.Batch.trim_padding`-ed."""
        order = torch.sort(torch.from_numpy(self.lengths()), stable=True).indices
        for start in range(0, len(self), batch_size):
            pos = order[start : start + batch_size]
            yield pos, self.take(pos).trim_padding()

    def materialize(self) -> Batch:
        """The whole split as an in-memory :class:`Batch` (canonical values, int64 ids)."""
        return Batch(**{k: getattr(self, k) for k in BATCH_FIELDS})

    def _whole(self, name: str) -> torch.Tensor:
        a = self[name]
        t = torch.from_numpy(a.astype(np.int64) if a.dtype.kind in "iu" else np.array(a))
        return t if self.device.type == "cpu" else t.to(self.device)

    item = functools.cached_property(lambda self: self._whole("item"))
    hist = functools.cached_property(lambda self: self._whole("hist"))
    hist_mask = functools.cached_property(lambda self: self._whole("hist_mask"))
    user = functools.cached_property(lambda self: self._whole("user"))
    context = functools.cached_property(lambda self: self._whole("context"))
    label = functools.cached_property(lambda self: self._whole("label"))
    user_index = functools.cached_property(lambda self: self._whole("user_index"))
