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
    # the fingerprint is a hash of what is on disk: recompute it from the files
    ds = data.load_prepared("amazon-beauty", tmp_path / "a")
    arrays = {p.stem: np.load(p) for p in a.path.glob("*.npy")}
    ordered = {k: arrays[k] for k in [*(f"{s}.{f}" for s in ("train", "valid", "test")
                                        for f in ("item", "hist", "hist_mask", "user", "context", "label", "user_index")),
                                      "item_table", *sorted(k for k in arrays if k.startswith("vocab."))]}
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


def test_damaged_cache_file_is_a_clear_error(beauty_dir, tmp_path):
    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    (info.path / "valid.hist.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"valid.hist.npy: damaged cache file.*--force"):
        data.load_prepared("amazon-beauty", tmp_path)


def test_modified_cache_array_fails_the_fingerprint_check(beauty_dir, tmp_path):
    import numpy as np

    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    labels = np.load(info.path / "train.label.npy")
    labels[:10] = 1 - labels[:10]  # a valid .npy with other content
    np.save(info.path / "train.label.npy", labels)
    with pytest.raises(DataError, match="do not match the fingerprint.*--force"):
        data.load_prepared("amazon-beauty", tmp_path)


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
    import json

    info = data.prepare("amazon-beauty", tmp_path, beauty_dir)
    ds = data.load_cache(info.path)
    v_item = ds.schema.item_fields[0].vocab_size
    assert v_item + 1 < v_item + ds.schema.item_fields[1].vocab_size  # inside the neighbouring table
    item = np.load(info.path / "test.item.npy")
    item[3, 0] = v_item + 1
    np.save(info.path / "test.item.npy", item)
    arrays = {p.stem: np.load(p) for p in info.path.glob("*.npy")}
    ordered = {k: arrays[k] for k in [*(f"{s}.{f}" for s in ("train", "valid", "test")
                                        for f in ("item", "hist", "hist_mask", "user", "context", "label", "user_index")),
                                      "item_table", *sorted(k for k in arrays if k.startswith("vocab."))]}
    meta = json.loads((info.path / "meta.json").read_text())
    meta["fingerprint"] = data.fingerprint(ds.schema, ordered)
    (info.path / "meta.json").write_text(json.dumps(meta))
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
