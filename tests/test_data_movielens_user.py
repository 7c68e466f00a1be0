"""movielens-100k-user (ml100k-user-ctr-v1, issue 14): MovieLens 100K split per user.

On small raw files written here (and on the real files when the data folder holds them): every
validation / test user has training rows, each user's rows are ordered train < valid < test in
(timestamp, movie_id) with the sizes of the rounding rule, no history holds an event at or after
its sample's time, and the dataset has its own protocol, cache and fingerprint while reading the
raw files of movielens-100k (no second download, nothing of movielens-100k's cache touched).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench import data
from bench.data import samples
from bench.data.sources import common, movielens
from bench.data.samples import ProtocolParams, decode
from bench.nn.contract import BATCH_FIELDS
from datagen import ml100k_frames, ml100k_spec, write_ml100k_files

NAME, PROTOCOL = "movielens-100k-user", "ml100k-user-ctr-v1"


def varied_frames(seed: int = 0):
    """A tiny ML-100K whose users have 1 to 45 ratings (same-second ties included): the synthetic
    frames of datagen with, per user, a random number of its ratings kept."""
    ratings, users, items = ml100k_frames(n_users=40, n_items=60, per_user=45, seed=seed)
    rng = np.random.default_rng(seed)
    keep_n = dict(zip(users.user_id, rng.integers(3, 46, len(users))))
    keep_n[1], keep_n[2] = 1, 2  # too few to split: all train
    rank = ratings.groupby("user_id").cumcount()
    ratings = ratings[rank < ratings.user_id.map(keep_n)].reset_index(drop=True)
    return ratings, users, items


@pytest.fixture
def frames(monkeypatch):
    f = varied_frames()
    monkeypatch.setitem(movielens.SPECS, "movielens-100k", ml100k_spec(f))
    return f


@pytest.fixture
def data_dir(frames, tmp_path, monkeypatch):
    """A data folder holding the tiny raw files where movielens-100k keeps its downloads; any
    download attempt fails the test."""
    def no_download(*args, **kwargs):
        raise AssertionError(f"unexpected download {args[:1]}")

    monkeypatch.setattr(common, "urlopen", no_download)
    write_ml100k_files(tmp_path / "data" / "raw" / "movielens-100k", frames)
    return tmp_path / "data"


def expected_split(ratings: pd.DataFrame) -> pd.Series:
    """The rule, written out per user with a loop: of n ratings in (timestamp, movie_id) order the
    last h = max(1, round half up of n / 10) are test, the h before validation (n < 3: all train)."""
    out = {}
    for user, g in ratings.sort_values(["timestamp", "movie_id"]).groupby("user_id"):
        n = len(g)
        h = 0 if n < 3 else max(1, int(np.floor(n / 10 + 0.5)))
        codes = [0] * (n - 2 * h) + [1] * h + [2] * h
        out.update({(user, m): c for m, c in zip(g.movie_id, codes)})
    return pd.Series(out)


# --------------------------------------------------------------------------- the split rule

@pytest.mark.parametrize("n, h", [(1, 0), (2, 0), (3, 1), (14, 1), (15, 2), (20, 2), (24, 2), (25, 3),
                                  (34, 3), (35, 4), (737, 74)])
def test_holdout_size_rounds_a_tenth_half_up_with_at_least_one(n, h):
    assert movielens.holdout_size(np.array([n]))[0] == h
    assert h == (0 if n < 3 else max(1, int(np.floor(n / 10 + 0.5))))


def test_split_per_user_follows_the_rule_and_every_held_out_user_has_training_rows(frames, tmp_path):
    ratings, _, _ = frames
    raw = movielens.acquire(NAME, write_ml100k_files(tmp_path / "raw", frames), tmp_path / "dl")
    t = movielens.sample_table(NAME, raw, ProtocolParams())
    got = pd.Series(t.split, index=pd.MultiIndex.from_arrays([t.user_key, t.item]))
    want = expected_split(ratings)
    assert (got.sort_index() == want.sort_index()).all() and len(got) == len(ratings)

    df = pd.DataFrame({"user": t.user_key, "ts": t.time, "movie": t.item, "split": t.split})
    counts = pd.crosstab(df.user, df.split).reindex(columns=[0, 1, 2], fill_value=0)
    n = counts.sum(axis=1)
    h = np.where(n < 3, 0, np.maximum(1, np.floor(n / 10 + 0.5))).astype(int)
    assert (counts[1] == h).all() and (counts[2] == h).all() and (counts[0] == n - 2 * h).all()
    assert (counts.loc[counts[2] > 0, 0] > 0).all() and (counts.loc[counts[1] > 0, 0] > 0).all()
    assert (counts[2] > 0).sum() == len(counts) - 2  # users 1 (one rating) and 2 (two): train only
    assert h.max() >= 4 and len(set(h)) >= 3  # the draw exercises several holdout sizes

    # per user, train < valid < test in (timestamp, movie_id), ties broken by movie_id
    key = df.ts * 10_000 + df.movie
    first, last = key.groupby([df.user, df.split]).min().unstack(), key.groupby([df.user, df.split]).max().unstack()
    held = counts[2] > 0
    assert (last.loc[held, 0] < first.loc[held, 1]).all() and (last.loc[held, 1] < first.loc[held, 2]).all()
    tied = df.groupby(["user", "ts"]).split.nunique()
    assert (tied > 1).any()  # a same-second group straddles a boundary: the movie_id order decides

    # everything but the split is movielens-100k's table
    base = movielens.sample_table("movielens-100k", raw, ProtocolParams())
    for f in ("item_attrs", "event_user", "event_item", "event_time", "user_key", "item", "time", "user",
              "context", "label"):
        assert np.array_equal(getattr(t, f), getattr(base, f)), f
    assert not np.array_equal(t.split, base.split)


def test_no_history_holds_an_event_at_or_after_its_sample(data_dir):
    """Each sample's history, decoded, is the user's ratings strictly earlier than it (the most
    recent 50, oldest first); an item out of the vocabulary must be one that training never saw."""
    data.prepare(NAME, data_dir)
    ds = data.load_prepared(NAME, data_dir)
    ratings = movielens.read_ml100k(movielens.acquire(NAME, None, data_dir / "raw" / "movielens-100k")).ratings
    when = ratings.set_index(["user_id", "movie_id"]).timestamp
    by_user = {u: g.sort_values(["timestamp", "movie_id"]) for u, g in ratings.groupby("user_id")}
    vocab = ds.vocabs["item.movie_id"]
    T, checked = ds.schema.max_len, 0
    for name in samples.SPLITS:
        split = ds.split(name)
        items = decode(split.item[:, 0].numpy(), vocab)
        hist = decode(split.hist[..., 0].numpy(), vocab)
        for i, user in enumerate(split.user_index.tolist()):
            g = by_user[user]
            if items[i] < 0:  # an OOV candidate: which rating it is cannot be read back
                continue
            t = when[(user, items[i])]
            earlier = g[g.timestamp < t].movie_id.to_numpy()[-T:]
            mask = split.hist_mask[i].numpy()
            assert mask.sum() == len(earlier)
            got = hist[i][mask]
            known = got >= 0
            assert np.array_equal(got[known], earlier[known])
            assert not np.isin(earlier[~known], vocab).any()
            assert (when.loc[[(user, m) for m in got[known]]].to_numpy() < t).all()
            checked += 1
    assert checked > 0.95 * sum(len(ds.split(s)) for s in samples.SPLITS)


# --------------------------------------------------------------------------- cache, protocol, CLI

def test_own_cache_protocol_and_fingerprint_reading_movielens_100k_raw_files(data_dir):
    info = data.prepare(NAME, data_dir)
    assert info.protocol == PROTOCOL and data.DATASETS[NAME] == PROTOCOL and data.raw_name(NAME) == "movielens-100k"
    assert info.path.parent == data_dir / NAME and info.path.name.startswith(PROTOCOL + "-")
    assert (data_dir / NAME / "LATEST").read_text().strip() == info.path.name
    assert not (data_dir / "movielens-100k").exists()  # movielens-100k's cache is not touched
    assert sorted(p.name for p in (data_dir / "raw").iterdir()) == ["movielens-100k"]  # no second raw folder
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["protocol"] == PROTOCOL and meta["name"] == NAME
    assert {s: meta["stats"]["splits"][s]["users_seen_in_train"] for s in samples.SPLITS} == dict.fromkeys(
        samples.SPLITS, 1.0)

    base = data.prepare("movielens-100k", data_dir)
    assert base.fingerprint != info.fingerprint and base.path.parent == data_dir / "movielens-100k"
    before = {p.name: p.read_bytes() for p in (data_dir / "movielens-100k").rglob("*") if p.is_file()}
    again = data.prepare(NAME, data_dir)
    assert again.cache_hit and again.fingerprint == info.fingerprint
    assert {p.name: p.read_bytes() for p in (data_dir / "movielens-100k").rglob("*") if p.is_file()} == before
    ds = data.load_prepared(NAME, data_dir)
    assert ds.protocol == PROTOCOL and ds.fingerprint == info.fingerprint
    # every validation and test user has a known user id (vocabulary fitted on train)
    assert all(int((ds.split(s).user[:, 0] == 1).sum()) == 0 for s in ("valid", "test"))
    assert (data.load_prepared("movielens-100k", data_dir).test.user[:, 0] == 1).any()  # the global split has cold users


def test_disjointness_is_checked_and_only_warned_under_this_protocol(data_dir, caplog):
    """check_disjoint runs for the new protocol; it is not a DISJOINT protocol (feature-equal
    valid/test samples of same-second OOV movies are possible, docs/DATA.md), so a copy is a warning."""
    assert PROTOCOL not in data.DISJOINT_PROTOCOLS
    data.prepare(NAME, data_dir)
    ds = data.load_prepared(NAME, data_dir)
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in samples.SPLITS}
    for f in ("label", "item", "hist", "hist_mask", "user", "context"):
        arrays["test"][f][0] = arrays["valid"][f][0]
    with caplog.at_level("WARNING"):
        counts = data.check_disjoint(NAME, PROTOCOL, arrays)
    assert counts["valid/test"] >= 1 and "kept as they are under ml100k-user-ctr-v1" in caplog.text


def test_config_has_the_hyper_parameters_of_movielens_100k():
    from bench.training.config import config_path, load_dataset_config, resolve_config
    from bench.training.registry import MODEL_NAMES

    assert config_path(NAME).is_file()
    assert load_dataset_config(NAME) == load_dataset_config("movielens-100k")
    for model in MODEL_NAMES:
        for curves in (False, True):
            assert resolve_config(NAME, model, curves=curves) == resolve_config("movielens-100k", model, curves=curves)


def test_cli_prepare_reproduce_and_report(data_dir, tmp_path):
    from cli import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["prepare", NAME, "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    assert f"{NAME} ({PROTOCOL}): prepared" in out.output and "users seen in train" in out.output
    rows = [line for line in out.output.splitlines() if line.startswith(("| train", "| valid", "| test"))]
    assert len(rows) == 3 and all("| 100.0 %" in r for r in rows)

    results = tmp_path / "results"
    args = ["--dataset", NAME, "--data-dir", str(data_dir), "--results-dir", str(results), "--workers", "1"]
    out = runner.invoke(cli, ["reproduce", "--seeds", "1", "--models", "lr", *args])  # the protocol config: report keeps it
    assert out.exit_code == 0, out.output
    [record] = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert (record["dataset"], record["protocol"]) == (NAME, PROTOCOL)
    assert list((results / NAME).rglob("main_table.md"))
    out = runner.invoke(cli, ["report", "--results-dir", str(results)])
    assert out.exit_code == 0, out.output
    assert f"## {NAME}" in (results / "CLAIMS.md").read_text()


# --------------------------------------------------------------------------- real data

REAL_COUNTS = {"train": 79_926, "valid": 10_037, "test": 10_037}


@pytest.mark.realdata
def test_real_ml100k_per_user_split(tmp_path):
    """On the real files of the data folder (raw/movielens-100k/, as the project fetches them):
    the statistics of docs/DATA.md, the rule per user, and the CLI finding the files by itself."""
    folder = data.default_data_dir() / "raw" / "movielens-100k"
    if movielens._find("movielens-100k", folder) is None:
        pytest.skip(f"real MovieLens 100K files not found in {folder} (set MIAN_DATA_DIR)")
    shutil.copytree(folder, tmp_path / "data" / "raw" / "movielens-100k")
    from cli import cli

    out = CliRunner().invoke(cli, ["prepare", NAME, "--data-dir", str(tmp_path / "data")])
    assert out.exit_code == 0, out.output
    assert "train 79,926, valid 10,037, test 10,037" in out.output
    info = data.prepare(NAME, tmp_path / "data")
    assert info.cache_hit and info.counts == REAL_COUNTS
    st = info.stats
    assert [st[s]["users"] for s in samples.SPLITS] == [943, 943, 943]
    assert all(st[s]["users_seen_in_train"] == 1.0 and st[s]["user_oov_rate"] == 0.0 for s in samples.SPLITS)
    assert [round(st[s]["positive_rate"], 4) for s in samples.SPLITS] == [0.5729, 0.4809, 0.4743]

    ds = data.load_prepared(NAME, tmp_path / "data")
    n = pd.Series(np.concatenate([ds.split(s).user_index.numpy() for s in samples.SPLITS])).value_counts()
    h = movielens.holdout_size(n.to_numpy())
    for s, want in (("train", n.to_numpy() - 2 * h), ("valid", h), ("test", h)):
        got = pd.Series(ds.split(s).user_index.numpy()).value_counts().reindex(n.index, fill_value=0)
        assert np.array_equal(got.to_numpy(), want), s
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in samples.SPLITS}
    # two feature-equal valid/test samples: same-second ratings of user 863 of three movies unseen in training
    assert samples.cross_split_duplicates(arrays) == {"train/valid": 0, "train/test": 0, "valid/test": 2}
