"""The prepared-data cache: fingerprints, cache hits, atomicity, failures, loading, and the CLI."""
from __future__ import annotations

import csv
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench import data
from bench.data.sources import common
from bench.data.sources.common import DataError
from datagen import beauty_bytes, beauty_rows, serve, write_beauty

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def beauty_dir(tmp_path, monkeypatch) -> Path:
    return write_beauty(tmp_path / "raw", beauty_bytes(*beauty_rows()), monkeypatch)


def cache_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_two_prepares_same_fingerprint_byte_identical_and_cache_hit(beauty_dir, tmp_path, caplog):
    a = data.prepare("amazon-beauty", tmp_path / "a", beauty_dir)
    b = data.prepare("amazon-beauty", tmp_path / "b", beauty_dir)
    assert not a.cache_hit and not b.cache_hit
    assert a.fingerprint == b.fingerprint and a.path.name == b.path.name
    assert a.path.name.startswith("amazon-ctr-v2-") and a.path.parent == tmp_path / "a" / "amazon-beauty"
    assert cache_files(a.path) == cache_files(b.path)
    before = cache_files(a.path)
    with caplog.at_level(logging.INFO, logger="bench.data"):
        again = data.prepare("amazon-beauty", tmp_path / "a", beauty_dir)
    assert again.cache_hit and again.fingerprint == a.fingerprint and again.path == a.path
    assert "cache hit" in caplog.text
    assert cache_files(a.path) == before
    # the fingerprint is a hash of the canonical content: recompute it from the files, streamed ...
    assert data.cache_fingerprint(a.path) == a.fingerprint
    # ... and from the whole canonical arrays, materialised (the pre-issue-16 cache's arrays)
    ds = data.load_prepared("amazon-beauty", tmp_path / "a")
    ordered = {f"{s}.{f}": ds.split(s)[f] for s in ("train", "valid", "test")
               for f in ("item", "hist", "hist_mask", "user", "context", "label", "user_index")}
    ordered["item_table"] = np.load(a.path / "item_table.npy")
    ordered.update({f"vocab.{k}": np.load(a.path / f"vocab.{k}.npy") for k in sorted(ds.vocabs)})
    assert ordered["train.hist"].dtype == np.int32 and ordered["train.user_index"].dtype == np.int64
    assert data.fingerprint(ds.schema, ordered) == a.fingerprint


def test_force_rebuilds_in_place_with_the_same_fingerprint(beauty_dir, tmp_path):
    a = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    (a.path / "marker").write_text("old")
    b = data.prepare("amazon-beauty", tmp_path, beauty_dir, force=True)
    assert not b.cache_hit and b.path == a.path and b.fingerprint == a.fingerprint
    assert not (b.path / "marker").exists()
    assert sorted(p.name for p in (tmp_path / "amazon-beauty").iterdir()) == ["LATEST", a.path.name]


def test_interrupted_prepare_leaves_no_cache_and_a_rerun_completes(beauty_dir, tmp_path, monkeypatch):
    real_write = data._write_arrays

    def write_then_die(folder, built):
        np.save(folder / "train.item.npy", built.splits["train"]["item"])
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_write_arrays", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        data.prepare("amazon-beauty", tmp_path, beauty_dir)
    root = tmp_path / "amazon-beauty"
    assert list(root.iterdir()) == []  # neither a cache nor a temporary folder
    monkeypatch.setattr(common, "urlopen", serve({}))  # offline: nothing cached, nothing to download
    with pytest.raises(DataError, match="download failed"):
        data.load_prepared("amazon-beauty", tmp_path)

    # a prepare killed outright (no cleanup) leaves a temporary folder that the next one removes
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f".tmp-amazon-ctr-v2-0123~{dead.pid}~abc"
    stale.mkdir()
    (stale / "train.item.npy").write_bytes(b"half")
    monkeypatch.setattr(data, "_write_arrays", real_write)
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    assert not info.cache_hit and not stale.exists()
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", info.path.name]


@pytest.mark.parametrize("case", ["wrong_sha", "missing_file", "corrupt", "wrong_columns", "unknown_dataset"])
def test_a_failure_is_one_clear_error_and_keeps_the_earlier_cache(case, beauty_dir, tmp_path, monkeypatch):
    good = data.prepare("amazon-beauty", tmp_path / "data", beauty_dir)
    before = cache_files(good.path)
    latest = (tmp_path / "data" / "amazon-beauty" / "LATEST").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in beauty_dir.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    dataset = "amazon-beauty"
    if case == "wrong_sha":
        (bad / "Beauty.txt").write_bytes((bad / "Beauty.txt").read_bytes() + b"99 1 2\n")
        expect = r"Beauty.txt: sha256 is"
    elif case == "missing_file":
        (bad / "Beauty_item2attributes.json").unlink()
        expect = r"Beauty_item2attributes.json: file not found"
    elif case == "corrupt":  # a truncated file whose pin matches (so the parser meets it)
        files = {p.name: p.read_bytes() for p in bad.iterdir()}
        files["Beauty.txt"] = files["Beauty.txt"][: len(files["Beauty.txt"]) // 2]
        write_beauty(bad, files, monkeypatch)
        expect = r"Beauty_time_intervals.txt: expected one line per line of Beauty.txt"
    elif case == "wrong_columns":
        files = {p.name: p.read_bytes() for p in bad.iterdir()}
        files["Beauty.txt"] = files["Beauty.txt"].replace(b"\n", b" x\n", 1)
        write_beauty(bad, files, monkeypatch)
        expect = r"Beauty.txt: expected whitespace-separated integers"
    else:
        dataset, expect = "amazon-beuty", r"dataset 'amazon-beuty' is unknown; expected one of movielens-100k"
    with pytest.raises(DataError, match=expect) as err:
        data.prepare(dataset, tmp_path / "data", bad)
    assert "\n" not in str(err.value)
    assert cache_files(good.path) == before
    assert (tmp_path / "data" / "amazon-beauty" / "LATEST").read_text() == latest
    assert sorted(p.name for p in (tmp_path / "data" / "amazon-beauty").iterdir()) == ["LATEST", good.path.name]


def test_load_prepared_tensors_and_speed(beauty_dir, tmp_path):
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    t0 = time.perf_counter()
    ds = data.load_prepared("amazon-beauty", tmp_path)  # from LATEST, no raw dir needed
    assert time.perf_counter() - t0 < 2.0
    assert isinstance(ds, data.PreparedDataset) and ds.path == info.path and ds.name == "amazon-beauty"
    T = ds.schema.max_len
    for name in ("train", "valid", "test"):
        s = ds.split(name)
        n = len(s)
        assert s.item.dtype == s.hist.dtype == s.user.dtype == s.context.dtype == s.user_index.dtype == torch.int64
        assert s.hist_mask.dtype == torch.bool and s.label.dtype == torch.float32
        assert s.hist.shape == (n, T, ds.schema.n_item_fields) and s.hist_mask.shape == (n, T)
        assert s.user.shape == (n, ds.schema.n_user_fields) and s.context.shape == (n, ds.schema.n_context_fields)
        for group, fields in (("item", ds.schema.item_fields), ("user", ds.schema.user_fields),
                              ("context", ds.schema.context_fields)):
            x = getattr(s, group)
            assert (x.max(0).values < torch.tensor([f.vocab_size for f in fields])).all() and (x >= 1).all()
        assert set(s.user_index.tolist()) <= set(range(1, len(beauty_rows()[0]) + 1))  # the raw user keys
    assert ds.item_table.dtype == torch.int64 and ds.item_table.shape[0] == ds.schema.item_fields[0].vocab_size
    with pytest.raises(DataError, match="split 'dev'"):
        ds.split("dev")


@pytest.mark.parametrize("name", ["valid.hist_end.npy", "events.npy", "item_table.npy", "test.item.npy"])
def test_damaged_cache_file_is_a_clear_error(beauty_dir, tmp_path, name):
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    (info.path / name).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=rf"^{tmp_path}.*/{name}: damaged cache file.*--force\.$") as err:
        data.load_prepared("amazon-beauty", tmp_path)
    assert "\n" not in str(err.value)
    (info.path / name).unlink()
    with pytest.raises(DataError, match=rf"/{name}: damaged cache file .*No such file.*--force"):
        data.load_cache(info.path)


def test_modified_cache_array_is_named(beauty_dir, tmp_path):
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    labels = np.load(info.path / "train.label.npy")
    labels[:10] = 1 - labels[:10]  # a valid .npy with other content
    np.save(info.path / "train.label.npy", labels)
    with pytest.raises(DataError, match=r"train.label.npy: damaged cache file \(its sha256 differs from the one "
                                        r"meta.json recorded.*--force"):
        data.load_prepared("amazon-beauty", tmp_path)
    # prepare checks a cache it would reuse as every loader does: the damage, not "cache hit"
    with pytest.raises(DataError, match=r"train.label.npy: damaged cache file .*--force"):
        data.prepare("amazon-beauty", tmp_path, beauty_dir)
    data.prepare("amazon-beauty", tmp_path, beauty_dir, force=True)  # --force rebuilds it
    data.load_prepared("amazon-beauty", tmp_path)


def _reseal(path: Path, name: str, array: np.ndarray) -> None:
    """Write ``array`` as cache file ``name`` and record its sha256 in meta.json (a cache made by
    faulty code: intact files with wrong content)."""
    import json

    np.save(path / name, array)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][name] = common.sha256_file(path / name)
    (path / "meta.json").write_text(json.dumps(meta))


def test_cache_is_memory_mapped_and_batches_equal_the_canonical_arrays(beauty_dir, tmp_path):
    from bench.data.store import LazySplit

    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    ds = data.load_cache(info.path)
    for name in ("train", "valid", "test"):
        s = ds.split(name)
        assert isinstance(s, LazySplit) and isinstance(s.events, np.memmap)
        assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in s.arrays.values())
        whole = s.materialize()  # canonical arrays as int64 tensors, like the pre-issue-16 Split
        idx = torch.randperm(len(s), generator=torch.Generator().manual_seed(0))[:37]
        got, want = s.take(idx), whole.take(idx)
        for f in ("item", "hist", "hist_mask", "user", "context", "label", "user_index"):
            assert getattr(got, f).dtype == getattr(want, f).dtype and torch.equal(getattr(got, f), getattr(want, f)), f
    files = sorted(p.name for p in info.path.glob("*.npy"))
    assert "events.npy" in files and not any(".hist." in f or "hist_mask" in f for f in files)


def test_a_cache_of_another_storage_version_is_refused_not_misread(beauty_dir, tmp_path):
    import json

    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    old = info.path.with_name("amazon-ctr-v2-0123456789abcdef")  # PREP_VERSION is part of the key
    info.path.rename(old)
    meta = json.loads((old / "meta.json").read_text())
    meta["prep_version"] = 1  # the pre-issue-16 layout: materialised histories, no per-file sha256
    del meta["files"]
    (old / "meta.json").write_text(json.dumps(meta))
    (old.parent / "LATEST").write_text(old.name + "\n")
    with pytest.raises(DataError, match=rf"{old}: a cache of PREP_VERSION 1, this code reads version "
                                        rf"{data.PREP_VERSION} .*rerun prepare"):
        data.load_cache(old)
    ds = data.load_prepared("amazon-beauty", tmp_path, beauty_dir)  # prepare: the current key, rebuilt
    assert ds.fingerprint == info.fingerprint and ds.path == info.path and old.is_dir()


def test_inconsistent_history_offsets_are_refused(beauty_dir, tmp_path):
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    start = np.load(info.path / "valid.hist_start.npy")
    start[4] -= 1000  # a window longer than max_len (or before the first event)
    _reseal(info.path, "valid.hist_start.npy", start)
    with pytest.raises(DataError, match=r"valid.hist_start.npy, .*valid.hist_end.npy: a history"):
        data.load_cache(info.path)


def test_default_data_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MIAN_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("MIAN_DATA_DIR")
    assert data.default_data_dir() == REPO / "data"
    assert data.DATASETS["movielens-100k"] == "ml100k-ctr-v1" and data.DEFAULT_DATASET == "movielens-100k"


# --------------------------------------------------------------------------- CLI

def test_cli_prepare_and_datasets(beauty_dir, tmp_path):
    from cli import cli

    runner = CliRunner()
    args = ["prepare", "amazon-beauty", "--data-dir", str(tmp_path / "d"), "--raw-dir", str(beauty_dir)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    info = data.prepare("amazon-beauty", tmp_path / "d", beauty_dir)
    assert "prepared" in first.output and info.fingerprint in first.output and str(info.path) in first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0 and "cache hit" in second.output

    out = runner.invoke(cli, ["datasets", "--data-dir", str(tmp_path / "d"), "--results-dir", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert "amazon-beauty" in out.output and "item_oov_rate" in out.output
    rows = list(csv.DictReader(open(tmp_path / "r" / "datasets.csv")))
    assert [r["split"] for r in rows] == ["train", "valid", "test"]
    need = {"dataset", "protocol", "split", "samples", "positive_rate", "users", "items", "mean_hist_len",
            "empty_hist_share", "item_oov_rate", "user_oov_rate", "fingerprint"}
    assert need <= set(rows[0])
    assert sum(int(r["samples"]) for r in rows) == sum(info.counts.values())
    assert {r["fingerprint"] for r in rows} == {info.fingerprint}
    assert float(rows[0]["positive_rate"]) == 0.5

    empty = runner.invoke(cli, ["datasets", "--data-dir", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "no prepared dataset" in empty.output


def test_cli_errors_are_one_line(tmp_path):
    from cli import cli

    runner = CliRunner()
    bad = runner.invoke(cli, ["prepare", "amazon-beauty", "--data-dir", str(tmp_path), "--raw-dir", str(tmp_path / "x")])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: ") and bad.output.count("\n") == 1 and "Traceback" not in bad.output
    assert "Beauty.txt: file not found" in bad.output
    unknown = runner.invoke(cli, ["prepare", "movielens-10m"])
    assert unknown.exit_code == 2 and "'movielens-10m' is not one of" in unknown.output


# --------------------------------------------------------------------------- per-field id bounds

def test_an_id_in_the_next_fields_range_is_refused_on_load(beauty_dir, tmp_path):
    """An item_id index >= its vocabulary but < the group's total would read category rows of the
    shared table; loading such a cache (valid fingerprint, e.g. made by faulty code) is an error."""
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    ds = data.load_cache(info.path)
    v_item = ds.schema.item_fields[0].vocab_size
    assert v_item + 1 < v_item + ds.schema.item_fields[1].vocab_size  # inside the neighbouring table
    item = np.load(info.path / "test.item.npy")
    item[3, 0] = v_item + 1
    _reseal(info.path, "test.item.npy", item)  # intact files, as faulty code would write them
    with pytest.raises(DataError, match=rf"^amazon-beauty test split \(.*\): item field item.item_id has max index "
                                        rf"{v_item + 1} >= its vocabulary size {v_item}; expected every index in "
                                        rf"\[0, {v_item}\)"):
        data.load_cache(info.path)


def test_model_input_check_refuses_an_id_past_its_field(schema):
    from bench.nn.embedding import FeatureEmbedding
    from bench.data import check_ids
    from conftest import make_split

    split = make_split(schema, n=16)
    check_ids(schema, split, "toy train split")  # in range: passes
    v_item, v_cat = (f.vocab_size for f in schema.item_fields)
    split.hist[2, -1, 0] = v_item + 3  # < v_item + v_cat: the lookup itself does not fail ...
    FeatureEmbedding(schema, 4)(split.take(slice(0, 16)))
    with pytest.raises(DataError, match=rf"toy train split: hist field item.item_id has max index {v_item + 3} "
                                        rf">= its vocabulary size {v_item}"):
        check_ids(schema, split, "toy train split")  # ... the check does
    split.hist[2, -1, 0] = 0
    split.context[0, 1] = -1
    with pytest.raises(DataError, match=r"context field context.c1 has min index -1 < 0"):
        check_ids(schema, split, "toy train split")
    split.context[0, 1] = 2
    with pytest.raises(DataError, match=r"item_table has 1 columns; the schema's item group has 2 fields"):
        check_ids(schema, split, "toy", item_table=torch.zeros(v_item, 1, dtype=torch.long))


def test_training_checks_each_split_once_before_the_first_step(monkeypatch):
    from bench.training import train
    from bench.data import PreparedDataset
    from conftest import make_split, tiny_schema

    schema = tiny_schema()
    splits = [make_split(schema, n=32, seed=k) for k in range(3)]
    splits[1].user[5, 1] = schema.user_fields[1].vocab_size  # valid split, user field u1
    ds = PreparedDataset("toy", "toy-v1", "f" * 64, schema, *splits, item_table=None, path=Path("toy"))
    monkeypatch.setattr(train, "train_step", lambda *a: pytest.fail("trained on an out-of-range split"))
    with pytest.raises(DataError, match=r"toy valid split: user field user.u1 has max index 6 >= its vocabulary size 6"):
        train.train_run(ds, "lr", {"train": {}, "model": {}}, seed=0, progress=False)
