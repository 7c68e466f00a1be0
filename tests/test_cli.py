"""The CLI never writes over committed results with something else (issue 11): a retrained model
that differs from its record, a bench or ablation of a subset; name lists, --set and --case-seed
checks; the heatmap's colormap and labels. On a tiny synthetic MovieLens-100K."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.metrics import split_metrics
from bench.training.runs import RunStore, sealed
from cli import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("cli"))


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --------------------------------------------------------------------------- visualize-attention


def _figure_study(tiny, tmp_path):
    """A copy of the tiny data, a results folder and the arguments of a 3-case Figure 6 of a
    one-epoch MIAN on them (statistics over seed 0 alone: one run)."""
    data, results = tmp_path / "data", tmp_path / "results"
    shutil.copytree(tiny, data)
    return data, results, ["visualize-attention", "--cases", 3, "--seeds", 1, "--data-dir", data, "--results-dir",
                           results, "--set", "train.max_epochs=1"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("gim_*"))}


def test_a_retrain_that_differs_from_its_record_never_replaces_the_figure(tiny, tmp_path):
    """The record says another model than this machine's retrain gives (a record and test scores
    of another model here, another CPU in real life): the figure goes to local/, the committed one and the record stay,
    the retrain is kept as checkpoint (no second retrain) and still known to differ; --force
    retrains, replaces the record and writes the figure in its folder."""
    data, results, args = _figure_study(tiny, tmp_path)
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/cases3_seeds1"))
    committed = _snapshot(out)
    assert set(committed) == {"gim_heatmap.png", "gim_weights.csv", "gim_summary.json"}
    [record_path] = list((results / "runs").glob("*.json"))
    rid = record_path.stem
    record = json.loads(record_path.read_text())
    true_auc = record["test"]["auc"]
    # "made on another machine": a genuine, sealed record of another model, with that model's test scores
    store = RunStore(results / "runs")
    scores = np.load(store.scores_path(rid), allow_pickle=False)
    scores[:40] = -scores[:40]
    store.save_scores(rid, scores)
    labels, users = store.load_test_keys(record["dataset"], record["fingerprint"])
    record["test"] = split_metrics(labels, scores, users)
    other_auc = record["test"]["auc"]
    assert abs(other_auc - true_auc) > 1e-3
    record_path.write_text(json.dumps(sealed(record)))
    tampered = record_path.read_bytes()
    assert store.checked_scores(record)[1] is None
    (data / "checkpoints" / f"{rid}.pt").unlink()

    res = invoke(*args)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "differs from record" in x)
    assert line.startswith(f"retrained MIAN seed 0 differs from record {rid} (test AUC {true_auc:.4f} vs "
                           f"{other_auc:.4f}; ")
    assert f"{out / 'local'}/" in line and "unchanged" in line and "--force" in line
    assert _snapshot(out) == committed
    assert record_path.read_bytes() == tampered
    local = _snapshot(out / "local")
    assert set(local) == set(committed)
    assert local["gim_weights.csv"] == committed["gim_weights.csv"]  # the same (deterministic) model really
    summary = json.loads(local["gim_summary.json"])
    assert summary["run_id"] == rid and summary["model_differs_from_record"][0].startswith("test AUC")

    # the retrain is kept as checkpoint with its own metrics: no second retrain, still not the record's
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "retraining" not in res.output and "differs from record" in res.output
    assert _snapshot(out) == committed and record_path.read_bytes() == tampered

    res = invoke(*args, "--force")
    assert res.exit_code == 0, res.output
    assert "differs from record" not in res.output
    assert json.loads(record_path.read_text())["test"]["auc"] == true_auc
    assert (out / "gim_weights.csv").read_bytes() == committed["gim_weights.csv"]


def test_a_checkpoint_of_the_recorded_model_writes_the_figure_as_usual(tiny, tmp_path):
    """An exact retrain (same validation history and metrics) and an older checkpoint without
    metrics (a bare state dict) both count as the recorded model."""
    from bench.training.studies import Runner, model_differences

    data, results, args = _figure_study(tiny, tmp_path)
    assert invoke(*args).exit_code == 0
    [record_path] = list((results / "runs").glob("*.json"))
    record = json.loads(record_path.read_text())
    ckpt = data / "checkpoints" / f"{record_path.stem}.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert model_differences(record, saved["trained"]) == []
    torch.save(saved["state_dict"], ckpt)  # the format before checkpoints carried their metrics
    runner = Runner(store=RunStore(results / "runs"), data_dir=data, progress=False)
    assert runner.checkpoint_differences(record) == []
    assert runner.load_model(record) is not None
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "differs from record" not in res.output
    assert not list(results.rglob("local"))


def test_a_bare_checkpoint_of_another_model_is_told_apart_by_scoring_it(tiny, tmp_path):
    """Checkpoints are kept per run id: a retrain of the run into another results folder (on
    another machine: another model) can replace the recorded model's. A bare state dict (no stored
    metrics) is scored again on the validation split; when that differs from the record, the
    figure goes to local/ and the committed one stays."""
    from bench.training.studies import Runner

    data, results, args = _figure_study(tiny, tmp_path)
    assert invoke(*args).exit_code == 0
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/cases3_seeds1"))
    committed = _snapshot(out)
    [record_path] = list((results / "runs").glob("*.json"))
    record = json.loads(record_path.read_text())
    ckpt = data / "checkpoints" / f"{record_path.stem}.pt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] * 1.5  # another model under the same run id
    torch.save(state, ckpt)
    runner = Runner(store=RunStore(results / "runs"), data_dir=data, progress=False)
    diffs = runner.checkpoint_differences(record)
    assert diffs and all("scored again" in d for d in diffs)
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "differs from record" in res.output
    assert _snapshot(out) == committed and set(_snapshot(out / "local")) == set(committed)


def test_model_differences_names_what_differs():
    from bench.training.studies import model_differences

    rec = {"best_epoch": 3, "epochs_run": 5, "steps": 50, "test": {"auc": 0.7107, "logloss": 0.6, "gauc": 0.7},
           "valid": {"auc": 0.69, "logloss": 0.63, "gauc": float("nan")},
           "valid_history": [{"step": 10, "valid": {"auc": 0.6}}, {"step": 20, "valid": {"auc": 0.65}}]}
    assert model_differences(rec, json.loads(json.dumps(rec))) == []
    other = json.loads(json.dumps(rec))
    other["test"]["auc"] = 0.7125
    other["valid"]["logloss"] = 0.63 + 1e-12
    other["best_epoch"] = 4
    other["valid_history"][1]["valid"]["auc"] = 0.66
    diffs = model_differences(rec, other)
    assert diffs[0] == "test AUC 0.7125 vs 0.7107"
    assert "best-epoch validation logloss 0.630000000001 vs 0.630000000000" in diffs
    assert "best epoch 4 vs 3" in diffs
    assert "validation history from evaluation 2 on (2 vs 2 evaluations)" in diffs


def test_report_reads_only_the_protocol_folders_gim_summary(tmp_path, monkeypatch):
    """A local/ (this machine's retrain) summary is never read; a summary marked as another model
    than its record is left out with a note."""
    import bench.report.claims

    results = tmp_path / "results"
    (results / "movielens-100k").mkdir(parents=True)
    shutil.copytree(REPO / "results" / "runs", results / "runs")
    committed = json.loads((REPO / "results" / "movielens-100k" / "gim_summary.json").read_text())
    seen = {}
    real = bench.report.claims.dataset_claims
    monkeypatch.setattr(bench.report.claims, "dataset_claims",
                        lambda records, ds, gim, **kw: seen.setdefault(ds, gim) and False or real(records, ds, gim, **kw))
    # (the first call per dataset is the default reading's; later ones are the claims under the chosen reading)
    local = dict(committed, share_interactive_larger={**committed["share_interactive_larger"], "R_ibim>e_b": 0.0848},
                 model_differs_from_record=["test AUC 0.7125 vs 0.7107"])
    (results / "movielens-100k" / "local").mkdir()
    (results / "movielens-100k" / "local" / "gim_summary.json").write_text(json.dumps(local))
    res = invoke("report", "--results-dir", results)
    assert res.exit_code == 0, res.output
    assert seen["movielens-100k"] is None  # no protocol summary: the local one is not used
    (results / "movielens-100k" / "gim_summary.json").write_text(json.dumps(committed))
    seen.clear()
    res = invoke("report", "--results-dir", results)
    assert seen["movielens-100k"] == committed
    (results / "movielens-100k" / "gim_summary.json").write_text(json.dumps(local))
    seen.clear()
    res = invoke("report", "--results-dir", results)
    assert seen["movielens-100k"] is None
    assert "its model is not the one of run" in (results / "CLAIMS.md").read_text()


# --------------------------------------------------------------------------- subsets


def test_ablate_runs_only_the_chosen_variants_and_pool_under_subsets(tiny, tmp_path):
    results = tmp_path / "results"
    common = ["--seeds", 1, "--data-dir", tiny, "--results-dir", results, "--set", "train.max_epochs=1",
              "--workers", 1]
    res = invoke("ablate", "--variants", "no_gim", "--models", "lr,dcn", *common)
    assert res.exit_code == 0, res.output
    runs = sorted((r["model"], r["variant"]) for r in RunStore(results / "runs").records())
    assert runs == [("dcn", "default"), ("lr", "default"), ("mian", "default"), ("mian", "no_gim")]
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/default+no_gim_base-lr+dcn_seeds1"))
    md = (out / "ablation.md").read_text()
    assert "w/o GIM" in md and "Best baseline (" in md and "w/o IBIM" not in md
    assert "Best baseline chosen among lr, dcn (--models)" in md
    signal = json.loads((out / "input_signal.json").read_text())  # IUIM's / ICIM's inputs, fitted on train
    assert set(signal) == {"user", "context", "balanced_user_context"} and signal["user"] and signal["context"]
    assert 0.0 <= signal.pop("balanced_user_context") <= 1.0
    assert all(0.0 <= v <= 1.0 for g in signal.values() for v in g.values())
    assert "Inputs of IUIM and ICIM on this data" in md and f"(J = {len(signal['user'])})" in md
    assert not list(results.rglob("ablation.md"))[1:]  # that one table only
    # an empty pool: no baseline row, nothing trained again
    res = invoke("ablate", "--variants", "no_gim", "--models", "none", *common)
    assert res.exit_code == 0, res.output
    assert len(list(RunStore(results / "runs").records())) == 4
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/default+no_gim_nobase_seeds1"))
    assert "Best baseline (" not in (out / "ablation.md").read_text()


def test_ablate_and_names_options_refuse_bad_names_in_one_line(tmp_path):
    res = invoke("ablate", "--variants", "post_ln", "--results-dir", tmp_path)
    assert res.exit_code == 2
    assert "post_ln is not a variant of --study ablation; its variants: default, no_iuim" in res.output
    res = invoke("ablate", "--study", "transformer", "--models", "lr", "--results-dir", tmp_path)
    assert res.exit_code == 2 and "only applies to --study ablation" in res.output
    res = invoke("ablate", "--models", "lr,mian", "--results-dir", tmp_path)
    assert res.exit_code == 2 and "unknown baseline 'mian'; expected one or more of lr, wide_deep" in res.output
    res = invoke("ablate", "--models", "none,lr", "--results-dir", tmp_path)
    assert res.exit_code == 2 and "unknown baseline 'none'" in res.output
    res = invoke("reproduce", "--models", "lr,dcn,foo", "--results-dir", tmp_path)
    assert res.exit_code == 2
    from bench.training.registry import MODEL_NAMES

    assert (f"Invalid value for '--models': unknown model 'foo'; expected one or more of {', '.join(MODEL_NAMES)} "
            "(comma-separated or repeated)") in res.output
    assert "Traceback" not in res.output
    res = invoke("bench", "--models", "lr,,dcn", "--results-dir", tmp_path)
    assert res.exit_code == 2 and "unknown model ''" in res.output
    assert not list(tmp_path.rglob("*.md"))


def test_name_lists_take_commas_and_repeats_in_the_order_given():
    import click

    from cli import NameList, _join_names

    @click.command()
    @click.option("--models", type=NameList(["a", "b", "c"], "model", "none"), multiple=True, callback=_join_names)
    def show(models):
        click.echo(repr(models))

    def run(*args):
        return CliRunner().invoke(show, list(args)).output.strip()

    assert run() == "None"
    assert run("--models", "c,a", "--models", "b", "--models", "a") == "['c', 'a', 'b']"
    assert run("--models", " a , b ") == "['a', 'b']"
    assert run("--models", "none") == "[]"
    assert "cannot be given together with names" in run("--models", "none", "--models", "a")


def test_only_the_full_bench_writes_the_efficiency_table():
    """(tests/test_efficiency.py runs a subset bench and checks the table itself is untouched.)"""
    import cli as cli_mod
    from bench.perf.efficiency import BenchOptions
    from bench.training.registry import MODEL_NAMES

    full = BenchOptions(dataset="movielens-100k", cache="x")
    assert cli_mod._bench_subset(full, list(MODEL_NAMES), "deepctr-torch") is None
    assert cli_mod._bench_subset(full, list(MODEL_NAMES), None) == "nopeer"
    assert cli_mod._bench_subset(BenchOptions("movielens-100k", "x", seed=1), ["lr", "dcn"], "deepctr-torch") \
        == "lr+dcn_seed1"
    assert cli_mod._bench_subset(BenchOptions("movielens-100k", "x", accuracy=False), ["lr"], "deepctr-torch") \
        == "lr_noaccuracy"


# --------------------------------------------------------------------------- small checks


def test_the_same_set_key_twice_is_one_clear_error(tmp_path):
    from bench.training.config import ConfigError, check_overrides, parse_overrides

    res = invoke("train", "--model", "lr", "--set", "train.lr=0.1", "--set", "train.lr=0.2", "--results-dir", tmp_path)
    assert res.exit_code == 1
    assert res.output.strip() == "Error: --set train.lr: given twice (train.lr=0.1 and train.lr=0.2); give each key once"
    res = invoke("train", "--model", "lr", "--set", "lr=0.1", "--set", "train.lr=0.2", "--results-dir", tmp_path)
    assert res.exit_code == 1
    assert res.output.strip() == "Error: --set lr and --set train.lr both set train.lr; give it once"
    with pytest.raises(ConfigError, match="both set model.embed_dim"):
        check_overrides(parse_overrides(["embed_dim=8", "model.embed_dim=4"]), ["lr", "mian"])
    with pytest.raises(ConfigError, match="the key is empty"):
        parse_overrides(["=3"])
    assert parse_overrides(["train.lr=0.1", "embed_dim=8"]) == {"train.lr": 0.1, "embed_dim": 8}


def test_negative_case_seed_is_refused_before_any_loading(tmp_path):
    res = invoke("visualize-attention", "--case-seed", -1, "--data-dir", tmp_path / "nowhere", "--results-dir", tmp_path)
    assert res.exit_code == 2
    assert "Invalid value for '--case-seed': -1 is not in the range x>=0." in res.output
    assert not (tmp_path / "nowhere").exists()


def test_heatmap_is_sequential_with_horizontal_row_labels(tmp_path, monkeypatch):
    import matplotlib
    import numpy as np
    import pandas as pd

    from bench.report import figures
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig))
    w = np.random.default_rng(0).dirichlet(np.ones(7), size=5)
    figures.gim_heatmap(pd.DataFrame(w, columns=list(figures.GIM_INPUTS)), tmp_path / "h.png", "t")
    ax = figs[0].axes[0]
    cmap = ax.collections[0].cmap
    assert cmap.name == figures.HEATMAP_CMAP
    # sequential: lightness falls monotonically from 0 to the largest weight
    rgb = cmap(np.linspace(0, 1, 32))[:, :3]
    light = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(light) < 0).all()
    assert [t.get_text() for t in ax.get_yticklabels()] == list(figures.FIGURE6_ROWS)
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())
    matplotlib.pyplot.close("all")


def test_redraw_draws_the_heatmap_from_the_committed_weights_only(tiny, tmp_path):
    data, results, args = _figure_study(tiny, tmp_path)
    assert invoke(*args).exit_code == 0
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/cases3_seeds1"))
    kept = {p: p.read_bytes() for p in (out / "gim_weights.csv", out / "gim_summary.json")}
    (out / "gim_heatmap.png").unlink()
    shutil.rmtree(data / "checkpoints")  # no model is needed
    res = invoke(*args, "--redraw")
    assert res.exit_code == 0, res.output
    assert (out / "gim_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p: p.read_bytes() for p in kept} == kept
    assert not list((results / "runs").glob("*.json.*")) and not (data / "checkpoints").exists()
    before = sorted(p for p in results.rglob("*"))
    res = invoke(*args, "--cases", 4, "--redraw")  # no such figure yet: an error, nothing written
    assert res.exit_code != 0 and res.output.startswith("Error: --redraw needs ")
    assert sorted(p for p in results.rglob("*")) == before


def test_more_cases_than_test_positives_is_an_error_of_the_cases_option(tiny, tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    shutil.copytree(tiny, data)
    res = invoke("visualize-attention", "--cases", 200, "--data-dir", data, "--results-dir", results,
                 "--set", "train.max_epochs=1")
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value for --cases: asked for 200 cases but the split has only 28 candidates" in res.output
    assert not list(results.rglob("gim_*"))


def test_a_run_with_set_overrides_never_changes_claims_md(tiny, tmp_path):
    """CLAIMS.md depends only on the protocol's runs: a run made with --set in the same results
    folder is left out, said on the console, not in the file."""
    results = tmp_path / "results"
    common = ["--data-dir", tiny, "--results-dir", results]
    for model in ("lr", "mian"):
        assert invoke("train", "--model", model, *common).exit_code == 0
    assert invoke("report", "--results-dir", results).exit_code == 0
    before = (results / "CLAIMS.md").read_bytes()
    assert invoke("train", "--model", "lr", "--seed", 1, "--set", "train.lr=0.01", *common).exit_code == 0
    res = invoke("report", "--results-dir", results)
    assert res.exit_code == 0, res.output
    assert "1 run record(s) left out" in res.output
    assert (results / "CLAIMS.md").read_bytes() == before


# --------------------------------------------------------------------------- --backfill


def test_backfill_adds_logloss_selection_to_older_records_only_when_the_retrain_is_the_same_model(tiny, tmp_path):
    results = tmp_path / "results"
    common = ["--models", "lr,din", "--seeds", 1, "--data-dir", tiny, "--results-dir", results,
              "--set", "train.max_epochs=2", "--workers", 1]
    assert invoke("reproduce", *common).exit_code == 0
    store = RunStore(results / "runs")
    made = {r["model"]: r for r in store.records()}
    for model, rec in made.items():  # make them look older: no test_by_logloss / valid_by_logloss
        old = {k: v for k, v in rec.items() if k not in ("test_by_logloss", "valid_by_logloss", "checksum")}
        if model == "din":  # and make DIN's record another model than its retrain gives
            old["test"] = {**old["test"], "auc": old["test"]["auc"] + 0.01}
        store.save(sealed(old))
    res = invoke("reproduce", *common)  # without --backfill nothing trains, nothing is added
    assert res.exit_code == 0 and all("test_by_logloss" not in r for r in store.records())
    res = invoke("reproduce", "--backfill", *common)
    assert res.exit_code == 0, res.output
    now = {r["model"]: r for r in store.records()}
    lr = now["lr"]
    assert lr["test_by_logloss"] == made["lr"]["test_by_logloss"] and lr["valid_by_logloss"] == made["lr"]["valid_by_logloss"]
    assert lr["backfilled"]["fields"] == ["test_by_logloss", "valid_by_logloss"]
    assert lr["created_at"] == made["lr"]["created_at"] and lr["test"] == made["lr"]["test"]  # the record's own run
    assert "test_by_logloss" not in now["din"] and "backfilled" not in now["din"]  # not the same model: kept as it was
    assert store.load(lr["run_id"]) == lr  # sealed again: passes its check
    res = invoke("reproduce", "--backfill", *common)  # LR is complete now; only DIN is retried
    assert res.exit_code == 0 and {r["model"]: r for r in store.records()}["lr"] == lr
