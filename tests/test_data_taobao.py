"""taobao-ad (issue 16): Tianchi's raw files and TaobaoAd_x1, the leakage rules, malformed files, the CLI.

The folders are written by the test from the real rows of ``../shared/datasets/taobao-ad-sample/``
(:mod:`datagen_taobao`), a few hundred impressions: every test runs in seconds.
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
from bench.data.samples import ABSENT, ProtocolParams, build, decode, encode
from bench.data.sources import taobao
from bench.data.sources.common import DataError
from cli import cli
from datagen_taobao import (DAY, DAY0, LATE_CATE, SAMPLE_DIR, TIE_CATE, taobao_world, write_tianchi, write_x1,
                            x1_frames)

pytestmark = pytest.mark.skipif(not (SAMPLE_DIR / "train_sample.csv").is_file(),
                                reason=f"the shared Taobao format fixture is absent ({SAMPLE_DIR})")

BTAG = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}


@pytest.fixture(scope="module")
def world():
    return taobao_world()


@pytest.fixture(scope="module")
def tianchi_dir(world, tmp_path_factory):
    return write_tianchi(tmp_path_factory.mktemp("tianchi"), world)


@pytest.fixture(scope="module")
def x1_dir(world, tmp_path_factory):
    return write_x1(tmp_path_factory.mktemp("x1"), world)


@pytest.fixture(scope="module")
def tianchi_built(tianchi_dir):
    raw = taobao.acquire("taobao-ad", tianchi_dir, tianchi_dir)
    table = taobao.sample_table("taobao-ad", raw, ProtocolParams())
    return table, build(table, ProtocolParams())


def oracle_histories(world, table, max_len=50, strict=True):
    """Each sample's behaviours by brute force: the user's log events before the impression
    (strictly, or at or before it when ``strict`` is False), ties in (btag, cate, brand) order, the
    last ``max_len``: [N] lists of (cate, brand, btag) raw tuples, in table order."""
    log = world.log.assign(t=world.log.time_stamp.astype(np.int64), b=world.log.btag.map(BTAG),
                           c=world.log.cate.astype(np.int64), r=world.log.brand.astype(np.int64))
    log = log.sort_values(["user", "t", "b", "c", "r"], kind="stable")
    by_user = {int(u): g for u, g in log.groupby("user")}
    out = []
    for u, t in zip(table.user_key, table.time):
        g = by_user.get(int(u))
        if g is None:
            out.append([])
            continue
        g = g[(g.t < t) if strict else (g.t <= t)].tail(max_len)
        out.append(list(zip(g.c, g.r, g.b)))
    return out


def encoded_history(hists, vocabs, max_len=50):
    """[N, T, 3] (category, brand, btag) indices, left-padded, of raw tuples through ``vocabs``."""
    out = np.zeros((len(hists), max_len, 3), np.int64)
    for n, h in enumerate(hists):
        if h:
            raw = np.array(h, np.int64)
            out[n, max_len - len(h):] = np.stack([encode(raw[:, k], vocabs[k]) for k in range(3)], 1)
    return out


def in_split_order(table, values):
    return {name: [values[i] for i in np.flatnonzero(table.split == code)] for code, name in enumerate(samples.SPLITS)}


# --------------------------------------------------------------------------- the Tianchi form

def test_tianchi_folder_prepares_four_groups_and_the_day_split(tianchi_dir, world, tmp_path):
    info = data.prepare("taobao-ad", tmp_path, tianchi_dir)
    ds = data.load_prepared("taobao-ad", tmp_path)
    assert ds.protocol == "taobao-ad-v1" and info.path.name.startswith("taobao-ad-v1-")
    assert [f.name for f in ds.schema.item_fields] == list(taobao.ITEM_FIELDS)
    assert [f.name for f in ds.schema.user_fields] == ["user_id", *taobao.PROFILE_FIELDS]
    assert [f.name for f in ds.schema.context_fields] == ["pid", "hour", "weekday"]
    # 60 impressions a day: 05-06 .. 05-11 train, 05-12 validation, 05-13 test
    assert info.counts == {"train": 360, "valid": 60, "test": 60}
    # behaviours carry category, brand and btag only; the other item fields are padding (0)
    carried = [taobao.ITEM_FIELDS.index(f) for f in taobao.BEHAVIOUR_FIELDS]
    others = [i for i in range(len(taobao.ITEM_FIELDS)) if i not in carried]
    real = ds.train.hist[ds.train.hist_mask]
    assert (real[:, others] == 0).all() and (real[:, carried] >= 1).all()
    # the item table shows each ad as a behaviour would (DIEN's negatives): the same zeros
    assert (ds.item_table[2:, others] == 0).all() and (ds.item_table[2:, carried] >= 1).all()
    # the candidate's btag is pv; its category shares the behaviours' vocabulary (one table)
    pv = encode(np.array([BTAG["pv"]]), ds.vocabs["item.btag"])[0]
    assert (ds.train.item[:, 6] == pv).all()
    ads = world.ads.set_index("adgroup_id")
    cand_ad = decode(ds.train.item[:, 0].numpy(), ds.vocabs["item.adgroup_id"])
    cand_cat = decode(ds.train.item[:, 1].numpy(), ds.vocabs["item.category"])
    assert (cand_cat == ads.cate_id.reindex(cand_ad.astype(str)).astype(np.int64).to_numpy()).all()
    # the ad missing a brand (NULL) and the user without a profile row: their own "missing" value
    assert taobao.MISSING in ds.vocabs["item.brand"]
    assert taobao.MISSING in ds.vocabs["user.age_level"]
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["raw_kind"] == "tianchi" and meta["stats"]["dataset"]["users"] == 24  # the log-only user is not read


def test_history_holds_only_strictly_earlier_behaviours_most_recent_50(tianchi_built, world):
    table, built = tianchi_built
    vocabs = [built.vocabs[f"item.{f}"] for f in taobao.BEHAVIOUR_FIELDS]
    cols = [taobao.ITEM_FIELDS.index(f) for f in taobao.BEHAVIOUR_FIELDS]
    strict = in_split_order(table, oracle_histories(world, table))
    loose = in_split_order(table, oracle_histories(world, table, strict=False))
    n_full = 0
    for name, arrays in built.splits.items():
        got = arrays["hist"][..., cols].astype(np.int64)
        assert (got == encoded_history(strict[name], vocabs)).all(), name
        assert (arrays["hist_mask"] == (got[..., 0] != 0)).all()
        n_full += int(arrays["hist_mask"].all(1).sum())
        # the oracle has teeth: events in the impression's own second would change some histories
        if name == "train":
            assert (got != encoded_history(loose[name], vocabs)).any()
    assert n_full > 0  # some histories were cut to the most recent 50
    # the category logged only in impressions' own seconds is history of later impressions only
    tie = encode(np.array([TIE_CATE]), built.vocabs["item.category"])[0]
    assert tie >= 2


def test_vocabularies_are_fitted_on_the_training_split_only(tianchi_built, world):
    table, built = tianchi_built
    train = table.split == samples.TRAIN
    tr = built.splits["train"]
    for f, name in enumerate(taobao.ITEM_FIELDS):
        cand = table.item_attrs[samples.lookup_rows(table.item[train], table.item_attrs[:, 0], "ads"), f]
        hist = decode(tr["hist"][..., f][tr["hist_mask"]].astype(np.int64), built.vocabs[f"item.{name}"])
        hist = hist[hist != -2]  # index 0 in a real slot: a field the behaviours do not carry
        assert not (hist == -1).any()  # no training behaviour is out of vocabulary
        expected = np.unique(np.concatenate([cand, hist]))
        assert np.array_equal(built.vocabs[f"item.{name}"], expected[expected != ABSENT]), name
    for j, name in enumerate(table.user_fields):
        assert np.array_equal(built.vocabs[f"user.{name}"], np.unique(table.user[train, j])), name
    for k, name in enumerate(table.context_fields):
        assert np.array_equal(built.vocabs[f"context.{name}"], np.unique(table.context[train, k])), name
    test = built.splits["test"]
    # an ad and a user first seen on the test day, a category logged after the last validation
    # impression: out of vocabulary (1) in test, absent from every vocabulary
    ad_raw = decode(test["item"][:, 0].astype(np.int64), built.vocabs["item.adgroup_id"])
    assert int(world.test_only_ad) not in built.vocabs["item.adgroup_id"]
    assert (test["item"][table.item[table.split == 2] == int(world.test_only_ad), 0] == 1).all()
    assert (ad_raw == -1).sum() >= 3
    assert int(world.test_only_user) not in built.vocabs["user.user_id"]
    assert (test["user"][test["user_index"] == int(world.test_only_user), 0] == 1).all()
    assert LATE_CATE not in built.vocabs["item.category"]
    late = in_split_order(table, [any(c == LATE_CATE for c, _, _ in h) for h in oracle_histories(world, table)])
    assert sum(late["test"]) > 0 and not any(late["train"]) and not any(late["valid"])
    assert (test["hist"][np.array(late["test"]), :, 1] == 1).any(1).all()


def test_every_impression_is_in_exactly_one_split_by_its_day(tianchi_built, world):
    table, built = tianchi_built
    day = (world.samples.time_stamp.to_numpy() - DAY0) // DAY  # 0 = 2017-05-06 (UTC+8)
    expected = np.where(day == 7, 2, np.where(day == 6, 1, 0))
    order = np.lexsort((world.samples.time_stamp, world.samples.user.astype(np.int64)))
    # table rows: sorted by user and time; each impression once, in the split of its day
    assert len(table.split) == len(world.samples)
    assert np.array_equal(np.sort(table.time), np.sort(world.samples.time_stamp.to_numpy()))
    assert np.array_equal(table.split, expected[order])
    assert sum(len(a["label"]) for a in built.splits.values()) == len(world.samples)
    # the day split leaves no impression that is both earlier and later than another split's
    assert table.time[table.split == 0].max() < table.time[table.split == 1].min()
    assert table.time[table.split == 1].max() < table.time[table.split == 2].min()
    assert set(samples.cross_split_duplicates(built.splits)) == {"train/valid", "train/test", "valid/test"}


def test_impressions_outside_the_eight_days_are_dropped_with_a_warning(world, tmp_path, caplog):
    w = taobao_world()
    extra = w.samples.iloc[:2].assign(time_stamp=[DAY0 - 10, DAY0 + 8 * DAY])  # 05-05 and 05-14
    w.samples = pd.concat([w.samples, extra], ignore_index=True)
    folder = write_tianchi(tmp_path / "raw", w)
    with caplog.at_level("WARNING"):
        info = data.prepare("taobao-ad", tmp_path / "data", folder)
    assert info.counts == {"train": 360, "valid": 60, "test": 60}
    assert "2 impressions outside 2017-05-06 .. 05-13" in caplog.text


def test_the_log_read_in_chunks_in_any_order_gives_the_same_dataset(tianchi_dir, world, tmp_path, monkeypatch):
    whole = data.prepare("taobao-ad", tmp_path / "a", tianchi_dir)
    monkeypatch.setattr(taobao, "CHUNK_ROWS", 37)  # every file read in many chunks, trimmed many times
    shuffled = write_tianchi(tmp_path / "raw", world)
    log = pd.read_csv(shuffled / "behavior_log.csv", dtype=str, keep_default_na=False)
    log.iloc[::-1].to_csv(shuffled / "behavior_log.csv", index=False)
    chunked = data.prepare("taobao-ad", tmp_path / "b", shuffled)
    assert chunked.fingerprint == whole.fingerprint


def test_trim_keeps_the_most_recent_events_before_the_first_impression():
    users, first_t = np.array([1, 2]), np.array([100, 50])
    ev = {"user": np.array([1, 1, 1, 1, 2, 2, 1]), "time": np.array([10, 20, 30, 100, 60, 40, 150]),
          "btag": np.ones(7, np.int64), "cate": np.arange(7), "brand": np.zeros(7, np.int64)}
    out = taobao.trim_events(ev, users, first_t, max_len=2)
    # user 1: 20, 30 (the last 2 before 100), then 100 and 150; user 2: 40 (before 50), 60
    assert out["time"].tolist() == [20, 30, 100, 150, 40, 60]


# --------------------------------------------------------------------------- TaobaoAd_x1

def test_x1_folder_holds_the_same_samples_with_validation_the_last_seventh(x1_dir, tianchi_built, tmp_path):
    info = data.prepare("taobao-ad", tmp_path, x1_dir)
    ds = data.load_prepared("taobao-ad", tmp_path)
    assert [f.name for f in ds.schema.context_fields] == ["pid"]  # no time column in TaobaoAd_x1
    assert info.counts == {"train": 360, "valid": 60, "test": 60}  # 420 train.csv rows: the last 60 validation
    assert json.loads((info.path / "meta.json").read_text())["raw_kind"] == "taobaoad-x1"
    table, built = tianchi_built
    assert ds.schema.item_fields == built.schema.item_fields and ds.schema.user_fields == built.schema.user_fields

    def rows(arrays):
        n = len(arrays["label"])
        m = np.concatenate([np.asarray(arrays[f]).reshape(n, -1).astype(np.int64)
                            for f in ("user_index", "label", "item", "hist", "user")], 1)
        return m[np.lexsort(m.T[::-1])]

    for name in samples.SPLITS:  # the same impressions, candidates, histories and users
        assert np.array_equal(rows(ds.split(name)), rows(built.splits[name])), name


def test_x1_history_of_a_row_is_its_published_lists_cut_to_max_len(world, tmp_path):
    folder = write_x1(tmp_path / "raw", world)
    raw = taobao.acquire("taobao-ad", folder, folder)
    table = taobao.sample_table("taobao-ad", raw, ProtocolParams(max_len=5))
    built = build(table, ProtocolParams(max_len=5))
    train, _ = x1_frames(world)
    first = train.iloc[0]
    cates = [int(c) for c in first.cate_his.split("^")][-5:]
    got = decode(built.splits["train"]["hist"][0, :, 1].astype(np.int64), built.vocabs["item.category"])
    assert got[-len(cates):].tolist() == cates  # the row is sample 0 of train (file order kept)
    assert table.history_key is not None and (table.time > table.event_time.max()).all()


def test_x1_without_btag_his_reads_category_and_brand_only(world, tmp_path):
    folder = write_x1(tmp_path / "raw", world)
    for f in ("train.csv", "test.csv"):
        pd.read_csv(folder / f, dtype=str, keep_default_na=False).drop(columns=["btag_his", "btag"]).to_csv(
            folder / f, index=False)
    data.prepare("taobao-ad", tmp_path / "data", folder)
    ds = data.load_prepared("taobao-ad", tmp_path / "data")
    assert ds.schema.item_fields[6].vocab_size == 2 and (ds.train.item[:, 6] == 0).all()
    assert (ds.train.hist[..., 6] == 0).all() and (ds.train.hist[..., 1][ds.train.hist_mask] >= 1).all()


# --------------------------------------------------------------------------- bad inputs: one clear error

def _edit(folder, name, fn):
    path = folder / name
    path.write_text(fn(path.read_text()))


def _csv_edit(column, value, row=3):
    def fn(text):
        df = pd.read_csv(pd.io.common.StringIO(text), dtype=str, keep_default_na=False)
        df.loc[row, column] = value
        return df.to_csv(index=False)
    return fn


def _drop(column):
    def fn(text):
        df = pd.read_csv(pd.io.common.StringIO(text), dtype=str, keep_default_na=False)
        return df.drop(columns=[c for c in df.columns if c.strip() == column]).to_csv(index=False)
    return fn


TIANCHI_FAULTS = {
    "raw_sample missing clk": ("raw_sample.csv", _drop("clk"), r"raw_sample.csv: column 'clk' is missing; expected the columns user, time_stamp"),
    "raw_sample bad timestamp": ("raw_sample.csv", _csv_edit("time_stamp", "2017-05-06 08:55:10"),
                                 r"raw_sample.csv: line 5, column 'time_stamp' is '2017-05-06 08:55:10'; expected a Unix time in whole seconds"),
    "raw_sample clk 2": ("raw_sample.csv", _csv_edit("clk", "2"), r"raw_sample.csv: line 5, column 'clk' is '2'; expected 0 or 1"),
    "ad_feature empty": ("ad_feature.csv", lambda t: "", r"ad_feature.csv: empty file \(no header line\)"),
    "ad_feature missing price": ("ad_feature.csv", _drop("price"), r"ad_feature.csv: column 'price' is missing"),
    "ad_feature bad price": ("ad_feature.csv", _csv_edit("price", "cheap"), r"ad_feature.csv: line 5, column 'price' is 'cheap'; expected a number"),
    "user_profile semicolons": ("user_profile.csv", lambda t: t.replace(",", ";"),
                                r"user_profile.csv: column 'userid' is missing \(the header line 'userid;cms_segid.* is not "
                                r"comma-separated: expected ',' as the delimiter\)"),
    "user_profile twice": ("user_profile.csv", lambda t: t + t.splitlines()[1] + "\n", r"user_profile.csv: column 'userid' lists \d+ twice"),
    "behavior_log tabs": ("behavior_log.csv", lambda t: t.replace(",", "\t"), r"behavior_log.csv: column 'user' is missing \(the header line .* not comma-separated"),
    "behavior_log bad timestamp": ("behavior_log.csv", _csv_edit("time_stamp", "1494.5e6x"),
                                   r"behavior_log.csv: line 5, column 'time_stamp' is '1494.5e6x'; expected a Unix time"),
    "behavior_log bad btag": ("behavior_log.csv", _csv_edit("btag", "click"), r"behavior_log.csv: line 5, column 'btag' is 'click'; expected one of pv, cart, fav, buy"),
    "behavior_log header only": ("behavior_log.csv", lambda t: t.splitlines()[0] + "\n", r"behavior_log.csv: no data rows after the header"),
    "behavior_log ragged": ("behavior_log.csv", lambda t: t.replace("\n", ",1,2\n", 3).replace(",1,2\n", "\n", 1),
                            r"behavior_log.csv: not a well-formed comma-separated file"),
}


def _one_error_naming_the_file(source, fault, tmp_path) -> None:
    """Prepare a copy of ``source`` with ``fault`` = (file name, edit, error pattern) applied: one
    single-line DataError matching the pattern and naming the file."""
    name, fn, match = fault
    folder = tmp_path / "raw"
    shutil.copytree(source, folder)
    _edit(folder, name, fn)
    with pytest.raises(DataError, match=match) as err:
        data.prepare("taobao-ad", tmp_path / "data", folder)
    assert str(folder / name) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", TIANCHI_FAULTS, ids=list(TIANCHI_FAULTS))
def test_a_malformed_tianchi_file_gets_one_error_naming_file_and_column(case, tianchi_dir, tmp_path):
    _one_error_naming_the_file(tianchi_dir, TIANCHI_FAULTS[case], tmp_path)
    assert not (tmp_path / "data" / "taobao-ad").exists()  # nothing written


X1_FAULTS = {
    "train missing cate_his": ("train.csv", _drop("cate_his"), r"train.csv: column 'cate_his' is missing"),
    "test bad history value": ("test.csv", _csv_edit("cate_his", "12^x^7"), r"test.csv: line 5, column 'cate_his' holds 'x'; expected integers joined by '\^'"),
    "train histories of unequal length": ("train.csv", _csv_edit("brand_his", "1^2"),
                                          r"train.csv: line 5, column 'brand_his' has 2 values and 'cate_his' \d+"),
    "test empty": ("test.csv", lambda t: "", r"test.csv: empty file"),
    "train semicolons": ("train.csv", lambda t: t.replace(",", ";"), r"train.csv: column 'clk' is missing \(the header line .* not comma-separated"),
    "train bad user": ("train.csv", _csv_edit("userid", "u17"), r"train.csv: line 5, column 'userid' is 'u17'; expected an integer"),
}


@pytest.mark.parametrize("case", X1_FAULTS, ids=list(X1_FAULTS))
def test_a_malformed_x1_file_gets_one_error_naming_file_and_column(case, x1_dir, tmp_path):
    _one_error_naming_the_file(x1_dir, X1_FAULTS[case], tmp_path)


def test_missing_files_name_what_is_expected_and_where_to_get_it(tianchi_dir, x1_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no Taobao files; taobao-ad has no download .*raw_sample.csv.*"
                                        r"tianchi.aliyun.com/dataset/56.*train.csv and test.csv.*reczoo/TaobaoAd_x1"):
        data.prepare("taobao-ad", tmp_path / "data", empty)
    with pytest.raises(DataError, match=r"no Taobao files.*or pass --raw-dir"):
        data.prepare("taobao-ad", tmp_path / "data")  # nothing in <data>/raw/taobao-ad/
    three = tmp_path / "three"
    shutil.copytree(tianchi_dir, three)
    (three / "behavior_log.csv").unlink()
    with pytest.raises(DataError, match=r"three/behavior_log.csv: file not found; taobao-ad needs all four"):
        data.prepare("taobao-ad", tmp_path / "data", three)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(x1_dir / "train.csv", half / "train.csv")
    with pytest.raises(DataError, match=r"half/test.csv: file not found; taobao-ad needs TaobaoAd_x1"):
        data.prepare("taobao-ad", tmp_path / "data", half)
    both = tmp_path / "both"
    shutil.copytree(tianchi_dir, both)
    for f in ("train.csv", "test.csv"):
        shutil.copy(x1_dir / f, both / f)
    with pytest.raises(DataError, match=r"holds both Tianchi's raw files and TaobaoAd_x1"):
        data.prepare("taobao-ad", tmp_path / "data", both)


def test_the_demo_form_of_the_shared_fixture_is_refused_by_name(tmp_path):
    with pytest.raises(DataError, match=r"taobao-ad-sample: holds FuxiCTR's demo form \(train_sample.csv, click_sequence "
                                        r"of ad ids\), which taobao-ad does not read"):
        data.prepare("taobao-ad", tmp_path, SAMPLE_DIR)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(SAMPLE_DIR / "train_sample.csv", renamed / "train.csv")
    shutil.copy(SAMPLE_DIR / "test_sample.csv", renamed / "test.csv")
    with pytest.raises(DataError, match=r"renamed/train.csv: column 'cate_his' is missing \(this is FuxiCTR's demo form"):
        data.prepare("taobao-ad", tmp_path / "data", renamed)


def test_cli_prepare_prints_one_error_line(tianchi_dir, tmp_path):
    folder = tmp_path / "raw"
    shutil.copytree(tianchi_dir, folder)
    _edit(folder, "raw_sample.csv", _drop("clk"))
    res = CliRunner().invoke(cli, ["prepare", "taobao-ad", "--raw-dir", str(folder), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "raw_sample.csv: column 'clk' is missing" in errors[0]


# --------------------------------------------------------------------------- end to end from the CLI

def _invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_main_table_runs_end_to_end_on_a_tianchi_folder(tianchi_dir, tmp_path):
    results = tmp_path / "results"
    _invoke("reproduce", "--table", "main", "--dataset", "taobao-ad", "--raw-dir", tianchi_dir,
            "--data-dir", tmp_path / "data", "--results-dir", results, "--models", "lr,din,dien,mian",
            "--seeds", 1, "--set", "train.max_epochs=1", "--workers", 1)
    tables = list((results / "taobao-ad").rglob("main_table.csv"))
    assert len(tables) == 1
    table = pd.read_csv(tables[0])
    assert len(table) == 4 and table.astype(str).apply(lambda c: c.str.contains("nan")).sum().sum() == 0
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["model"] for r in records) == ["dien", "din", "lr", "mian"]
    assert {r["dataset"] for r in records} == {"taobao-ad"} and {r["protocol"] for r in records} == {"taobao-ad-v1"}


@pytest.mark.parametrize("model", ["din", "mian"])
def test_train_runs_end_to_end_on_an_x1_folder(model, x1_dir, tmp_path):
    res = _invoke("train", "--model", model, "--dataset", "taobao-ad", "--raw-dir", x1_dir, "--seed", 0,
                  "--data-dir", tmp_path / "data", "--results-dir", tmp_path / "results",
                  "--set", "train.max_epochs=1")
    record = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*.json")]
    assert len(record) == 1 and record[0]["model"] == model and record[0]["dataset"] == "taobao-ad"
    assert 0.0 <= record[0]["test"]["auc"] <= 1.0, res.output


@pytest.mark.parametrize("form", ["tianchi", "x1"])
def test_fast_and_exact_readers_give_the_same_dataset(form, tianchi_dir, x1_dir, tmp_path, monkeypatch, caplog):
    folder = tianchi_dir if form == "tianchi" else x1_dir
    with caplog.at_level("INFO"):
        fast = data.prepare("taobao-ad", tmp_path / "fast", folder)
    assert "reading the file again" not in caplog.text  # the fast reader took every file of it
    monkeypatch.setattr(taobao, "FAST_READER", False)
    exact = data.prepare("taobao-ad", tmp_path / "exact", folder)
    assert fast.fingerprint == exact.fingerprint


def test_values_only_the_exact_reader_accepts_are_read_alike(tianchi_dir, tmp_path, caplog):
    """Ids written as floats and spaces around values: the fast reader refuses the file, the exact
    one reads it, to the same dataset."""
    folder = tmp_path / "raw"
    shutil.copytree(tianchi_dir, folder)
    _edit(folder, "raw_sample.csv", lambda t: t.replace(",", " , ").replace("\n", ".0\n").replace("clk.0\n", "clk\n"))
    with caplog.at_level("INFO"):
        info = data.prepare("taobao-ad", tmp_path / "data", folder)
    assert "raw_sample.csv" in caplog.text and "reading the file again with the exact reader" in caplog.text
    assert info.fingerprint == data.prepare("taobao-ad", tmp_path / "data2", tianchi_dir).fingerprint
