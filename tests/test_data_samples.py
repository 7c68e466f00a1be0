"""The rules of PROTOCOL section 1 on small tables: histories, vocabularies, positive rate.

Every check compares the vectorised builder with a brute-force reference written out in loops.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.nn.contract import OOV
from bench.data.sources import amazon
from bench.data.sources.common import DataError
from bench.data.samples import ProtocolParams, SampleTable, build, decode, gather_history, history_bounds
from datagen import beauty_rows



def reference_history(table: SampleTable, i: int, max_len: int) -> list[int]:
    """Raw item ids of sample i's behaviours by brute force: the user's events with time < the
    sample's time, in the given event order (stable sort by time), the most recent max_len."""
    ev = [(table.event_time[e], e) for e in range(len(table.event_user))
          if table.event_user[e] == table.user_key[i] and table.event_time[e] < table.time[i]]
    ev.sort()
    return [int(table.event_item[e]) for _, e in ev][-max_len:]


def decoded_history(built, table: SampleTable, split: str) -> list[list[int]]:
    """Raw item ids (OOV -> -1) of each sample's behaviours, padding dropped, oldest first."""
    vocab = built.vocabs[f"item.{table.item_fields[0]}"]
    a = built.splits[split]
    ids = decode(a["hist"][..., 0].astype(np.int64), vocab)
    return [list(row[m]) for row, m in zip(ids, a["hist_mask"])]


@pytest.mark.parametrize("max_len", [3, 50])
@pytest.mark.parametrize("which", ["ml", "beauty"])
def test_history_strictly_earlier_most_recent_and_left_padded(which, max_len, ml_table, beauty_table):
    table = ml_table if which == "ml" else beauty_table
    built = build(table, ProtocolParams(max_len=max_len))
    vocab = built.vocabs[f"item.{table.item_fields[0]}"]
    n_tie_excluded = 0
    for code, split in enumerate(("train", "valid", "test")):
        rows = np.flatnonzero(table.split == code)
        got = decoded_history(built, table, split)
        mask = built.splits[split]["hist_mask"]
        assert len(got) == len(rows)
        for i, g in zip(rows, got):
            want = [v if v in vocab else -1 for v in reference_history(table, i, max_len)]
            assert g == want
            same_time = (table.event_user == table.user_key[i]) & (table.event_time == table.time[i])
            n_tie_excluded += int(same_time.sum()) - 1  # minus the sample's own event
        # left padding: a real behaviour is never followed by padding
        assert not (mask[:, :-1] & ~mask[:, 1:]).any()
        assert (built.splits[split]["hist"][~mask] == 0).all()
    assert n_tie_excluded > 0  # the data does hold same-time events the rule had to exclude


@pytest.mark.parametrize("which", ["ml", "beauty"])
def test_candidate_never_in_its_own_history(which, ml_table, beauty_table):
    built = build(ml_table if which == "ml" else beauty_table, ProtocolParams())
    for a in built.splits.values():
        same = (a["hist"][..., 0] == a["item"][:, :1]) & a["hist_mask"] & (a["item"][:, :1] != OOV)
        assert not same.any()


def test_repeated_user_item_event_is_an_error(ml_table):
    t = ml_table
    later = int(np.argmax(t.time))  # give this sample's user an earlier rating of the same item
    extra = dataclasses.replace(
        t,
        event_user=np.append(t.event_user, t.user_key[later]),
        event_item=np.append(t.event_item, t.item[later]),
        event_time=np.append(t.event_time, t.time[later] - 1),
    )
    with pytest.raises(DataError, match="own behaviour sequence"):
        build(extra, ProtocolParams())


def test_vocabularies_fitted_on_train_only(ml_table):
    t = ml_table
    built = build(t, ProtocolParams())
    train = t.split == 0
    assert list(built.vocabs["user.user_id"]) == sorted(set(t.user_key[train]))
    # every item field: train candidates plus the behaviours of train samples
    start, end = history_bounds(t.event_user, t.event_time, t.user_key, t.time)
    in_train_hist = {int(t.event_item[e]) for s, en in zip(start[train], end[train]) for e in range(s, en)}
    assert set(built.vocabs["item.movie_id"]) == set(t.item[train]) | in_train_hist
    for k, f in enumerate(built.schema.item_fields):
        assert f.vocab_size == len(built.vocabs[f"item.{f.name}"]) + 2
    # values first seen after train map to OOV (1), and only those
    for code, split in ((1, "valid"), (2, "test")):
        rows = t.split == code
        unseen_user = ~np.isin(t.user_key[rows], t.user_key[train])
        assert ((built.splits[split]["user"][:, 0] == OOV) == unseen_user).all()
        unseen_item = ~np.isin(t.item[rows], built.vocabs["item.movie_id"])
        assert ((built.splits[split]["item"][:, 0] == OOV) == unseen_item).all()
        if split == "test":  # the synthetic data has a user and a movie first seen in test
            assert unseen_user.sum() == 3 and unseen_item.sum() == 2
    assert (built.splits["train"]["item"] >= 2).all() and (built.splits["train"]["user"] >= 2).all()


def test_item_table_rows_match_the_candidates(beauty_table):
    built = build(beauty_table, ProtocolParams())
    table = built.item_table
    assert (table[0] == 0).all() and (table[1] == OOV).all()
    assert table.shape == (built.schema.item_fields[0].vocab_size, len(built.schema.item_fields))
    for a in built.splits.values():
        assert (table[a["item"][:, 0]][a["item"][:, 0] >= 2] == a["item"][a["item"][:, 0] >= 2]).all()
        h = a["hist"][a["hist_mask"]]
        assert (table[h[:, 0]][h[:, 0] >= 2] == h[h[:, 0] >= 2]).all()


@pytest.mark.parametrize("split_code, name", [(1, "valid"), (2, "test"), (0, "train")])
def test_positive_rate_outside_0_1_is_an_error(ml_table, split_code, name):
    label = ml_table.label.copy()
    label[ml_table.split == split_code] = 1.0
    with pytest.raises(DataError, match=f"{name} split has positive rate 1.000"):
        build(dataclasses.replace(ml_table, label=label), ProtocolParams())
    label[ml_table.split == split_code] = 0.0
    with pytest.raises(DataError, match=f"{name} split has positive rate 0.000"):
        build(dataclasses.replace(ml_table, label=label), ProtocolParams())


def test_gather_history_hand_computed():
    pos, mask = gather_history(np.array([0, 2, 5, 7]), np.array([3, 2, 9, 7]), max_len=2)
    assert mask.tolist() == [[True, True], [False, False], [True, True], [False, False]]
    assert pos[mask].tolist() == [1, 2, 7, 8]
    start, end = history_bounds(np.array([1, 1, 1, 2]), np.array([5, 7, 7, 1]),
                                np.array([1, 1, 2, 3]), np.array([7, 8, 1, 9]))
    assert start.tolist() == [0, 0, 3, 4] and end.tolist() == [1, 3, 3, 4]  # ties (t=7, t=1) excluded


def test_amazon_pairs_split_context_and_negatives(beauty_table):
    t = beauty_table
    seqs, gaps, _ = beauty_rows()
    n_samples = 2 * sum(len(s) - 1 for s in seqs)
    assert len(t.label) == n_samples
    assert (t.label[0::2] == 1).all() and (t.label[1::2] == 0).all()
    for a in ("user_key", "time", "split"):  # positive and its negative share everything but the item
        assert (getattr(t, a)[0::2] == getattr(t, a)[1::2]).all()
    assert (t.context[0::2] == t.context[1::2]).all()
    i = 0
    for u, (s, g) in enumerate(zip(seqs, gaps), 1):
        days = np.cumsum(g) // 86_400
        for pos in range(1, len(s)):
            assert t.user_key[i] == u and t.item[i] == s[pos]
            assert t.item[i + 1] not in s  # the negative: never reviewed by this user
            assert t.split[i] == (2 if pos == len(s) - 1 else 1 if pos == len(s) - 2 else 0)
            gap = days[pos] - days[pos - 1]
            want_gap = 0 if gap == 0 else 1 if gap == 1 else 2 if gap <= 7 else 3 if gap <= 30 else 4 if gap <= 180 else 5
            want_pos = 0 if pos == 1 else 1 if pos == 2 else 2 if pos <= 4 else 3 if pos <= 8 else 4 if pos <= 16 else 5
            assert t.context[i].tolist() == [want_gap, want_pos]
            i += 2


def test_negative_sampling_is_seeded_and_rejects_reviewed_items():
    rng_items = np.random.default_rng(0)
    user = np.repeat(np.arange(50), 20)
    reviewed = np.unique(np.arange(50)[:, None] * 30 + rng_items.integers(0, 30, (50, 25))).astype(np.int64)
    a = amazon.sample_negatives(user, reviewed, 30, np.random.default_rng(7))
    b = amazon.sample_negatives(user, reviewed, 30, np.random.default_rng(7))
    assert (a == b).all()
    assert not np.isin(user * 30 + a, reviewed).any()
    with pytest.raises(DataError, match="negative sampling"):
        amazon.sample_negatives(np.zeros(3, np.int64), np.arange(4, dtype=np.int64), 4, np.random.default_rng(0))
