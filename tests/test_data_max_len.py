"""max_len as a data-protocol parameter: its own cache key and fingerprint, `--set max_len=T` on
the training commands, validation, and unchanged run ids for the default."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench import data
from bench.training.config import ConfigError, check_overrides, data_params, parse_overrides, resolve_config
from bench.data.sources import movielens
from bench.data.samples import ProtocolParams, decode
from datagen import ml100k_frames, ml100k_spec, write_ml100k_files


@pytest.fixture
def ml_raw(tmp_path, monkeypatch):
    frames = ml100k_frames(n_users=30, n_items=40, per_user=20)
    monkeypatch.setitem(movielens.SPECS, "movielens-100k", ml100k_spec(frames))
    return write_ml100k_files(tmp_path / "raw", frames)


def test_max_len_5_keeps_the_5_most_recent_events_in_its_own_cache(ml_raw, tmp_path):
    default = data.prepare("movielens-100k", tmp_path / "data", ml_raw)
    short = data.prepare("movielens-100k", tmp_path / "data", ml_raw, params=ProtocolParams(max_len=5))
    assert short.path != default.path and short.fingerprint != default.fingerprint
    root = tmp_path / "data" / "movielens-100k"
    assert (root / "LATEST").read_text().strip() == default.path.name  # the default is not moved
    assert (root / "LATEST.max_len5").read_text().strip() == short.path.name

    a = data.load_prepared("movielens-100k", tmp_path / "data")
    b = data.load_prepared("movielens-100k", tmp_path / "data", params=ProtocolParams(max_len=5))
    assert a.schema.max_len == 50 and b.schema.max_len == 5 and b.params["max_len"] == 5
    assert (a.path, b.path) == (default.path, short.path)
    for s in ("train", "valid", "test"):
        long_, five = a.split(s), b.split(s)
        assert five.hist.shape == (len(long_), 5, 3)
        assert long_.hist_mask.sum(1).max() > 5  # some histories are longer than 5 ...
        assert np.array_equal(five.hist_mask.numpy(), long_.hist_mask[:, -5:].numpy())  # ... the 5 latest kept
        ids_50 = decode(long_.hist[:, -5:, 0].numpy(), a.vocabs["item.movie_id"])
        ids_5 = decode(five.hist[..., 0].numpy(), b.vocabs["item.movie_id"])
        known = (ids_50 >= 0) & (ids_5 >= 0)  # OOV (-1) depends on each vocabulary
        assert known[five.hist_mask.numpy()].mean() > 0.8 and np.array_equal(ids_5[known], ids_50[known])


@pytest.mark.parametrize("value", [0, -3, 5.5, "five", True, 1001])
def test_invalid_max_len_is_one_clear_error(value):
    with pytest.raises(ConfigError, match=rf"^--set data.max_len={value!r}: expected an integer from 1 to 1000 \(default 50\)$"):
        data_params({"data.max_len": value})


def test_data_keys_are_parsed_checked_and_kept_out_of_the_model_config():
    assert parse_overrides(["max_len=5"]) == parse_overrides(["data.max_len=5"]) == {"data.max_len": 5}
    assert data_params({"data.max_len": 5, "train.lr": 0.1}) == ProtocolParams(max_len=5)
    assert data_params({}) == ProtocolParams()
    check_overrides({"data.max_len": 5}, ["lr"])
    with pytest.raises(ConfigError, match=r"--set data.bogus: unknown data-protocol parameter 'bogus'; known: data.max_len"):
        check_overrides({"data.bogus": 1}, ["lr"])
    with pytest.raises(ConfigError, match=r"--set max_len=0: expected an integer from 1 to 1000"):
        check_overrides({"max_len": 0}, ["lr"])
    assert resolve_config("movielens-100k", "lr", None, {"data.max_len": 5}) == resolve_config("movielens-100k", "lr", None, {})


def test_cli_train_with_max_len_trains_on_its_own_cache(ml_raw, tmp_path):
    from cli import cli

    def train(*extra):
        args = ["train", "--model", "din", "--data-dir", str(tmp_path / "data"), "--raw-dir", str(ml_raw),
                "--results-dir", str(tmp_path / "res"), "--set", "train.max_epochs=1", *extra]
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        rid = res.output.strip().splitlines()[-1].split()[1].rstrip(":")
        return json.loads((tmp_path / "res" / "runs" / f"{rid}.json").read_text())

    base, five, five_again = train(), train("--set", "max_len=5"), train("--set", "data.max_len=5")
    assert five["run_id"] != base["run_id"] and five["fingerprint"] != base["fingerprint"]
    assert five["config"] == base["config"]  # the data parameter is not a model/train key ...
    assert five["data_params"]["max_len"] == 5 and base["data_params"]["max_len"] == 50  # ... but recorded
    assert five_again["run_id"] == five["run_id"]  # both spellings: the same run

    n_records = len(list((tmp_path / "res" / "runs").glob("*.json")))
    res = CliRunner().invoke(cli, ["reproduce", "--models", "din", "--seeds", "1", "--data-dir", str(tmp_path / "data"),
                                   "--results-dir", str(tmp_path / "res"), "--set", "train.max_epochs=1",
                                   "--set", "max_len=5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "res" / "runs").glob("*.json"))) == n_records  # din seed 0, max_len 5: done above
    tables = list((tmp_path / "res" / "movielens-100k").rglob("main_table.md"))
    assert len(tables) == 1 and tables[0].parent.parent.parent.name.startswith("overrides-")  # never the protocol's
    assert json.loads((tables[0].parents[2] / "overrides.json").read_text()) == {"data.max_len": 5, "train.max_epochs": 1}

    bad = CliRunner().invoke(cli, ["train", "--model", "lr", "--data-dir", str(tmp_path / "data"),
                                   "--set", "max_len=0"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1] == \
        "Error: --set data.max_len=0: expected an integer from 1 to 1000 (default 50)"


def test_max_len_studies_are_left_out_of_the_protocol_records():
    from bench.training.runs import RESULTS_VERSION
    from bench.training.studies import protocol_records

    cfg = resolve_config("movielens-100k", "lr", {}, {})
    recs = [{"run_id": f"r{i}", "dataset": "movielens-100k", "model": "lr", "variant": "default", "config": cfg,
             "fingerprint": "a" if i < 2 else "b", "results_version": RESULTS_VERSION, **({"data_params": {"max_len": 5, "data_seed": 2021}} if i >= 2 else {})}
            for i in range(5)]
    kept, notes = protocol_records(recs)
    assert [r["run_id"] for r in kept] == ["r0", "r1"]
    assert notes == ["3 run record(s) left out: made with other data-protocol parameters (--set data.max_len)."]
