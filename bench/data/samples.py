"""From raw samples to model-ready arrays: behaviour sequences, vocabularies, splits.

A dataset family (``bench/data/sources/``) describes its data as a :class:`SampleTable`: every sample
(raw user key, raw candidate item id, timestamp, label, split, user and context fields) plus the
pool of behaviour events (user, item, timestamp) and one row of item fields per item (or, for a
family whose behaviours are not items, each event's own item fields: ``event_attrs``, Taobao).
:func:`build` then applies the rules of PROTOCOL section 1, all vectorised (sorts, searchsorted,
gathers; no Python loop over samples, users or events):

- a behaviour is strictly earlier than its sample (event time < sample time; ties are not
  history), so a sample's own event is never in its history;
- the most recent ``max_len`` behaviours are kept, LEFT-padded (slot T-1 = most recent) with a mask;
- vocabularies are fitted on the training split only (its candidates, behaviours, user and
  context fields); index 0 = padding, 1 = out-of-vocabulary (values first seen later);
- every split must have a positive rate strictly inside (0, 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from bench.nn.contract import OOV, PAD, FeatureSchema, Field
from bench.data.sources.common import DataError
from bench.data.store import LazySplit, narrow_int

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2
#: raw code of an item field a behaviour or candidate does not carry (e.g. Taobao's behaviour log has
#: no ad id): it is never a vocabulary value and is stored as the padding index 0 (zero embedding)
ABSENT = np.iinfo(np.int64).min


@dataclass(frozen=True)
class ProtocolParams:
    """Parameters shared by every protocol; part of the cache key.

    max_len: T, behaviour slots kept (PROTOCOL section 3).
    data_seed: seed of the data-side randomness (Amazon negative sampling), separate from the
        model seeds (PROTOCOL section 3).
    """

    max_len: int = 50
    data_seed: int = 2021


@dataclass(frozen=True)
class SampleTable:
    """Raw (not yet indexed) samples and behaviour events of one dataset under one protocol.

    All arrays are integer raw codes (any integers; a missing value is its own code), int64 or, where
    a reader knows they fit, int32 (:func:`build` fits every vocabulary on int64 values, so the
    dtype changes nothing it writes).

    item_attrs: [I, F_i] one row per item, column 0 the raw item id (unique), the other columns
        the item's other fields (category, ...); candidates and behaviours take their fields here.
    event_user, event_item, event_time: [E] the behaviour pool (every past action a history may
        hold), in the order ties are to be kept (a stable sort by user and time is applied).
    user_key: [N] raw user key of each sample (stored as ``user_index`` for gAUC).
    item: [N] raw candidate item id. time: [N] sample timestamp (same unit as event_time).
    user: [N, J] user-profile fields; context: [N, K] context fields.
    label: [N] 0/1. split: [N] 0 train, 1 valid, 2 test.
    event_attrs: optional [E, F_i] the item fields of each behaviour event itself, for a family whose
        behaviours are not items of ``item_attrs`` (Taobao: the behaviour log has category, brand and
        behaviour type, no ad id); :data:`ABSENT` in a field the behaviours do not carry (stored as
        the padding index 0, so its embedding is 0). None (every other family): the fields are the
        ``item_attrs`` row of ``event_item``. With it, ``event_item`` is not read.
    history_key: optional [N] the key in ``event_user`` of each sample's behaviour pool, when it is
        not the user (TaobaoAd_x1 publishes each sample's history with the sample: one pool per
        sample). None: ``user_key``.
    """

    name: str
    item_fields: tuple[str, ...]
    user_fields: tuple[str, ...]
    context_fields: tuple[str, ...]
    item_attrs: np.ndarray
    event_user: np.ndarray
    event_item: np.ndarray
    event_time: np.ndarray
    user_key: np.ndarray
    item: np.ndarray
    time: np.ndarray
    user: np.ndarray
    context: np.ndarray
    label: np.ndarray
    split: np.ndarray
    event_attrs: np.ndarray | None = None
    history_key: np.ndarray | None = None


@dataclass(frozen=True)
class Built:
    """Output of :func:`build`.

    schema: the :class:`FeatureSchema` (vocabulary sizes include padding and OOV).
    splits: split name -> :class:`bench.data.store.LazySplit` in memory (int32 ids, float32 label,
        history offsets into ``events``); ``splits[s][field]`` gives the canonical arrays named as
        :data:`bench.nn.contract.Split` (int32 ids, bool mask, float32 label, int64 user_index).
    events: [E + 1, F_i] int32: row 0 zeros (padding), then the item-field indices of every
        behaviour event, sorted by (user, time); the splits' offsets index it.
    cand_rows: split name -> [N_s] int64 row of each candidate in ``item_attrs``.
    item_attrs: [I, F_i] int64 raw item fields (the table's ``item_attrs``).
    item_table: [V_item_id, F_i] int32 item fields of each item-id index (row 0 zeros, row 1 OOV); a
        field that no behaviour carries (:data:`ABSENT` in every row of ``event_attrs``) is 0 there, so
        a row is the item as a behaviour shows it (DIEN draws its negative behaviours from this table).
    vocabs: ``<group>.<field>`` (group item, user or context) -> sorted raw values; index k >= 2
        of that field stands for ``vocab[k - 2]``.
    """

    schema: FeatureSchema
    splits: dict[str, LazySplit]
    events: np.ndarray
    cand_rows: dict[str, np.ndarray]
    item_attrs: np.ndarray
    item_table: np.ndarray
    vocabs: dict[str, np.ndarray]

    @property
    def raw_items(self) -> dict[str, np.ndarray]:
        """split name -> [N_s, F_i] raw candidate item fields (for statistics)."""
        return {name: self.item_attrs[rows] for name, rows in self.cand_rows.items()}


def history_bounds(
    event_user: np.ndarray, event_time: np.ndarray, user: np.ndarray, time: np.ndarray,
    chunk: int = 1 << 20,
) -> tuple[np.ndarray, np.ndarray]:
    """For each sample, the range [start, end) of its user's events strictly earlier than it.

    ``event_user``/``event_time`` [E] must be sorted by (user, time). ``start`` [N] is the index of
    the user's first event, ``end`` [N] one past the last event with time < the sample's time
    (so ties and later events are excluded). Vectorised, over chunks of ``chunk`` samples: a
    ``searchsorted`` on the users gives each sample its user's event range, then a binary search
    run on every sample of the chunk at once (about log2 of the longest user range steps) finds
    the first event at or after the sample's time; at most a few [chunk] arrays are held besides
    the outputs.
    """
    event_user, event_time = np.asarray(event_user), np.asarray(event_time)
    n = len(user)
    start, end = np.empty(n, np.int64), np.empty(n, np.int64)
    for lo_row in range(0, n, chunk):
        u, t = user[lo_row:lo_row + chunk], time[lo_row:lo_row + chunk]
        lo = np.searchsorted(event_user, u, side="left").astype(np.int64)
        hi = np.searchsorted(event_user, u, side="right").astype(np.int64)
        start[lo_row:lo_row + chunk] = lo
        active = np.flatnonzero(lo < hi)
        while active.size:  # first event of [lo, hi) with time >= t (hi when none)
            l, h = lo[active], hi[active]
            mid = (l + h) >> 1
            right = event_time[mid] < t[active]
            lo[active] = np.where(right, mid + 1, l)
            hi[active] = np.where(right, h, mid)
            active = active[lo[active] < hi[active]]
        end[lo_row:lo_row + chunk] = lo
    return start, end


def gather_history(
    start: np.ndarray, end: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Event positions of the most recent ``max_len`` events in [start, end), left-padded.

    Returns ``pos`` [N, T] int64 event indices (0 where padded) and ``mask`` [N, T] bool; slot T-1
    holds event end-1 (the most recent), older events to its left.
    """
    length = np.minimum(end - start, max_len)
    slots = np.arange(max_len)
    mask = slots[None, :] >= (max_len - length)[:, None]
    pos = np.where(mask, end[:, None] - max_len + slots[None, :], 0)
    return pos, mask


def check_candidates_not_in_history(event_item: np.ndarray, item: np.ndarray, first: np.ndarray,
                                    end: np.ndarray, name: str, chunk: int = 1 << 16) -> None:
    """Raise :class:`DataError` when a sample's candidate ``item`` [N] (raw id) is among the
    events ``event_item[first:end]`` of its history window (possible only with repeated
    (user, item) events). Vectorised over chunks of ``chunk`` samples, so at most
    [chunk, longest window] positions are held at once."""
    for lo in range(0, len(item), chunk):
        f, e = first[lo:lo + chunk], end[lo:lo + chunk]
        width = int((e - f).max()) if len(f) else 0
        if width == 0:
            continue
        slots = np.arange(width)
        inside = slots[None, :] < (e - f)[:, None]
        pos = np.where(inside, f[:, None] + slots[None, :], 0)
        if ((event_item[pos] == item[lo:lo + chunk, None]) & inside).any():
            raise DataError(
                f"{name}: a candidate item appears in its own behaviour sequence; "
                "expected each (user, item) pair at most once."
            )


def fit_vocab(values: np.ndarray) -> np.ndarray:
    """Sorted distinct raw values; value ``vocab[k]`` gets index k + 2 (0 pad, 1 OOV)."""
    return np.unique(values)


def decode(indices: np.ndarray, vocab: np.ndarray, pad: int = -2, oov: int = -1) -> np.ndarray:
    """Inverse of :func:`encode`: raw values, ``pad`` for index 0 and ``oov`` for index 1."""
    raw = vocab[np.clip(indices - 2, 0, max(len(vocab) - 1, 0))] if len(vocab) else np.zeros(indices.shape, np.int64)
    return np.where(indices >= 2, raw, np.where(indices == OOV, oov, pad))


def encode(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Index of each raw value in ``vocab`` (+2), or OOV (1) when absent from it, and the padding
    index 0 for :data:`ABSENT` (a field the row does not carry). Same shape as ``values``."""
    if len(vocab) == 0:
        return np.where(values == ABSENT, PAD, OOV).astype(np.int64)
    pos = np.searchsorted(vocab, values)
    found = vocab[np.minimum(pos, len(vocab) - 1)] == values
    return np.where(found, pos + 2, np.where(values == ABSENT, PAD, OOV)).astype(np.int64)


def lookup_rows(keys: np.ndarray, table_keys: np.ndarray, what: str) -> np.ndarray:
    """Row of each key in ``table_keys`` (unique); :class:`DataError` naming ``what`` when absent."""
    if len(table_keys) == 0:
        raise DataError(f"{what}: the table is empty; expected one row per id.")
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    missing = sorted_keys[pos] != keys
    if missing.any():
        raise DataError(f"{what}: id {keys[missing][0]} has no row; expected every id to be listed.")
    return order[pos]


def build(table: SampleTable, params: ProtocolParams) -> Built:
    """Behaviour sequences, train-only vocabularies and per-split arrays of ``table``.

    Raises :class:`DataError` when a split is empty, its positive rate is not strictly inside
    (0, 1), or a candidate item would appear in its own history (repeated (user, item) events;
    checked when behaviours are items, i.e. without ``event_attrs``).
    """
    T = params.max_len
    F = len(table.item_fields)
    attrs = np.asarray(table.item_attrs, dtype=np.int64)
    if len(np.unique(attrs[:, 0])) != len(attrs):
        raise DataError(f"{table.name}: item table lists an item id twice; expected one row per item.")

    # behaviour pool, stably sorted by (user, time): given order breaks ties
    order = np.lexsort((np.arange(len(table.event_user)), table.event_time, table.event_user))
    ev_user, ev_time = table.event_user[order], table.event_time[order]
    cand_rows = lookup_rows(table.item, attrs[:, 0], f"{table.name} item table")
    hist_key = table.user_key if table.history_key is None else table.history_key

    start, end = history_bounds(ev_user, ev_time, hist_key, table.time)
    del ev_user, ev_time
    first = end - np.minimum(end - start, T)  # the kept window: the most recent T events
    del start
    if table.event_attrs is None:  # behaviours are items: their fields are their item-table rows
        ev_item = table.event_item[order]
        ev_rows = lookup_rows(ev_item, attrs[:, 0], f"{table.name} item table")
        check_candidates_not_in_history(ev_item, table.item, first, end, table.name)
        del ev_item
        ev_attrs = None
    else:  # behaviours carry their own fields (ABSENT where they have none)
        ev_attrs = np.asarray(table.event_attrs, dtype=np.int64)[order]
        if ev_attrs.shape != (len(order), F):
            raise DataError(f"{table.name}: event_attrs has shape {ev_attrs.shape}; expected "
                            f"({len(order)}, {F}), one row of item fields per event.")

    # vocabularies from the training split only: its candidates, behaviours, user, context fields
    is_train = table.split == TRAIN
    if not is_train.any():
        raise DataError(f"{table.name}: the train split is empty; expected training samples.")
    tr_end, tr_first = end[is_train], first[is_train]
    n_ev = len(order)  # events inside some training history: +1 at each range start, -1 past its end
    cover = np.bincount(tr_first, minlength=n_ev + 1) - np.bincount(tr_end, minlength=n_ev + 1)
    ev_used = np.cumsum(cover[:-1]) > 0
    del cover, tr_end, tr_first
    ev_fields = attrs[ev_rows[ev_used]] if ev_attrs is None else ev_attrs[ev_used]
    item_vocab = [
        fit_vocab(_carried(np.concatenate([attrs[cand_rows[is_train], f], ev_fields[:, f]])))
        for f in range(F)
    ]
    del ev_used, ev_fields
    # fitted on int64 values whatever the table's dtype (the vocabularies are part of the fingerprint)
    user_vocab = [fit_vocab(table.user[is_train, j].astype(np.int64)) for j in range(table.user.shape[1])]
    ctx_vocab = [fit_vocab(table.context[is_train, k].astype(np.int64)) for k in range(table.context.shape[1])]

    attrs_enc = np.stack([encode(attrs[:, f], item_vocab[f]) for f in range(F)], 1).astype(np.int32)
    # [E + 1, F]: row 0 the zero padding row, then the item fields of every event in (user, time)
    # order; the stored offsets therefore count from 1
    if ev_attrs is None:
        ev_enc = attrs_enc[ev_rows]
        del ev_rows
    else:
        ev_enc = np.stack([encode(ev_attrs[:, f], item_vocab[f]) for f in range(F)], 1).astype(np.int32)
        ev_enc = ev_enc.reshape(len(ev_attrs), F)
    events = np.concatenate([np.zeros((1, F), np.int32), ev_enc])
    del ev_enc

    schema = FeatureSchema(
        item_fields=tuple(Field(n, len(v) + 2) for n, v in zip(table.item_fields, item_vocab)),
        user_fields=tuple(Field(n, len(v) + 2) for n, v in zip(table.user_fields, user_vocab)),
        context_fields=tuple(Field(n, len(v) + 2) for n, v in zip(table.context_fields, ctx_vocab)),
        max_len=T,
    )

    label = np.asarray(table.label, dtype=np.float32)
    offsets = narrow_int if len(events) < 2**31 else (lambda x: np.asarray(x, np.int64))
    splits, split_rows = {}, {}
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(table.split == code)
        if rows.size == 0:
            raise DataError(f"{table.name}: the {name} split is empty; expected at least one sample.")
        rate = float(label[rows].mean())
        if not 0.0 < rate < 1.0:
            raise DataError(
                f"{table.name}: the {name} split has positive rate {rate:.3f}; "
                "expected strictly between 0 and 1 (PROTOCOL section 1)."
            )
        stored = {
            "item": attrs_enc[cand_rows[rows]],
            "user": _encode_columns(table.user[rows], user_vocab).astype(np.int32),
            "context": _encode_columns(table.context[rows], ctx_vocab).astype(np.int32),
            "label": label[rows],
            "user_index": narrow_int(table.user_key[rows]),
            "hist_start": offsets(first[rows] + 1),
            "hist_end": offsets(end[rows] + 1),
        }
        splits[name] = LazySplit(stored, events, T)
        split_rows[name] = cand_rows[rows]

    # item_table[v] = item fields of item-id index v (row 0 padding, row 1 OOV)
    item_table = np.zeros((len(item_vocab[0]) + 2, F), np.int32)
    item_table[OOV] = OOV
    item_table[2:] = attrs_enc[lookup_rows(item_vocab[0], attrs[:, 0], f"{table.name} item table")]
    if ev_attrs is not None and len(ev_attrs):  # fields no behaviour carries: 0, as in a behaviour
        item_table[2:, (ev_attrs == ABSENT).all(0)] = 0
    vocabs = {
        f"{group}.{name}": v
        for group, names, vs in (("item", table.item_fields, item_vocab),
                                 ("user", table.user_fields, user_vocab),
                                 ("context", table.context_fields, ctx_vocab))
        for name, v in zip(names, vs)
    }
    return Built(schema=schema, splits=splits, events=events, cand_rows=split_rows, item_attrs=attrs,
                 item_table=item_table, vocabs=vocabs)


#: the arrays that make a sample: two samples equal in all of them are copies (user_index excluded)
ROW_FIELDS: tuple[str, ...] = ("label", "item", "hist", "user", "context")


def _take_rows(arrays, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
    """The :data:`ROW_FIELDS` of ``rows`` of a split: a :class:`LazySplit` (histories gathered for
    those rows only) or a dict of whole canonical arrays."""
    if isinstance(arrays, LazySplit):
        return arrays.rows(rows)
    return {f: np.asarray(arrays[f])[rows] for f in ROW_FIELDS}


def _row_parts(arrays, rows: np.ndarray) -> list[np.ndarray]:
    part = _take_rows(arrays, rows)
    return [part[f].reshape(len(part["label"]), -1).astype(np.int64) for f in ROW_FIELDS]


def row_hashes(arrays, chunk: int | None = None) -> np.ndarray:
    """A uint64 hash [N] of each sample's :data:`ROW_FIELDS` (label, item, hist, user, context).

    ``arrays``: a :class:`LazySplit` or a dict of the split's canonical arrays. Equal samples have
    equal hashes; unequal ones collide with probability about 2**-64 (a linear hash with fixed
    random odd multipliers, modulo 2**64). Vectorised, in chunks of ``chunk`` rows so that at most
    [chunk, T * F_i] int64 is held at once (a LazySplit's histories are gathered chunk by chunk);
    by default about 2**21 values (16 MB) per chunk.
    """
    n = len(arrays["label"]) if not isinstance(arrays, LazySplit) else len(arrays)
    if chunk is None:
        T, F = (arrays.max_len, arrays.events.shape[1]) if isinstance(arrays, LazySplit) else \
            np.asarray(arrays["hist"]).shape[1:3]
        chunk = max(1, (1 << 21) // (T * F + 8))
    out = np.zeros(n, np.uint64)
    mult = None
    for lo in range(0, n, chunk):
        part = _take_rows(arrays, slice(lo, lo + chunk))
        parts = [part[f].reshape(len(part["label"]), -1) for f in ROW_FIELDS]
        if mult is None:
            mult = np.random.default_rng(0x5EED).integers(1, 2**63, sum(p.shape[1] for p in parts),
                                                          dtype=np.uint64) | 1
        h = np.zeros(len(part["label"]), np.uint64)
        col = 0
        for p in parts:
            block = p.astype(np.int64).view(np.uint64)
            h += (block * mult[col:col + p.shape[1]]).sum(1, dtype=np.uint64)
            col += p.shape[1]
        out[lo:lo + chunk] = h
    return out


def cross_split_duplicates(splits: dict) -> dict[str, int]:
    """For each pair of splits "a/b" (train/valid, train/test, valid/test): how many samples of
    split a are exact copies of a sample of split b (all of :data:`ROW_FIELDS` equal). ``splits``:
    split name -> :class:`LazySplit` or dict of canonical arrays.

    Candidate pairs come from :func:`row_hashes`, and are confirmed by comparing the rows
    themselves, so the counts are exact. A sample in two splits is a leak (the model is evaluated
    on a row it was trained or selected on).
    """
    hashes = {name: row_hashes(a) for name, a in splits.items()}
    names = [n for n in SPLITS if n in splits]
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = np.intersect1d(hashes[a], hashes[b])
            n_copies = 0
            if common.size:
                rows = {}
                for name in (a, b):
                    cand = np.flatnonzero(np.isin(hashes[name], common))
                    m = np.concatenate(_row_parts(splits[name], cand), 1)
                    rows[name] = np.ascontiguousarray(m).view(np.dtype((np.void, m.shape[1] * 8))).ravel()
                n_copies = int(np.isin(rows[a], rows[b]).sum())
            out[f"{a}/{b}"] = n_copies
    return out


def _carried(values: np.ndarray) -> np.ndarray:
    """``values`` without :data:`ABSENT` (a field a row does not carry is no vocabulary value)."""
    return values[values != ABSENT]


def _encode_columns(values: np.ndarray, vocabs: list[np.ndarray]) -> np.ndarray:
    """[N, C] raw codes -> [N, C] indices, column c with ``vocabs[c]`` ([N, 0] when C = 0)."""
    if not vocabs:
        return np.zeros((values.shape[0], 0), np.int64)
    return np.stack([encode(values[:, c], v) for c, v in enumerate(vocabs)], 1)
