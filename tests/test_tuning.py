"""`python cli.py tune` (issue 15) and the config knobs its search spaces need, on a tiny synthetic
MovieLens-100K with a 2-epoch protocol: N trials per model and the files written; a killed tune
resumes without retraining and ends with the trials of an uninterrupted one; the same study seed
gives the same trials; a trial never touches the test split; two workers finish the study with the
same number of trials and none trained twice; search-space errors name the file and key."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.training import config as config_mod
from bench.training.config import ConfigError, resolve_config
from bench.training.runs import RunStore
from cli import cli

REPO = Path(__file__).resolve().parents[1]
TOML = (REPO / "bench" / "training" / "configs" / "movielens-100k.toml").read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("tuning"))


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """The dataset configs with movielens-100k's protocol cut to 2 epochs, patience 1 (trials resolve
    their config in this process; workers get it resolved)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "movielens-100k.toml").write_text(TOML.replace("max_epochs = 20", "max_epochs = 2")
                                                .replace("patience = 2", "patience = 1"))
    monkeypatch.setattr(config_mod, "CONFIG_DIR", folder)
    return folder


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def tune(data, results, *extra):
    res = CliRunner().invoke(cli, ["tune", "--data-dir", str(data), "--results-dir", str(results), "--threads", "1",
                                   *map(str, extra)], catch_exceptions=False)
    return res


def trial_records(results) -> list[dict]:
    recs = [r for r in RunStore(Path(results) / "runs").records() if r["variant"].startswith("tune-")]
    return sorted(recs, key=lambda r: (r["model"], r["tuning"]["trial"]))


def trained_now(output: str, model: str) -> int:
    line = next(x for x in output.splitlines() if x.startswith(f"movielens-100k {model}: "))
    return int(line.split("(")[1].split(" trained now")[0])


# --------------------------------------------------------------------------- the knobs


def test_embedding_regularizer_is_left_out_at_its_default_and_checked():
    cfg = resolve_config("movielens-100k", "dcn")
    assert "embedding_regularizer" not in cfg["train"]  # so no existing run id changes
    cfg = resolve_config("movielens-100k", "dcn", overrides={"train.embedding_regularizer": 1e-5})
    assert cfg["train"]["embedding_regularizer"] == 1e-5
    for bad in (-1.0, float("inf")):
        with pytest.raises(ConfigError, match="train.embedding_regularizer must be a finite number >= 0"):
            resolve_config("movielens-100k", "dcn", overrides={"train.embedding_regularizer": bad})


def test_embedding_penalty_is_the_squared_rows_the_batch_uses(schema):
    from conftest import make_split

    from baselines.wide_deep import WideDeep
    from bench.nn.embedding import embedding_penalty
    from bench.training.config import TrainConfig
    from bench.training.train import loss_fn, make_optimizer, train_step

    torch.manual_seed(0)
    model = WideDeep(schema, WideDeep.Config(embed_dim=4))
    batch = make_split(schema, n=16)
    want = 0.0
    for emb in (model.embedding, model.linear.weights):  # the field embeddings and the wide weights
        for group, ids in ((emb.item, [batch.item, batch.hist]), (emb.user, [batch.user]),
                           (emb.context, [batch.context])):
            rows = torch.cat([(x + group.offsets).reshape(-1) for x in ids]).unique()
            want += float(group.weight.detach()[rows].pow(2).sum())
    assert float(embedding_penalty(model, batch).detach()) == pytest.approx(want, rel=1e-6)
    # only rows the batch uses get a gradient from it
    model.zero_grad()
    embedding_penalty(model, batch).backward()
    used = torch.cat([(x + model.embedding.user.offsets).reshape(-1) for x in [batch.user]]).unique()
    grad = model.embedding.user.weight.grad
    unused = torch.ones(grad.shape[0], dtype=torch.bool)
    unused[used] = False
    assert (grad[unused] == 0).all() and (grad[used].abs().sum(1) > 0).any()
    # the trainer adds lambda times it to the loss
    lam = 1e-2
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    model.eval()  # no dropout anyway; the same forward twice
    expected = float((loss_fn(model(batch), batch.label) + lam * embedding_penalty(model, batch)).detach())
    assert float(train_step(model, opt, batch, lam)) == pytest.approx(expected, rel=1e-6)


def test_the_knobs_of_every_search_space_exist_and_reach_the_models(configs):
    """Every key of the spaces is a config key of its model; the per-model knobs build what they say."""
    from bench.training.registry import MODEL_NAMES
    from bench.training.tuning import model_space

    keys = {m: {p.key for p in model_space("movielens-100k", m).params} for m in MODEL_NAMES}
    shared = {"train.lr", "train.embedding_regularizer", "train.batch_size"}
    assert all(shared <= k for k in keys.values())
    assert keys["lr"] == shared  # LR has no MLP: no dropout, no activation
    for m in ("wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien"):
        assert {"dropout", "mlp_activation"} <= keys[m]
    assert {"mlp_dropout", "mlp_activation", "n_heads", "n_layers", "gim_dim", "gim_mode", "ibim_score"} <= keys["mian"]
    assert "dropout" not in keys["mian"]  # MIAN's dropout is the Transformer's, skipped
    assert "cross_layers" in keys["dcn"] and "cin" in keys["xdeepfm"] and "att_mlp" in keys["din"]
    assert "aux_weight" in keys["dien"]
    assert not any("embed_dim" in k or "train.max_epochs" in k for k in keys.values())


@pytest.mark.parametrize("space, error", [
    ('[tuning.shared]\n"train.lr" = { loguniform = [1e-4, 1e-2] }', r"\[tuning.shared\] train.lr: unknown kind 'loguniform'"),
    ('[tuning.shared]\n"train.lr" = { log_uniform = [0, 1e-2] }', r"train.lr: log_uniform expects 0 < low < high"),
    ('[tuning.shared]\nembed_dim = { choice = [8, 16] }', r"embed_dim is fixed by the protocol"),
    ('[tuning.shared]\n"train.max_epochs" = { int = [1, 5] }', r"train.max_epochs is fixed by the protocol"),
    ('[tuning.models.dcn]\nn_cross = { int = [1, 3] }', r"\[tuning.models.dcn\] n_cross: 'n_cross' is not a parameter of dcn"),
    ('[tuning.models.dcn]\ncross_layers = { int = [0, 3] }', r"cross_layers: the value 0 is not valid for dcn"),
    ('[tuning.models.dcn]\nmlp_activation = { choice = ["relu", "gelu"] }', r'the value "gelu" is not valid'),
    ('[tuning.models.nosuch]\nx = { int = [1, 2] }', r"unknown model\(s\) \['nosuch'\]"),
    ('[tuning]\ntrials = 3', r"\[tuning\]: unknown key\(s\) \['trials'\]"),
])
def test_a_bad_search_space_is_one_error_naming_the_file_and_key(configs, space, error):
    from bench.training.tuning import TuningError, model_space

    head = TOML.split("[tuning]")[0]
    (configs / "movielens-100k.toml").write_text(head + "[tuning]\nseed = 100\n" + space.replace("[tuning]\n", "") + "\n")
    with pytest.raises(TuningError, match=error) as info:
        model_space("movielens-100k", "dcn")
    assert str(configs / "movielens-100k.toml") in str(info.value)


# --------------------------------------------------------------------------- the command


def test_tune_runs_n_trials_per_model_and_writes_the_files(tiny, configs, tmp_path):
    results = tmp_path / "results"
    res = tune(tiny, results, "--models", "lr,din", "--trials", 3, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "train.lr: log-uniform [0.0001, 0.01]" in res.output  # the spaces are shown
    recs = trial_records(results)
    assert sorted(r["model"] for r in recs) == ["din"] * 3 + ["lr"] * 3
    for r in recs:  # ordinary records of trials that never scored test
        assert r["test_scored"] is False and all(math.isnan(v) for v in r["test"].values())
        assert "test_by_logloss" not in r and not RunStore(results / "runs").scores_path(r["run_id"]).exists()
        assert r["config"]["train"]["max_epochs"] == 2 and r["seed"] == 100
    out = results / "movielens-100k" / "subsets" / "lr+din_trials3" / "tuning"
    assert {p.name for p in out.iterdir()} == {"lr.md", "lr.csv", "din.md", "din.csv", "summary.md", "tuning.png"}
    import pandas as pd

    table = pd.read_csv(out / "din.csv")
    assert list(table["trial"]) == [0, 1, 2] and (table["state"] == "complete").all()
    din = [r for r in recs if r["model"] == "din"]
    assert list(table["valid_auc"]) == pytest.approx([r["valid"]["auc"] for r in din])
    assert list(table["run_id"]) == [r["run_id"] for r in din]
    assert {"train.lr", "att_mlp", "epochs", "best_so_far"} <= set(table.columns)
    summary = (out / "summary.md").read_text()
    assert "DIN" in summary and "3/3" in summary and "att_mlp=" in summary
    stamp = table["table_stamp"].iloc[0]
    assert f"table stamp {stamp}" in (out / "din.md").read_text()  # the md and csv of one write
    assert (out / "tuning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (results / "tuning" / "studies.db").exists()
    assert "results/tuning/*.db" in (REPO / ".gitignore").read_text()


def test_a_trial_never_touches_the_test_split(tiny, configs, tmp_path):
    from bench.training.studies import Runner
    from bench.training.tuning import model_space, tune_model

    class NoTest:
        def __init__(self, ds):
            self._ds = ds

        def __getattr__(self, name):
            if name == "test":
                raise AssertionError("a tuning trial looked at the test split")
            return getattr(self._ds, name)

    runner = Runner(store=RunStore(tmp_path / "runs"), data_dir=tiny, progress=False)
    runner._datasets["movielens-100k"] = NoTest(runner.dataset("movielens-100k"))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    result = tune_model(runner, model_space("movielens-100k", "din"), 2, storage, [])
    assert result.trained == 2 and [t["state"] for t in result.trials] == ["complete"] * 2


def test_resume_after_an_interrupt_trains_nothing_twice_and_ends_with_the_same_trials(tiny, configs, tmp_path,
                                                                                      monkeypatch):
    from bench.training.studies import Runner

    fresh = tmp_path / "fresh"
    res = tune(tiny, fresh, "--models", "dcn", "--trials", 4, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert trained_now(res.output, "dcn") == 4
    want = [r["run_id"] for r in trial_records(fresh)]

    # the same seed, again from nothing: the same trials
    again = tmp_path / "again"
    assert tune(tiny, again, "--models", "dcn", "--trials", 4, "--workers", 1).exit_code == 0
    assert [r["run_id"] for r in trial_records(again)] == want

    # killed during its third trial, then started again
    killed = tmp_path / "killed"
    real, calls = Runner._trained_run, []

    def dies_on_the_third(self, job):
        calls.append(job.run_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, job)

    monkeypatch.setattr(Runner, "_trained_run", dies_on_the_third)
    res = tune(tiny, killed, "--models", "dcn", "--trials", 4, "--workers", 1)
    assert res.exit_code == 1 and "Aborted" in res.output  # click's answer to Ctrl-C
    monkeypatch.setattr(Runner, "_trained_run", real)
    assert [r["run_id"] for r in trial_records(killed)] == want[:2]
    res = tune(tiny, killed, "--models", "dcn", "--trials", 4, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert trained_now(res.output, "dcn") == 2 and "study rebuilt" in res.output  # the left-running trial
    assert [r["run_id"] for r in trial_records(killed)] == want

    # the database lost (it is not committed): rebuilt from the records, nothing trained
    (killed / "tuning" / "studies.db").unlink()
    res = tune(tiny, killed, "--models", "dcn", "--trials", 4, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert trained_now(res.output, "dcn") == 0 and "study rebuilt" in res.output
    out = killed / "movielens-100k" / "subsets" / "dcn_trials4" / "tuning"
    assert (out / "dcn.csv").read_text() == (fresh / out.relative_to(killed) / "dcn.csv").read_text()
    # and a larger budget only trains the new trials
    res = tune(tiny, killed, "--models", "dcn", "--trials", 5, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert trained_now(res.output, "dcn") == 1


def test_a_tune_stopped_in_a_later_study_keeps_the_finished_studies_tables(tiny, configs, tmp_path, monkeypatch):
    """The tables are published after every model: a tune killed during its second model's study leaves
    the first model's trials table and a summary naming the study still to run, and the finished run
    replaces them with the whole publication."""
    from bench.training.studies import Runner

    results = tmp_path / "results"
    real, calls = Runner._trained_run, []

    def dies_in_the_second_study(self, job):
        calls.append(job.run_id)
        if len(calls) == 3:  # 2 lr trials, then the first dcn trial
            raise KeyboardInterrupt
        return real(self, job)

    monkeypatch.setattr(Runner, "_trained_run", dies_in_the_second_study)
    res = tune(tiny, results, "--models", "lr,dcn", "--trials", 2, "--workers", 1)
    assert res.exit_code == 1 and "Aborted" in res.output
    out = results / "movielens-100k" / "subsets" / "lr+dcn_trials2" / "tuning"
    assert {p.name for p in out.iterdir()} == {"lr.md", "lr.csv", "summary.md", "tuning.png"}
    summary = (out / "summary.md").read_text()
    assert "2/2" in summary and "the studies of Deep&Cross have not run yet" in summary
    monkeypatch.setattr(Runner, "_trained_run", real)
    res = tune(tiny, results, "--models", "lr,dcn", "--trials", 2, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"lr.md", "lr.csv", "dcn.md", "dcn.csv", "summary.md", "tuning.png"}
    assert "have not run yet" not in (out / "summary.md").read_text()


def test_a_trial_whose_training_fails_counts_in_the_budget_and_is_not_retried(tiny, configs, tmp_path, monkeypatch):
    """A non-finite loss (e.g. a learning rate too high) is a failed trial, not an error of the command; the
    study keeps it, so a second start trains nothing; trial records stay out of the protocol's tables."""
    from bench.training.studies import Runner, protocol_records
    from bench.training.train import TrainingError

    real, calls = Runner._trained_run, []

    def second_diverges(self, job):
        calls.append(job.run_id)
        if len(calls) == 2:
            raise TrainingError("lr (tune, seed 100) on movielens-100k: non-finite loss nan at epoch 1, step 3")
        return real(self, job)

    monkeypatch.setattr(Runner, "_trained_run", second_diverges)
    results = tmp_path / "results"
    res = tune(tiny, results, "--models", "lr", "--trials", 3, "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "trial 2/3: failed: lr (tune, seed 100) on movielens-100k: non-finite loss" in res.output
    import pandas as pd

    table = pd.read_csv(results / "movielens-100k" / "subsets" / "lr_trials3" / "tuning" / "lr.csv")
    assert list(table["state"]) == ["complete", "fail", "complete"]
    res = tune(tiny, results, "--models", "lr", "--trials", 3, "--workers", 1)
    assert res.exit_code == 0 and trained_now(res.output, "lr") == 0 and len(calls) == 3
    kept, notes = protocol_records(trial_records(results))
    assert kept == [] and notes == ["2 run record(s) left out: tuning trials (python cli.py tune; their test split "
                                    "is never scored)."]


def test_two_workers_finish_the_study_with_the_same_number_of_trials_none_trained_twice(tiny, configs, tmp_path):
    results = tmp_path / "two"
    res = tune(tiny, results, "--models", "lr", "--trials", 4, "--workers", 2)
    assert res.exit_code == 0, res.output
    recs = trial_records(results)
    assert len(recs) == 4 and len({r["run_id"] for r in recs}) == 4
    assert trained_now(res.output, "lr") == 4
    logs = list((results / "logs").glob("*.log"))
    assert len(logs) == 4 and all(p.read_text().count(" run ") == 1 for p in logs)  # nothing trained twice
    res = tune(tiny, results, "--models", "lr", "--trials", 4, "--workers", 2)
    assert res.exit_code == 0 and trained_now(res.output, "lr") == 0


def test_tune_refuses_bad_options(tmp_path):
    res = CliRunner().invoke(cli, ["tune", "--models", "nosuch", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown model 'nosuch'" in res.output
    res = CliRunner().invoke(cli, ["tune", "--trials", "0", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2


def test_space_digest_names_the_study_and_the_trial_variant(configs):
    from bench.training.tuning import model_space

    a = model_space("movielens-100k", "dcn")
    assert a.variant == f"tune-{a.digest[:12]}"
    text = (configs / "movielens-100k.toml").read_text().replace("cross_layers = { int = [1, 6] }",
                                                                 "cross_layers = { int = [1, 4] }")
    (configs / "movielens-100k.toml").write_text(text)
    b = model_space("movielens-100k", "dcn")
    assert b.digest != a.digest and dataclasses.replace(b, digest=a.digest).variant == a.variant
