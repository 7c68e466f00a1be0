"""Trainer, run records and resumable studies, on a toy model and a tiny in-memory dataset."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.training import studies as studies_mod
from bench.training import train as train_mod
from bench.training.config import ConfigError, resolve_config
from bench.nn.contract import FeatureSchema, ModelOutput, Split
from bench.data import PreparedDataset
from bench.training.registry import register
from bench.training.runs import RunStore
from bench.training.studies import Runner, main_specs
from bench.training.train import RunSpec, TrainingError
from conftest import make_split, tiny_schema


class Toy(nn.Module):
    """Logistic regression on the candidate item id (learnable on separable data)."""

    @dataclass(frozen=True)
    class Config:
        embed_dim: int = 4
        scale: float = 1.0

    def __init__(self, schema: FeatureSchema, cfg: "Toy.Config", item_table=None):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Embedding(schema.item_fields[0].vocab_size, 1)
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return ModelOutput(logits=self.cfg.scale * self.w(batch.item[:, 0]).squeeze(-1) + self.b)


register("toy", Toy)


def fake_dataset(name="toyset") -> PreparedDataset:
    schema = tiny_schema()
    splits = []
    for seed, n in ((0, 600), (1, 200), (2, 200)):
        s = make_split(schema, n=n, seed=seed)
        # label = item id parity, with 10% noise so that AUC < 1
        noise = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.1
        s.label = ((s.item[:, 0] % 2 == 0) ^ noise).float()
        splits.append(s)
    return PreparedDataset(name, "toy-v1", "f" * 64, schema, *splits, item_table=None, path=Path(name))


@pytest.fixture
def runner(tmp_path, monkeypatch):
    ds = fake_dataset()
    r = Runner(store=RunStore(tmp_path / "runs"), data_dir=tmp_path / "data", progress=False)
    r._datasets[ds.name] = ds
    return r


def config(**train):
    base = {"lr": 0.05, "batch_size": 64, "max_epochs": 6, "patience": 2, "eval_batch_size": 128,
            "eval_every_steps": 0, "weight_decay": 0.0}
    base.update(train)
    return {"train": base, "model": {"embed_dim": 4, "scale": 1.0}}


def test_training_learns_and_record_has_every_key(tmp_path):
    ds = fake_dataset()
    record, model = train_mod.train_run(ds, "toy", config(), seed=0, log_dir=tmp_path, progress=False)
    for key in ("protocol", "dataset", "model", "variant", "seed", "config", "test", "valid_history",
                "best_epoch", "wall_seconds", "n_params", "versions", "git_commit", "run_id"):
        assert key in record
    assert set(record["test"]) == {"auc", "logloss", "gauc"}
    assert set(record["wall_seconds"]) == {"train", "eval"}
    assert record["test"]["auc"] > 0.8
    assert record["valid_history"][0]["valid"]["auc"] <= max(h["valid"]["auc"] for h in record["valid_history"])
    # the log starts with the resolved config
    first = (tmp_path / f"{record['run_id']}.log").read_text().splitlines()[0]
    assert '"lr": 0.05' in first
    json.dumps({k: v for k, v in record.items()})  # serialisable


def test_same_seed_gives_identical_metrics_and_other_seed_differs():
    ds = fake_dataset()
    a, _ = train_mod.train_run(ds, "toy", config(), seed=3, progress=False)
    b, _ = train_mod.train_run(ds, "toy", config(), seed=3, progress=False)
    c, _ = train_mod.train_run(ds, "toy", config(), seed=4, progress=False)
    assert a["test"] == b["test"]
    assert [h["valid"] for h in a["valid_history"]] == [h["valid"] for h in b["valid_history"]]
    assert a["run_id"] == b["run_id"] != c["run_id"]
    assert a["test"] != c["test"]


def test_early_stopping_restores_best_epoch():
    ds = fake_dataset()
    record, model = train_mod.train_run(ds, "toy", config(lr=0.5, max_epochs=20, patience=2), seed=0, progress=False)
    ends = [h for h in record["valid_history"] if h["epoch_end"]]
    best = max(ends, key=lambda h: h["valid"]["auc"])
    assert record["best_epoch"] == best["epoch"]
    assert record["valid"] == best["valid"]
    if record["epochs_run"] < 20:  # stopped early: exactly `patience` epochs without a gain
        assert record["epochs_run"] == record["best_epoch"] + 2
    # the returned model carries the best epoch's weights: its validation AUC is the best one
    assert train_mod.evaluate(model, ds.valid, 128)["auc"] == pytest.approx(best["valid"]["auc"])


def test_eval_every_steps_adds_intermediate_evaluations():
    ds = fake_dataset()
    record, _ = train_mod.train_run(ds, "toy", config(max_epochs=2, patience=5, eval_every_steps=4), seed=0, progress=False)
    steps_per_epoch = -(-600 // 64)
    mids = [h for h in record["valid_history"] if not h["epoch_end"]]
    assert len(mids) == (2 * steps_per_epoch) // 4
    assert [h["step"] for h in mids] == [4 * (i + 1) for i in range(len(mids))]


def test_non_finite_loss_names_epoch_and_step():
    ds = fake_dataset()
    cfg = config()
    cfg["model"]["scale"] = 1e300  # finite for the config check, inf in float32: non-finite logits
    with pytest.raises(TrainingError, match=r"epoch 1, step 1"):
        train_mod.train_run(ds, "toy", cfg, seed=0, progress=False)


def test_interrupted_study_runs_only_missing(runner, monkeypatch):
    specs = [RunSpec("toyset", "toy", s, overrides={"train.max_epochs": 2, "train.batch_size": 128}) for s in range(4)]
    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=2))
    calls = []
    real = train_mod.train_run

    def flaky(ds, model, cfg, seed, **kw):
        calls.append(seed)
        if seed == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # killed midway through the third run
        return real(ds, model, cfg, seed, **kw)

    monkeypatch.setattr(train_mod, "train_run", flaky)
    with pytest.raises(KeyboardInterrupt):
        runner.run_all(specs)
    assert calls == [0, 1, 2]
    assert len(list(runner.store.root.glob("*.json"))) == 2
    assert not list(runner.store.root.glob("*.tmp"))
    records = runner.run_all(specs)
    assert calls == [0, 1, 2, 2, 3]  # only the missing runs
    assert [r["seed"] for r in records] == [0, 1, 2, 3]
    # a third pass runs nothing; --force reruns everything
    runner.run_all(specs)
    assert len(calls) == 5
    runner.force = True
    runner.run_all(specs[:1])
    assert len(calls) == 6


def test_corrupt_record_is_refused_and_force_retrains_it(runner, monkeypatch, caplog):
    from bench.training.runs import RecordError

    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=1))
    spec = RunSpec("toyset", "toy", 0)
    rec, _ = runner.run(spec)
    path = runner.store.path(rec["run_id"])
    path.write_text(path.read_text()[:50])  # truncated
    damaged = path.read_bytes()
    with pytest.raises(RecordError, match=r"not valid JSON.*git checkout -- .*--force"):
        runner.run(spec)
    with pytest.raises(RecordError):
        runner.run_all([spec])
    assert path.read_bytes() == damaged  # refused, never replaced silently
    runner.force = True
    with caplog.at_level("WARNING"):
        again = runner.run_all([spec])[0]
    assert "fails its check" in caplog.text
    assert again["test"] == rec["test"]
    assert json.loads(path.read_text())["run_id"] == rec["run_id"]


def test_checkpoint_reload_gives_the_same_predictions(runner, monkeypatch):
    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=1))
    rec, model = runner.run(RunSpec("toyset", "toy", 0))
    again, reloaded = runner.run(RunSpec("toyset", "toy", 0), keep_model=True)
    assert again["run_id"] == rec["run_id"]
    ds = runner.dataset("toyset")
    assert reloaded is not None
    assert (train_mod.predict(model, ds.test, 64) == train_mod.predict(reloaded, ds.test, 64)).all()


def test_every_trained_run_writes_its_test_scores_before_its_record(runner, monkeypatch):
    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=2))
    real_save, seen = RunStore.save, []

    def save(store, record):
        seen.append(store.scores_path(record["run_id"]).exists())
        return real_save(store, record)

    monkeypatch.setattr(RunStore, "save", save)
    rec, model = runner.run(RunSpec("toyset", "toy", 0))  # train one run
    [rec1] = runner.run_all([RunSpec("toyset", "toy", 1)])  # a study's run (this process's executor)
    assert seen == [True, True]
    ds = runner.dataset("toyset")
    for r in (rec, rec1):
        scores, why = runner.store.checked_scores(r)
        assert why is None and scores.shape == (len(ds.test.label),)
    np.testing.assert_array_equal(runner.store.checked_scores(rec)[0], train_mod.predict(model, ds.test, 128))


def test_a_record_without_scores_gets_them_from_its_checkpoint_else_a_retrain_only_when_they_match(runner, monkeypatch,
                                                                                                   caplog):
    from bench.training.runs import sealed

    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=2))
    specs = [RunSpec("toyset", "toy", s) for s in range(3)]
    recs = runner.run_all(specs)
    paths = [runner.store.scores_path(r["run_id"]) for r in recs]
    original = [p.read_bytes() for p in paths]
    for p in paths:
        p.unlink()
    (runner.checkpoint_dir / f"{recs[1]['run_id']}.pt").unlink()  # seed 1: no checkpoint, so retrained
    tampered = dict(recs[2], test={**recs[2]["test"], "auc": recs[2]["test"]["auc"] + 1e-6})  # seed 2: "another model"
    runner.store.save(sealed(tampered))
    calls = []
    real = train_mod.train_run
    monkeypatch.setattr(train_mod, "train_run", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    with caplog.at_level("INFO"):
        again = runner.run_all(specs)
    assert again[:2] == recs[:2] and calls == [1]  # nothing trained but seed 1's retrain; records kept
    assert [p.exists() and p.read_bytes() for p in paths[:2]] == original[:2]  # the very same bytes
    assert not paths[2].exists()
    assert "test scores written for 2 run record(s): 1 from checkpoints, 1 from retrains; 1 not written" in caplog.text
    assert f"run {recs[2]['run_id']}: the test scores of its checkpoint do not reproduce its record (test auc" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        runner.run_all(specs[:2])  # every record has its scores: nothing to do
    assert "test scores written" not in caplog.text and calls == [1]


def test_set_overrides_are_validated():
    cfg = resolve_config("movielens-100k", "toy", None, {"train.lr": 0.01, "scale": 2.0})
    assert cfg["train"]["lr"] == 0.01 and cfg["model"]["scale"] == 2.0
    assert cfg["model"]["embed_dim"] == 16  # from the dataset's shared [model] section
    with pytest.raises(ConfigError, match="no_such_key"):
        resolve_config("movielens-100k", "toy", None, {"no_such_key": 1})
    with pytest.raises(ConfigError, match="bogus"):
        resolve_config("movielens-100k", "toy", None, {"train.bogus": 1})


def test_main_specs_cover_models_and_seeds():
    specs = main_specs("movielens-100k", ["lr", "mian"], range(3))
    assert {(s.model, s.seed) for s in specs} == {(m, s) for m in ("lr", "mian") for s in range(3)}


def test_dice_matches_its_formula_and_accepts_a_single_row():
    from bench.nn.mlp import Dice

    d = Dice(5)
    with torch.no_grad():
        d.alpha.copy_(torch.linspace(-0.5, 0.5, 5))
    x = torch.randn(8, 5)
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    torch.testing.assert_close(d(x), p * x + (1 - p) * d.alpha * x, atol=1e-5, rtol=1e-5)
    out = d(torch.randn(1, 5))  # training mode, one row: running statistics, no error
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_training_survives_a_last_batch_of_one_sample():
    ds = fake_dataset()
    ds.train = ds.train.take(slice(0, 129))  # 129 = 2 * 64 + 1
    ds.train = Split(**{k: getattr(ds.train, k) for k in ("item", "hist", "hist_mask", "user", "context", "label", "user_index")})
    cfg = {"train": config(max_epochs=1)["train"], "model": {}}
    record, _ = train_mod.train_run(ds, "din", cfg, seed=0, progress=False)
    assert record["steps"] == 3


# --------------------------------------------------------------------------- the CLI on a tiny movielens-100k

@pytest.fixture(scope="module")
def tiny_ml100k(tmp_path_factory):
    """A tiny movielens-100k prepared from synthetic raw files in its own data dir."""
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("tiny"))


def test_default_parallelism_is_one_thread_per_core(monkeypatch):
    import cli

    monkeypatch.setattr(cli, "_usable_cores", lambda: 6)
    assert cli._parallelism("cpu", None, None) == (6, 1)
    assert cli._parallelism("cpu", 2, None) == (3, 2)
    assert cli._parallelism("cpu", None, 2) == (2, 1)
    monkeypatch.setattr(cli, "_usable_cores", lambda: 64)
    assert cli._parallelism("cpu", None, None) == (8, 1)
    assert cli._parallelism("cuda", None, None) == (1, None)


def test_train_defaults_to_one_thread_and_records_it(tiny_ml100k, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(cli, ["train", "--model", "lr", "--data-dir", str(tiny_ml100k), "--results-dir",
                                       str(tmp_path), "--set", "train.max_epochs=1"], catch_exceptions=False)
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    [record] = list(RunStore(tmp_path / "runs").records())
    assert record["threads"] == 1


def test_records_are_readable_by_others(tmp_path):
    from bench.training.runs import run_id

    key = {"protocol": "p", "dataset": "d", "fingerprint": "f", "model": "m", "variant": "v", "seed": 0,
           "config": {"train": {}, "model": {}}, "results_version": 1}
    m = {"auc": 0.5, "logloss": 0.7, "gauc": 0.5}
    store = RunStore(tmp_path / "runs")
    path = store.save({**key, "run_id": run_id(key), "test": m, "valid": m, "valid_history": [], "best_epoch": 1,
                       "epochs_run": 1, "steps": 1, "n_params": 1, "wall_seconds": {"train": 0.0, "eval": 0.0}})
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_subset_studies_never_replace_the_protocol_tables(tiny_ml100k, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    args = ["--data-dir", str(tiny_ml100k), "--results-dir", str(tmp_path), "--threads", "1"]
    res = CliRunner().invoke(cli, ["reproduce", "--models", "lr", "--seeds", "1", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "movielens-100k" / "subsets" / "lr_seeds1" / "main_table.md").exists()
    assert not (tmp_path / "movielens-100k" / "main_table.md").exists()


def test_visualize_attention_retrains_a_missing_checkpoint_but_keeps_the_record(tiny_ml100k, tmp_path):
    from click.testing import CliRunner

    from cli import cli

    args = ["visualize-attention", "--cases", "3", "--seeds", "1", "--data-dir", str(tiny_ml100k), "--results-dir",
            str(tmp_path), "--set", "train.max_epochs=1"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [out] = list((tmp_path / "movielens-100k").glob("overrides-*/subsets/cases3_seeds1"))
    weights = (out / "gim_weights.csv").read_text()
    [record_path] = list((tmp_path / "runs").glob("*.json"))
    before = record_path.read_bytes()
    for ckpt in (tiny_ml100k / "checkpoints").glob(f"{record_path.stem}.pt"):
        ckpt.unlink()
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "retraining" in res.output
    assert record_path.read_bytes() == before  # commit, date and timings of the record kept
    assert (out / "gim_weights.csv").read_text() == weights  # same seed -> same model -> same figure
    assert (tiny_ml100k / "checkpoints" / f"{record_path.stem}.pt").exists()
