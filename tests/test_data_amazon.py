"""Amazon: Beauty (raw dir, commit-pinned download, sha256), Books/Electronics format, real data."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from bench import data
from bench.data.sources import amazon, common
from bench.data.sources.common import DataError
from bench.nn.contract import BATCH_FIELDS
from bench.data.samples import ProtocolParams, build, cross_split_duplicates, decode
from conftest import AMAZON_BEAUTY_DIR
from datagen import beauty_bytes, beauty_rows, pin_beauty, serve, write_beauty, write_mcauley

DAY = 86_400


@pytest.fixture
def beauty_files():
    return beauty_bytes(*beauty_rows())


def test_beauty_from_raw_dir(beauty_files, tmp_path, monkeypatch):
    folder = write_beauty(tmp_path / "raw", beauty_files, monkeypatch)
    info = data.prepare("amazon-beauty", tmp_path / "data", folder)
    ds = data.load_prepared("amazon-beauty", tmp_path / "data")
    seqs, _, cats = beauty_rows()
    assert ds.protocol == "amazon-ctr-v2" and ds.fingerprint == info.fingerprint  # the default protocol
    assert info.path.name.startswith("amazon-ctr-v2-")
    assert [f.name for f in ds.schema.item_fields] == ["item_id", "category"]
    assert [f.name for f in ds.schema.user_fields] == ["user_id"]
    assert [f.name for f in ds.schema.context_fields] == ["gap", "position"]
    assert len(ds.valid) == len(ds.test) == 2 * len(seqs)  # one pair per user each (leave-last-out)
    assert ds.stats["dataset"]["users"] == len(seqs) and ds.stats["dataset"]["events"] == sum(map(len, seqs))
    for split in (ds.train, ds.valid, ds.test):
        assert split.label.mean().item() == 0.5
    # category = LAST attribute id; no entry / empty list -> its own "missing" value
    vocab_item, vocab_cat = ds.vocabs["item.item_id"], ds.vocabs["item.category"]
    table = ds.item_table.numpy()
    raw_item = decode(np.arange(2, len(table)), vocab_item)
    raw_cat = decode(table[2:, 1], vocab_cat)
    for i, c in zip(raw_item, raw_cat):
        assert c == (cats[i][-1] if cats.get(i) else -1)


def test_beauty_download_route_is_commit_pinned(beauty_files, tmp_path, monkeypatch):
    pin_beauty(beauty_files, monkeypatch)
    urls = {src.url: beauty_files[fname] for fname, src in amazon.S3REC_FILES["amazon-beauty"].values()}
    for url in urls:
        assert url.startswith("https://raw.githubusercontent.com/")
        assert "/49a890dcb516c9ed3126564495234ea74d5cd566/" in url or "/38b4ff7243b527a4b8843090ce080ca533a9e3c6/" in url
    calls: list[str] = []
    monkeypatch.setattr(common, "urlopen", serve(urls, calls))
    info = data.prepare("amazon-beauty", tmp_path)
    assert sorted(calls) == sorted(urls)
    raw = tmp_path / "raw" / "amazon-beauty"
    assert sorted(p.name for p in raw.iterdir()) == sorted(beauty_files)
    again = data.prepare("amazon-beauty", tmp_path)
    assert again.cache_hit and len(calls) == 3 and again.fingerprint == info.fingerprint
    # the same files given as --raw-dir prepare the same dataset
    assert data.prepare("amazon-beauty", tmp_path / "other", raw).fingerprint == info.fingerprint


def test_beauty_download_with_wrong_sha256_leaves_nothing(beauty_files, tmp_path, monkeypatch):
    pin_beauty(beauty_files, monkeypatch)
    urls = {src.url: beauty_files[fname] for fname, src in amazon.S3REC_FILES["amazon-beauty"].values()}
    url = amazon.S3REC_FILES["amazon-beauty"]["sequences"][1].url
    urls[url] = urls[url][:-10]  # a truncated transfer
    monkeypatch.setattr(common, "urlopen", serve(urls))
    with pytest.raises(DataError, match=r"Beauty.txt: downloaded file has sha256 .*, expected"):
        data.prepare("amazon-beauty", tmp_path)
    assert not (tmp_path / "raw" / "amazon-beauty" / "Beauty.txt").exists()
    assert not list((tmp_path / "raw" / "amazon-beauty").glob("*.part"))


def test_beauty_unreachable_host_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "urlopen", serve({}))
    with pytest.raises(DataError, match=r"raw.githubusercontent.com.*download failed.*--raw-dir"):
        data.prepare("amazon-beauty", tmp_path)


@pytest.mark.parametrize("case, match", [
    ("missing", r"Beauty_time_intervals.txt: file not found; expected the S3-Rec Beauty files"),
    ("wrong_sha", r"Beauty.txt: sha256 is .*, expected 226cce9c3105299c"),
    ("bad_gaps", r"Beauty_time_intervals.txt: expected one line per line of Beauty.txt"),
    ("not_json", r"Beauty_item2attributes.json: expected a JSON object"),
])
def test_malformed_beauty_inputs(case, match, beauty_files, tmp_path, monkeypatch):
    folder = write_beauty(tmp_path / "raw", beauty_files, monkeypatch)
    if case == "missing":
        (folder / "Beauty_time_intervals.txt").unlink()
    elif case == "wrong_sha":
        monkeypatch.undo()  # back to the real pins: the tiny files cannot match them
    else:
        name = "Beauty_time_intervals.txt" if case == "bad_gaps" else "Beauty_item2attributes.json"
        changed = dict(beauty_files)
        changed[name] = changed[name].replace(b"\t0 ", b"\t", 1) if case == "bad_gaps" else b"[1, 2"
        write_beauty(folder, changed, monkeypatch)
    with pytest.raises(DataError, match=match) as err:
        data.prepare("amazon-beauty", tmp_path / "data", folder)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the other S3-Rec sets

S3REC = "49a890dcb516c9ed3126564495234ea74d5cd566"
TIMEWEAVER = "38b4ff7243b527a4b8843090ce080ca533a9e3c6"
#: issue 16: upstream file -> sha256 of the two new sets (and Beauty's of SOURCES.md, unchanged)
PINS = {
    "amazon-beauty": ("Beauty", "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                      "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
                      "ace27f3acb2528e9b7cfb8e5c459070f5888cfc3edab4cd219e595c5be1c87b8"),
    "amazon-sports": ("Sports_and_Outdoors", "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
                      "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b",
                      "ddb1aa29e0934a3e7230022b8361785e7518e760180c492579c3c506b6bb5bfb"),
    "amazon-toys": ("Toys_and_Games", "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
                    "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0",
                    "43325e20ba6257feda220e3577cd619ff3d15fac1a6798fc3b3cc31e3d85f3be"),
}
NEW_SETS = ["amazon-sports", "amazon-toys"]


@pytest.mark.parametrize("name", sorted(PINS))
def test_s3rec_sets_are_pinned_to_the_two_repositories(name):
    stem, seq, attr, gaps = PINS[name]
    base = "https://raw.githubusercontent.com/"
    assert {role: (fname, src.url, src.sha256) for role, (fname, src) in amazon.S3REC_FILES[name].items()} == {
        "sequences": (f"{stem}.txt", f"{base}aHuiWang/CIKM2020-S3Rec/{S3REC}/data/{stem}.txt", seq),
        "attributes": (f"{stem}_item2attributes.json",
                       f"{base}aHuiWang/CIKM2020-S3Rec/{S3REC}/data/{stem}_item2attributes.json", attr),
        "intervals": (f"{stem}_time_intervals.txt", f"{base}AraVio/TimeWeaver/{TIMEWEAVER}/data/{stem}.txt", gaps),
    }
    assert data.DATASETS[name] == "amazon-ctr-v2" and amazon.S3REC_SETS[name] == stem


@pytest.mark.parametrize("name", NEW_SETS)
def test_other_s3rec_sets_follow_beautys_code_path(name, tmp_path, monkeypatch):
    """The same rows as Sports or Toys files give Beauty's arrays, fields and protocol, in a cache of
    their own; the category is the last attribute id as for Beauty."""
    rows = beauty_rows(n_users=25, n_items=35, seed=3)
    stem = amazon.S3REC_SETS[name]
    files = beauty_bytes(*rows, stem=stem)
    folder = write_beauty(tmp_path / "raw", files, monkeypatch, name)
    info = data.prepare(name, tmp_path / "data", folder)
    ds = data.load_prepared(name, tmp_path / "data")
    assert info.path.parent == tmp_path / "data" / name and info.path.name.startswith("amazon-ctr-v2-")
    assert ds.protocol == "amazon-ctr-v2" and ds.fingerprint == info.fingerprint
    assert [f.name for f in ds.schema.item_fields] == ["item_id", "category"]
    assert [f.name for f in ds.schema.user_fields] == ["user_id"]
    assert [f.name for f in ds.schema.context_fields] == ["gap", "position"]
    assert len(ds.valid) == len(ds.test) == 2 * len(rows[0])
    assert ds.stats["dataset"]["events"] == sum(map(len, rows[0]))

    beauty = write_beauty(tmp_path / "beauty", beauty_bytes(*rows), monkeypatch)
    ref = data.load_prepared("amazon-beauty", tmp_path / "data", beauty)
    for split in ("train", "valid", "test"):
        for f in BATCH_FIELDS:
            assert np.array_equal(getattr(ds.split(split), f).numpy(), getattr(ref.split(split), f).numpy()), (split, f)
    assert np.array_equal(ds.item_table.numpy(), ref.item_table.numpy())
    assert ds.fingerprint == ref.fingerprint  # the content, not the name (schema and arrays)
    raw = amazon.acquire(name, folder, folder)
    assert raw.kind == f"s3rec-{name.removeprefix('amazon-')}" and sorted(p.name for p in raw.paths.values()) == sorted(files)
    assert amazon.acquire("amazon-beauty", beauty, beauty).kind == "s3rec-beauty"  # Beauty's cache key unchanged


@pytest.mark.parametrize("name", NEW_SETS)
def test_other_s3rec_sets_download_route(name, tmp_path, monkeypatch):
    files = beauty_bytes(*beauty_rows(seed=5), stem=amazon.S3REC_SETS[name])
    pin_beauty(files, monkeypatch, name)
    urls = {src.url: files[fname] for fname, src in amazon.S3REC_FILES[name].values()}
    calls: list[str] = []
    monkeypatch.setattr(common, "urlopen", serve(urls, calls))
    info = data.prepare(name, tmp_path)
    assert sorted(calls) == sorted(urls) and len(calls) == 3
    raw = tmp_path / "raw" / name
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)
    again = data.prepare(name, tmp_path)
    assert again.cache_hit and len(calls) == 3 and again.fingerprint == info.fingerprint
    assert data.prepare(name, tmp_path / "other", raw).fingerprint == info.fingerprint
    # a truncated transfer of one file: refused by its sha256, nothing left behind
    stem = amazon.S3REC_SETS[name]
    bad = dict(urls)
    url = amazon.S3REC_FILES[name]["intervals"][1].url
    bad[url] = bad[url][:-7]
    monkeypatch.setattr(common, "urlopen", serve(bad))
    with pytest.raises(DataError, match=rf"TimeWeaver/.*/data/{stem}.txt: downloaded file has sha256 .*, expected"):
        data.prepare(name, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "raw" / name / f"{stem}_time_intervals.txt").exists()
    assert not list((tmp_path / "fresh" / "raw" / name).glob("*.part"))


@pytest.mark.parametrize("name", NEW_SETS)
def test_other_s3rec_sets_bad_inputs_name_the_file(name, tmp_path, monkeypatch):
    stem, seq_sha = amazon.S3REC_SETS[name], PINS[name][1]
    files = beauty_bytes(*beauty_rows(), stem=stem)
    folder = tmp_path / "raw"
    folder.mkdir()
    for fname, b in files.items():
        (folder / fname).write_bytes(b)
    with pytest.raises(DataError, match=rf"{stem}.txt: sha256 is .*, expected {seq_sha[:16]}"):  # the real pins
        data.prepare(name, tmp_path / "data", folder)
    pin_beauty(files, monkeypatch, name)
    (folder / f"{stem}_item2attributes.json").unlink()
    with pytest.raises(DataError, match=rf"{stem}_item2attributes.json: file not found; expected the S3-Rec "
                                        rf"{stem} files {stem}.txt, {stem}_item2attributes.json, "
                                        rf"{stem}_time_intervals.txt in --raw-dir"):
        data.prepare(name, tmp_path / "data", folder)
    monkeypatch.setattr(common, "urlopen", serve({}))
    with pytest.raises(DataError, match=rf"raw.githubusercontent.com.*download failed.*--raw-dir.*{stem}.txt"):
        data.prepare(name, tmp_path / "dl")
    assert not (tmp_path / "data" / name / "LATEST").exists()


@pytest.mark.parametrize("name", NEW_SETS)
def test_other_s3rec_sets_have_beautys_config_and_are_listed_by_the_cli(name):
    from click.testing import CliRunner

    from bench.training.config import config_path, load_dataset_config, resolve_config
    from bench.training.registry import MODEL_NAMES
    from cli import cli

    assert config_path(name).is_file()
    assert load_dataset_config(name) == load_dataset_config("amazon-beauty")
    for model in MODEL_NAMES:
        for curves in (False, True):
            assert resolve_config(name, model, curves=curves) == resolve_config("amazon-beauty", model, curves=curves)
    for command in (["prepare", "--help"], ["train", "--help"]):
        out = CliRunner().invoke(cli, command)
        assert out.exit_code == 0 and name in out.output
    out = CliRunner().invoke(cli, ["prepare", "amazon-sportz"])
    assert out.exit_code == 2 and name in out.output  # the refusal lists the valid names


# --------------------------------------------------------------------------- Books / Electronics

def mcauley_rows():
    reviews, meta = [], []
    t0 = 1_300_000_000 // DAY * DAY
    plan = {  # reviewer -> [(asin, day offset)]; ties on purpose, one repeated review of B3
        "A1": [("B1", 0), ("B2", 0), ("B3", 2), ("B4", 9), ("B3", 20), ("B5", 40)],
        "A2": [("B2", 5), ("B1", 1), ("B5", 7), ("B6", 7), ("B4", 100)],
        "A3": [("B6", 0), ("B5", 3), ("B3", 3), ("B1", 200), ("B2", 300)],
        "A4": [("B4", 1), ("B3", 2), ("B2", 4), ("B7", 8), ("B1", 16)],
    }
    for user, items in plan.items():
        for asin, d in items:
            reviews.append({"reviewerID": user, "asin": asin, "reviewerName": "x", "helpful": [0, 0],
                            "reviewText": "it's \"fine\"", "overall": 4.0, "summary": "ok",
                            "unixReviewTime": t0 + d * DAY, "reviewTime": "01 1, 2011"})
    cats = {"B1": [["Books", "Literature & Fiction", "Poetry"]], "B2": [["Books", "Children's Books"]],
            "B3": [["Books", "History"], ["Kindle", "Other"]], "B4": [["Books"]], "B5": [], "B6": [["Books", "History"]]}
    for asin, c in cats.items():  # B7 has no metadata line; X9 is not reviewed
        meta.append({"asin": asin, "title": f"T {asin}", "related": {"also_bought": ["X1"]}, "categories": c})
    meta.append({"asin": "X9", "categories": [["Books", "Other"]]})
    return plan, reviews, meta, t0


@pytest.mark.parametrize("seed", range(3))
def test_repeats_earlier_is_pandas_duplicated_in_rank_order(seed):
    import pandas as pd

    rng = np.random.default_rng(seed)
    keys, item = rng.integers(0, 3, (400, 3)), rng.integers(0, 4, 400)
    rank = rng.permutation(400)
    order = np.argsort(rank)
    want = np.zeros(400, bool)
    want[order] = pd.DataFrame(keys).assign(item=item).iloc[order].duplicated(keep="first").to_numpy()
    assert want.any() and np.array_equal(amazon.repeats_earlier(keys, item, rank), want)


def test_mcauley_reviews_read_in_small_chunks_give_the_same_reviews(tmp_path):
    """Issue 16: each review chunk keeps only integer codes; any chunk size gives the same result."""
    plan, reviews, meta, t0 = mcauley_rows()
    folder = write_mcauley(tmp_path / "raw", "Books", reviews, meta)
    raw = amazon.acquire("amazon-books", folder, tmp_path / "dl")
    want = amazon.read_mcauley(raw, chunk_lines=10**6)
    for chunk in (1, 3, 7):
        got = amazon.read_mcauley(raw, chunk_lines=chunk)
        for f in ("user", "item", "day", "unix_time", "item_ids", "categories"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), (chunk, f)


@pytest.mark.parametrize("name, cat", [("amazon-books", "Books"), ("amazon-electronics", "Electronics")])
def test_mcauley_format_from_a_tiny_file(name, cat, tmp_path):
    plan, reviews, meta, t0 = mcauley_rows()
    folder = write_mcauley(tmp_path / "raw", cat, reviews, meta)
    r = amazon.read_mcauley(amazon.acquire(name, folder, tmp_path / "dl"))
    users = sorted(plan)
    asins = sorted({a for items in plan.values() for a, _ in items})
    assert r.item_ids.tolist() == list(range(len(asins)))
    want_cat = {"B1": "Poetry", "B2": "Children's Books", "B3": "History", "B4": "Books", "B6": "History"}
    names = sorted(set(want_cat.values()))
    assert [int(c) for c in r.categories] == [names.index(want_cat[a]) if a in want_cat else -1 for a in asins]

    t = amazon.amazon_table(name, r, data_seed=1)
    assert t.context_fields == ("gap", "position", "weekday")
    # per user: reviews by time (ties by asin), the repeated (A1, B3) dropped
    for u, user in enumerate(users):
        items = sorted({a: d for a, d in reversed(plan[user])}.items(), key=lambda x: (x[1], x[0]))
        pos = t.label == 1
        got = [asins[i] for i in t.item[pos & (t.user_key == u)]]
        assert got == [a for a, _ in items[1:]]
        days = [d for _, d in items[1:]]
        weekdays = [((t0 + d * DAY) // DAY + 3) % 7 for d in days]
        assert t.context[pos & (t.user_key == u), 2].tolist() == weekdays
        assert t.split[pos & (t.user_key == u)].tolist() == [0] * (len(items) - 3) + [1, 2]
    built = build(t, ProtocolParams())
    assert built.schema.context_fields[2].name == "weekday"
    info = data.prepare(name, tmp_path / "data", folder)
    assert info.protocol == "amazon-ctr-v2" and sum(info.counts.values()) == len(t.label)


def test_mcauley_corrupt_or_missing_files(tmp_path):
    plan, reviews, meta, _ = mcauley_rows()
    folder = write_mcauley(tmp_path / "raw", "Books", reviews, meta)
    good = (folder / "reviews_Books_5.json.gz").read_bytes()
    (folder / "reviews_Books_5.json.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"reviews_Books_5.json.gz: not gzipped JSON lines of reviews"):
        data.prepare("amazon-books", tmp_path / "data", folder)
    with gzip.open(folder / "reviews_Books_5.json.gz", "wt") as f:
        f.write('{"reviewerID": "A1", "asin": "B1"}\n')
    with pytest.raises(DataError, match=r"reviews lack \['unixReviewTime'\]"):
        data.prepare("amazon-books", tmp_path / "data", folder)
    (folder / "meta_Books.json.gz").unlink()
    with pytest.raises(DataError, match=r"meta_Books.json.gz: file not found; amazon-books needs --raw-dir"):
        data.prepare("amazon-books", tmp_path / "data", folder)


# --------------------------------------------------------------------------- disjoint splits (v1, v2)

def colliding_beauty():
    """beauty_rows() plus two users whose last reviews share one day, so that several of their
    samples have the same history and context; each leaves 8 items unreviewed. With the data seed
    2021 the v1 negatives of user 31 repeat across train/test, those of user 32 across valid/test
    (the test asserts it)."""
    seqs, gaps, cats = beauty_rows()
    items = sorted({i for s in seqs for i in s})
    for k in (0, 24):
        seq = [i for i in items if i not in items[k:k + 8]]
        gap = [0] + [3 * DAY] * (len(seq) - 4) + [0, 0, 0]  # the last four reviews on one day
        seqs.append(seq)
        gaps.append(gap)
    return seqs, gaps, cats


def test_v1_keeps_cross_split_copies_with_one_warning(tmp_path, monkeypatch, caplog):
    folder = write_beauty(tmp_path / "raw", beauty_bytes(*colliding_beauty()), monkeypatch)
    monkeypatch.setitem(data.DATASETS, "amazon-beauty", "amazon-ctr-v1")  # selected explicitly (v2 is the default)
    with caplog.at_level("WARNING", logger="bench.data"):
        info = data.prepare("amazon-beauty", tmp_path / "data", folder)
    assert info.protocol == "amazon-ctr-v1"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "amazon-beauty (amazon-ctr-v1): samples of one split are exact copies" in warnings[0]
    assert "1 train/test, 1 valid/test" in warnings[0]
    ds = data.load_prepared("amazon-beauty", tmp_path / "data")
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in ("train", "valid", "test")}
    assert cross_split_duplicates(arrays) == {"train/valid": 0, "train/test": 1, "valid/test": 1}


def test_v2_redraws_only_the_colliding_negatives(tmp_path, monkeypatch, caplog):
    seqs, gaps, cats = colliding_beauty()
    folder = write_beauty(tmp_path / "raw", beauty_bytes(seqs, gaps, cats), monkeypatch)
    raw = amazon.acquire("amazon-beauty", folder, folder)
    v1 = amazon.sample_table("amazon-beauty", raw, ProtocolParams(), protocol="amazon-ctr-v1")
    v2 = amazon.sample_table("amazon-beauty", raw, ProtocolParams(), protocol="amazon-ctr-v2")
    changed = np.flatnonzero(v1.item != v2.item)
    assert len(changed) == 2 and (v1.label[changed] == 0).all()
    assert v1.user_key[changed].tolist() == [31, 32] and v1.split[changed].tolist() == [0, 1]  # test kept
    for i in changed:  # the new negative is one the user never reviewed
        assert v2.item[i] not in seqs[v1.user_key[i] - 1] and v2.item[i] != v1.item[i]
    for f in ("user_key", "time", "user", "context", "label", "split", "event_item", "item_attrs"):
        assert np.array_equal(getattr(v1, f), getattr(v2, f)), f

    monkeypatch.setitem(data.DATASETS, "amazon-beauty", "amazon-ctr-v1")
    v1_info = data.prepare("amazon-beauty", tmp_path / "data", folder)
    assert v1_info.path.name.startswith("amazon-ctr-v1-")
    monkeypatch.setitem(data.DATASETS, "amazon-beauty", "amazon-ctr-v2")
    caplog.clear()
    with caplog.at_level("WARNING", logger="bench.data"):
        info = data.prepare("amazon-beauty", tmp_path / "data", folder)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert info.protocol == "amazon-ctr-v2" and info.path.name.startswith("amazon-ctr-v2-")
    assert info.fingerprint != v1_info.fingerprint and (v1_info.path / "meta.json").is_file()
    ds = data.load_prepared("amazon-beauty", tmp_path / "data")
    assert ds.protocol == "amazon-ctr-v2" and ds.path == info.path
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in ("train", "valid", "test")}
    assert cross_split_duplicates(arrays) == {"train/valid": 0, "train/test": 0, "valid/test": 0}


def test_v2_refuses_splits_that_share_a_sample(tmp_path, monkeypatch):
    folder = write_beauty(tmp_path / "raw", beauty_bytes(*colliding_beauty()), monkeypatch)
    monkeypatch.setattr(amazon, "redraw_duplicate_negatives", lambda keys, split, neg, *a: (neg, 0))  # a broken fix
    monkeypatch.setitem(data.DATASETS, "amazon-beauty", "amazon-ctr-v2")
    with pytest.raises(DataError, match=r"^amazon-beauty \(amazon-ctr-v2\): samples of one split are exact copies of "
                                        r"samples of another \(.*\): 1 train/test, 1 valid/test; expected disjoint "
                                        r"splits under amazon-ctr-v2\.$"):
        data.prepare("amazon-beauty", tmp_path / "data", folder)
    assert not (tmp_path / "data" / "amazon-beauty" / "LATEST").exists()
    with pytest.raises(DataError, match=r"protocol 'amazon-ctr-v9': expected one of amazon-ctr-v1, amazon-ctr-v2"):
        amazon.sample_table("amazon-beauty", amazon.acquire("amazon-beauty", folder, folder), ProtocolParams(),
                            protocol="amazon-ctr-v9")


def test_cross_split_duplicates_counts_exact_copies_only():
    rng = np.random.default_rng(0)

    def split(n):
        return {"label": rng.integers(0, 2, n).astype(np.float32), "item": rng.integers(0, 50, (n, 2)),
                "hist": rng.integers(0, 50, (n, 4, 2)), "user": rng.integers(0, 9, (n, 1)),
                "context": rng.integers(0, 5, (n, 2)), "user_index": rng.integers(0, 9, n)}

    s = {name: split(100) for name in ("train", "valid", "test")}
    assert cross_split_duplicates(s) == {"train/valid": 0, "train/test": 0, "valid/test": 0}
    for f in ("label", "item", "hist", "user", "context"):
        s["test"][f][7] = s["train"][f][3]
        s["test"][f][8] = s["valid"][f][5]
    s["test"]["user_index"][7] = -5  # not part of a sample's identity
    s["valid"]["hist"][9] = s["train"]["hist"][9]  # equal history only: not a copy
    assert cross_split_duplicates(s) == {"train/valid": 0, "train/test": 1, "valid/test": 1}


# --------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_amazon_beauty_matches_sources_md(tmp_path):
    if not (AMAZON_BEAUTY_DIR / "Beauty.txt").is_file():
        pytest.skip(f"real Amazon Beauty files not found in {AMAZON_BEAUTY_DIR} (../shared beside the checkout)")
    info = data.prepare("amazon-beauty", tmp_path, AMAZON_BEAUTY_DIR)
    ds = data.load_prepared("amazon-beauty", tmp_path)
    totals = ds.stats["dataset"]
    assert (totals["users"], totals["items"], totals["events"]) == (22_363, 12_101, 198_502)  # SOURCES.md
    n_pairs = 198_502 - 22_363  # one positive and one negative per review after each user's first
    assert sum(info.counts.values()) == 2 * n_pairs
    assert info.counts["valid"] == info.counts["test"] == 2 * 22_363
    assert ds.schema.item_fields[0].vocab_size == 12_101 + 2 and ds.schema.user_fields[0].vocab_size == 22_363 + 2
    for split in (ds.train, ds.valid, ds.test):
        assert split.label.mean().item() == 0.5
        assert split.hist.dtype == split.item.dtype == split.user.dtype == split.context.dtype
        # no behaviour equals its candidate, and histories are left-padded
        assert not ((split.hist[..., 0] == split.item[:, :1]) & split.hist_mask).any()
        assert not (split.hist_mask[:, :-1] & ~split.hist_mask[:, 1:]).any()
    # the default protocol is amazon-ctr-v2: no sample in two splits (v1 has two copies, docs/DATA.md)
    assert ds.protocol == "amazon-ctr-v2"
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in ("train", "valid", "test")}
    assert cross_split_duplicates(arrays) == {"train/valid": 0, "train/test": 0, "valid/test": 0}


@pytest.mark.realdata
def test_real_amazon_beauty_v2_has_disjoint_splits_and_changes_only_two_negatives():
    if not (AMAZON_BEAUTY_DIR / "Beauty.txt").is_file():
        pytest.skip(f"real Amazon Beauty files not found in {AMAZON_BEAUTY_DIR} (../shared beside the checkout)")
    raw = amazon.acquire("amazon-beauty", AMAZON_BEAUTY_DIR, AMAZON_BEAUTY_DIR)
    reviews = amazon.read_s3rec(raw)
    v1 = amazon.amazon_table("amazon-beauty", reviews, 2021)
    v2 = amazon.amazon_table("amazon-beauty", reviews, 2021, disjoint=True)
    changed = np.flatnonzero(v1.item != v2.item)
    assert len(changed) == 2 and (v1.label[changed] == 0).all()
    assert sorted(v1.split[changed].tolist()) == [0, 1]  # the train and the valid copy; test kept as in v1
    built = build(v2, ProtocolParams())
    assert cross_split_duplicates(built.splits) == {"train/valid": 0, "train/test": 0, "valid/test": 0}


#: S3-Rec's Table 1 (Zhou et al., CIKM 2020): users, items, reviews of the two sets
S3REC_COUNTS = {"amazon-sports": (35_598, 18_357, 296_337), "amazon-toys": (19_412, 11_924, 167_597)}


@pytest.mark.realdata
@pytest.mark.parametrize("name", NEW_SETS)
def test_real_sports_and_toys_match_s3recs_counts(name, tmp_path):
    """For whoever has the files (sha256-pinned): $MIAN_SHARED_DIR/datasets/<name>/ with the three files."""
    folder = AMAZON_BEAUTY_DIR.parent / name
    stem = amazon.S3REC_SETS[name]
    if not (folder / f"{stem}.txt").is_file():
        pytest.skip(f"real {name} files not found in {folder} (this workplace reaches no GitHub host)")
    info = data.prepare(name, tmp_path, folder)
    ds = data.load_prepared(name, tmp_path)
    users, items, reviews = S3REC_COUNTS[name]
    totals = ds.stats["dataset"]
    assert (totals["users"], totals["items"], totals["events"]) == (users, items, reviews)
    assert sum(info.counts.values()) == 2 * (reviews - users) and info.counts["test"] == 2 * users
    arrays = {s: {f: getattr(ds.split(s), f).numpy() for f in BATCH_FIELDS} for s in ("train", "valid", "test")}
    assert cross_split_duplicates(arrays) == {"train/valid": 0, "train/test": 0, "valid/test": 0}
