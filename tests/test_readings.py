"""The readings of MIAN (issue 14): config fields left out of the run id at their default, the
readings study's variants and tables, the Figure 6 statistics over seeds (cluster bootstrap) and
the claims rule that uses their interval."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.nn.config import ConfigError, ModelConfig, choice, omitted_at_default, recorded_fields
from bench.report.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, figure6_claims, figure6_verdict
from bench.report.figures import BOOTSTRAP, GIM_INPUTS, PAIRS, share_interval
from bench.training.config import resolve_config
from bench.training.runs import KEY_FIELDS, RESULTS_VERSION, RunStore, run_id
from bench.training.studies import (ABLATION_VARIANTS, READINGS_VARIANTS, STUDY_VARIANTS, study_variant, TRANSFORMER_VARIANTS,
                                    draws_curves, protocol_records)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- config fields left out at their default


@dataclasses.dataclass(frozen=True)
class _Toy(ModelConfig):
    size: int = 4
    mode: str = choice("a", ("a", "b"), omit_at_default=True)
    sizes: tuple[int, ...] = omitted_at_default((2, 3))
    kept: str = choice("x", ("x", "y"))


def test_a_field_omitted_at_default_is_recorded_only_when_set():
    assert recorded_fields(_Toy()) == {"size": 4, "kept": "x"}
    assert recorded_fields(_Toy(mode="b", sizes=(5,))) == {"size": 4, "mode": "b", "sizes": (5,), "kept": "x"}
    assert recorded_fields(_Toy(mode="a", kept="y")) == {"size": 4, "kept": "y"}  # set to its default: left out
    assert _Toy(**recorded_fields(_Toy())) == _Toy()  # the defaults come back
    with pytest.raises(ConfigError, match="mode expects one of a, b, got 'c'"):
        _Toy(mode="c")


def _committed_mian_records():
    return [r for r in RunStore(REPO / "results" / "runs").records()
            if r["model"] == "mian" and r.get("results_version") == RESULTS_VERSION]


def test_committed_mian_records_keep_their_configs_and_run_ids():
    """gim_mode (a field added after the runs) is left out of the resolved config at its default,
    so every committed MIAN record's config is still the one resolve_config gives and its id the
    hash of its key; protocol_records keeps all of them, and a model builds from such a config."""
    from bench.training.registry import build_model
    from conftest import tiny_schema

    from bench.training.tuning import model_space

    recs = _committed_mian_records()
    studies = [r for r in recs if not str(r["variant"]).startswith(("tune-", "tuned-"))]
    assert len(studies) >= 80
    for r in studies:
        overrides = study_variant(r["variant"])[1]
        assert ("gim_mode" in r["config"]["model"]) == ("gim_mode" in overrides)  # recorded only when set
        assert resolve_config(r["dataset"], "mian", overrides, {}, curves=draws_curves("mian", r["variant"])) == r["config"]
    for r in recs:
        assert run_id({k: r[k] for k in KEY_FIELDS}) == r["run_id"]
    for r in (r for r in recs if str(r["variant"]).startswith("tune-")):  # a tuning trial: its sampled values
        sampled = model_space(r["dataset"], "mian").overrides(r["tuning"]["params"])
        sampled = {k: list(v) if isinstance(v, tuple) else v for k, v in sampled.items()}
        assert resolve_config(r["dataset"], "mian", overrides=sampled) == r["config"], r["run_id"]
    every = list(RunStore(REPO / "results" / "runs").records())
    kept, _ = protocol_records(every)
    # every current record but the tuning protocol's (tune- trials, tuned- runs: their own tables)
    assert len(kept) == sum(r.get("results_version") == RESULTS_VERSION
                            and not str(r["variant"]).startswith(("tune-", "tuned-")) for r in every)
    model = build_model("mian", tiny_schema(), next(r for r in recs if r["variant"] == "default")["config"]["model"])
    assert model.cfg.gim_mode == "sum" and model.gim.mode == "sum"


def test_a_reading_that_sets_the_field_records_it_and_gets_its_own_run_id():
    default = resolve_config("movielens-100k", "mian")
    concat = resolve_config("movielens-100k", "mian", {"gim_mode": "concat"})
    assert "gim_mode" not in default["model"] and concat["model"]["gim_mode"] == "concat"
    assert resolve_config("movielens-100k", "mian", None, {"gim_mode": "sum"}) == default  # the same model
    assert {k: v for k, v in concat["model"].items() if k != "gim_mode"} == default["model"]
    with pytest.raises(ConfigError, match="gim_mode expects one of sum, concat, sum_concat, uniform, got 'mean'"):
        resolve_config("movielens-100k", "mian", None, {"gim_mode": "mean"})


# --------------------------------------------------------------------------- the study's variants


def test_readings_variants_share_runs_with_the_other_studies_by_name():
    assert list(READINGS_VARIANTS) == ["default", "gim_concat", "gim_sum_concat", "gim_uniform", "shared_score",
                                       "bilinear_score", "mlp_prelu", "mlp_dice"]
    assert READINGS_VARIANTS["shared_score"][1] == TRANSFORMER_VARIANTS["shared_score"][1]
    for study in (ABLATION_VARIANTS, TRANSFORMER_VARIANTS, READINGS_VARIANTS):
        for name, (_, overrides) in study.items():
            assert STUDY_VARIANTS[name][1] == overrides, name  # one name, one run
    for name, (_, overrides) in READINGS_VARIANTS.items():
        resolve_config("movielens-100k", "mian", overrides)  # every reading is a valid config
        resolve_config("amazon-beauty", "mian", overrides)


def test_protocol_records_know_the_readings():
    recs = []
    for seed, variant in enumerate(("gim_concat", "mlp_dice", "bilinear_score")):
        config = resolve_config("movielens-100k", "mian", READINGS_VARIANTS[variant][1])
        recs.append({"run_id": str(seed), "dataset": "movielens-100k", "model": "mian", "variant": variant,
                     "seed": seed, "fingerprint": "f" * 64, "config": config, "results_version": RESULTS_VERSION})
    recs.append(dict(recs[0], variant="gim_mean"))
    kept, notes = protocol_records(recs)
    assert [r["variant"] for r in kept] == ["gim_concat", "mlp_dice", "bilinear_score"]
    assert notes == ["1 run record(s) left out: unknown study variant."]


# --------------------------------------------------------------------------- the cluster bootstrap


def _weights(larger: np.ndarray) -> np.ndarray:
    """[N, 7] GIM weights where R_ibim > e_b exactly at ``larger`` (and never for the other pairs)."""
    w = np.full((len(larger), 7), 0.1)
    i, b = GIM_INPUTS.index("R_ibim"), GIM_INPUTS.index("e_b")
    w[:, i] = np.where(larger, 0.3, 0.05)
    w[:, b] = np.where(larger, 0.05, 0.3)
    w[:, 0] = 1 - w[:, 1:].sum(1)
    return w


def test_cluster_bootstrap_resamples_users_not_samples():
    """Two users: A (1 sample, R_ibim > e_b) and B (99 samples, never). Drawing 2 users with
    replacement gives AA (share 1) with probability 1/4, AB or BA (1/100) with 1/2, BB (0) with 1/4:
    the 95 % interval is [0, 1]. A bootstrap over samples would stay near 1 %."""
    users = np.array([7] + [3] * 99)
    larger = np.zeros(100, dtype=bool)
    larger[0] = True
    out = share_interval([_weights(larger)], users, replicates=4000, rng_seed=1)
    key = "R_ibim>e_b"
    assert out["share"][key] == pytest.approx(0.01) and out["share_per_seed"][key] == [pytest.approx(0.01)]
    assert out["interval"][key] == [0.0, 1.0]
    assert out["interval"]["R_iuim>e_u"] == [0.0, 0.0] and out["bootstrap"]["users"] == 2
    # the replicates' distribution: a quarter of them are AA
    from bench.report import figures

    boot = _replicates(figures, [_weights(larger)], users, 4000, 1)
    assert np.mean(boot == 1.0) == pytest.approx(0.25, abs=0.03)
    assert np.mean(np.isclose(boot, 0.01)) == pytest.approx(0.5, abs=0.03)


def _replicates(figures, weights, users, replicates, seed):
    """The replicates of R_ibim>e_b written as a loop: each replicate draws the users (the same
    draws as share_interval: numpy default_rng(seed), blocks of rows), pools all samples of every
    drawn user, draws S of the S seeds with replacement (after the block's user draws) and averages
    the drawn seeds' shares."""
    names = np.unique(users)
    rng = np.random.default_rng(seed)
    i, b = GIM_INPUTS.index("R_ibim"), GIM_INPUTS.index("e_b")
    out = []
    for start in range(0, replicates, figures._BOOTSTRAP_BLOCK):
        size = min(figures._BOOTSTRAP_BLOCK, replicates - start)
        draws = rng.integers(0, len(names), size=(size, len(names)))
        seed_draws = rng.integers(0, len(weights), size=(size, len(weights)))
        for row, seeds in zip(draws, seed_draws):
            rows = np.concatenate([np.flatnonzero(users == names[u]) for u in row])
            out.append(np.mean([np.mean(weights[s][rows, i] > weights[s][rows, b]) for s in seeds]))
    return np.array(out)


def test_share_interval_equals_its_loop_transcription_over_users_and_seeds():
    from bench.report import figures

    rng = np.random.default_rng(5)
    users = rng.integers(100, 130, 200)
    weights = [_weights(rng.random(200) < p) for p in (0.3, 0.5, 0.6)]
    out = share_interval(weights, users, replicates=250, rng_seed=9)
    boot = _replicates(figures, weights, users, 250, 9)
    np.testing.assert_allclose(out["interval"]["R_ibim>e_b"], np.percentile(boot, [2.5, 97.5]), atol=1e-12)
    per_seed = [np.mean(w[:, 4] > w[:, 2]) for w in weights]
    np.testing.assert_allclose(out["share_per_seed"]["R_ibim>e_b"], per_seed)
    assert out["share"]["R_ibim>e_b"] == pytest.approx(np.mean(per_seed))
    assert out["mean_weight"]["R_ibim"] == pytest.approx(np.mean([w[:, 4].mean() for w in weights]))
    assert share_interval(weights, users, replicates=250, rng_seed=9) == out  # a fixed seed: reproducible


def test_share_interval_resamples_the_seeds_too():
    """Seed 0's model has R_ibim > e_b everywhere, seed 1's nowhere: a replicate's share is the
    share of seed 0 among its 2 seed draws, 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    95 % interval is [0, 1] (the seeds' spread is in it); with identical seeds it is a point; with
    one user per sample and one seed, the interval's width is the binomial one
    (2 x 1.96 x sqrt(p (1 - p) / n))."""
    users = np.arange(50)
    out = share_interval([_weights(np.ones(50, bool)), _weights(np.zeros(50, bool))], users)
    assert out["share_per_seed"]["R_ibim>e_b"] == [1.0, 0.0] and out["share"]["R_ibim>e_b"] == 0.5
    np.testing.assert_allclose(out["interval"]["R_ibim>e_b"], [0.0, 1.0])
    same = share_interval([_weights(np.ones(50, bool))] * 2, users)
    np.testing.assert_allclose(same["interval"]["R_ibim>e_b"], [1.0, 1.0])
    n, p = 2000, 0.3
    larger = np.random.default_rng(0).random(n) < p
    lo, hi = share_interval([_weights(larger)], np.arange(n))["interval"]["R_ibim>e_b"]
    q = larger.mean()
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(q * (1 - q) / n), rel=0.12)
    assert lo < q < hi
    assert BOOTSTRAP == {"replicates": 2000, "rng_seed": 2021, "level": 0.95}


def test_share_interval_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="at least one seed"):
        share_interval([], np.arange(3))
    with pytest.raises(ValueError, match=r"\[N, 7\] with N = len\(users\)"):
        share_interval([np.zeros((3, 7)), np.zeros((4, 7))], np.arange(3))


# --------------------------------------------------------------------------- the Figure 6 claim rule


def test_figure6_verdict_needs_the_whole_interval_on_one_side_of_half():
    assert figure6_verdict(0.2, 0.1, (0.51, 0.6)) == REPRODUCED
    assert figure6_verdict(0.1, 0.2, (0.51, 0.6)) == INCONCLUSIVE  # most samples, smaller mean weight
    assert figure6_verdict(0.2, 0.1, (0.45, 0.55)) == INCONCLUSIVE  # e.g. one seed's 50.2 % is not enough
    assert figure6_verdict(0.2, 0.1, (0.40, 0.49)) == NOT_REPRODUCED
    assert figure6_verdict(0.1, 0.2, (0.40, 0.49)) == NOT_REPRODUCED
    assert figure6_verdict(0.2, 0.1, None) == INCONCLUSIVE


def _summary(shares, intervals, means=(0.25, 0.1, 0.2, 0.1, 0.1, 0.13, 0.12)):
    keys = [f"{a}>{b}" for a, b in PAIRS]
    return {"mean_weight": dict(zip(GIM_INPUTS, [1 / 7] * 7)), "n_samples": 1000, "seed": 0,
            "share_interactive_larger": dict(zip(keys, [0.9] * 3)),  # seed 0's: not what the claim reads
            "mean_weight_over_seeds": dict(zip(GIM_INPUTS, means)),
            "share_interactive_larger_over_seeds": dict(zip(keys, shares)),
            "share_interactive_larger_per_seed": {k: [s] * 5 for k, s in zip(keys, shares)},
            "share_interval": dict(zip(keys, intervals)), "bootstrap": {"users": 166, "level": 0.95}}


def test_figure6_claims_read_the_statistics_over_seeds_and_their_interval():
    gim = _summary([0.2, 0.7, 0.502], [[0.15, 0.25], [0.6, 0.8], [0.47, 0.53]])
    rows = {r["claim"]: r for r in figure6_claims(gim)}
    assert rows["Figure 6: GIM weighs R_ibim above e_b"]["verdict"] == NOT_REPRODUCED
    assert rows["Figure 6: GIM weighs R_iuim above e_u"]["verdict"] == REPRODUCED  # 0.13 > 0.10, interval > 50 %
    assert rows["Figure 6: GIM weighs R_icim above e_c"]["verdict"] == INCONCLUSIVE  # 50.2 %, interval spans 50 %
    ours = rows["Figure 6: GIM weighs R_iuim above e_u"]["ours"]
    assert ours.startswith("mean 0.130 vs 0.100; larger in 70.0% of 1000 test samples (mean of 5 seeds: 70.0%")
    assert "95% interval 60.0%-80.0% (bootstrap over 166 test users and the seeds)" in ours
    old = {k: v for k, v in gim.items() if k in ("mean_weight", "share_interactive_larger", "n_samples", "seed")}
    rows = figure6_claims(old)  # a summary written before the interval existed
    assert len(rows) == 3 and all(r["verdict"] == INCONCLUSIVE and "no interval" in r["ours"] for r in rows)
    assert figure6_claims(None) == []


def test_claims_md_states_the_figure6_rule():
    from bench.report.claims import claims_markdown

    md = claims_markdown({"ds": []})
    assert "reproduced only when the interval lies above 50 %" in md and "cluster bootstrap over test users" in md


# --------------------------------------------------------------------------- the tables


def _rec(variant, seed, auc, valid):
    return {"run_id": f"{variant}{seed}", "dataset": "ds", "protocol": "p", "fingerprint": "f", "model": "mian",
            "variant": variant, "seed": seed, "config": {"train": {}, "model": {}}, "n_params": 10,
            "test": {"auc": auc, "logloss": 0.5, "gauc": auc}, "valid": {"auc": valid, "logloss": 0.5, "gauc": valid},
            "wall_seconds": {"train": 1.0, "eval": 1.0}, "results_version": RESULTS_VERSION}


def test_readings_table_has_the_validation_auc_and_names_the_reading_chosen_on_it(tmp_path):
    from bench.report import add_valid_auc_column, variant_table

    variants = {v: READINGS_VARIANTS[v] for v in ("default", "gim_concat", "mlp_dice")}
    recs = [_rec(v, s, 0.70 + d + 0.001 * s, 0.71 + dv + 0.001 * s)
            for s in range(3) for v, d, dv in (("default", 0, 0), ("gim_concat", 0.01, -0.002), ("mlp_dice", 0.002, 0.004))]
    tab = variant_table(recs, "ds", variants, "t", {}, ())
    add_valid_auc_column(tab, recs, "ds")
    assert list(tab.frame.columns[:5]) == ["Method", "Seeds", "AUC", "Logloss", "Valid AUC"]
    csv = tab.csv.set_index("variant")
    assert csv.loc["mlp_dice", "valid_auc_mean"] == pytest.approx(0.715)
    assert (2, "Valid AUC") in tab.bold and (1, "AUC") in tab.bold  # chosen on validation, not on test
    # 3 seeds of 3 readings: not the complete study CLAIMS.md chooses from, so the note says only "highest here"
    assert any("highest in this table: MLP activation Dice" in n for n in tab.notes)
    full = [_rec(v, s, 0.70, 0.70 + (0.01 if v == "mlp_prelu" else 0.02 if v == "gim_uniform" else 0))
            for s in range(5) for v in READINGS_VARIANTS]
    whole = variant_table(full, "ds", READINGS_VARIANTS, "t", {}, ())
    add_valid_auc_column(whole, full, "ds")  # the control gim_uniform is highest but never the chosen reading
    assert any("the reading chosen on it (never on test; controls excluded" in n and n.endswith(
        READINGS_VARIANTS["mlp_prelu"][0] + ".") for n in whole.notes)
    assert not any("paper columns" in n for n in tab.notes)
    assert tab.frame.loc[1, "ΔAUC vs MIAN"] == "+0.0100"


def test_readings_figure6_table_shows_weights_shares_and_intervals(tmp_path):
    from bench.report import readings_figure6_table

    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 300)
    stats = {"default": share_interval([_weights(rng.random(300) < 0.1) for _ in range(2)], users),
             "gim_concat": share_interval([_weights(rng.random(300) < 0.9) for _ in range(2)], users)}
    tab = readings_figure6_table(stats, "ds", READINGS_VARIANTS)
    assert list(tab.frame["Reading"]) == [READINGS_VARIANTS["default"][0], READINGS_VARIANTS["gim_concat"][0]]
    assert list(tab.frame.columns) == ["Reading", "Seeds", "w(e_b)", "w(R_ibim)", "w(e_u)", "w(R_iuim)", "w(e_c)",
                                       "w(R_icim)", "R_ibim > e_b", "R_iuim > e_u", "R_icim > e_c"]
    csv = tab.csv.set_index("variant")
    assert list(csv["verdict_R_ibim_gt_e_b"]) == [NOT_REPRODUCED, REPRODUCED]
    assert (1, "R_ibim > e_b") in tab.bold and (0, "R_ibim > e_b") not in tab.bold
    lo, hi = stats["gim_concat"]["interval"]["R_ibim>e_b"]
    assert tab.frame.loc[1, "R_ibim > e_b"] == f"{stats['gim_concat']['share']['R_ibim>e_b']:.1%} [{lo:.1%}, {hi:.1%}]"
    assert any("GIM weights fixed at 1/7" in n for n in tab.notes)  # left out: its weights are not learned
    tab.write(tmp_path / "readings_gim")
    assert pd.read_csv(tmp_path / "readings_gim.csv")["n_seeds"].tolist() == [2, 2]


# --------------------------------------------------------------------------- the commands, on a tiny MovieLens-100K


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("readings"))


pytestmark = pytest.mark.usefixtures("keep_threads")  # tests/conftest.py


def _invoke(*args):
    from cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_ablate_readings_writes_both_tables_of_the_chosen_readings_under_subsets(tiny, tmp_path):
    results = tmp_path / "results"
    res = _invoke("ablate", "--study", "readings", "--variants", "gim_uniform,gim_sum_concat", "--seeds", 2,
                  "--data-dir", tiny, "--results-dir", results, "--set", "train.max_epochs=1", "--workers", 1)
    assert res.exit_code == 0, res.output
    runs = sorted((r["variant"], r["seed"]) for r in RunStore(results / "runs").records())
    assert runs == [(v, s) for v in ("default", "gim_sum_concat", "gim_uniform") for s in (0, 1)]
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/default+gim_sum_concat+gim_uniform_seeds2"))
    md = (out / "readings.md").read_text()
    assert "MLP on [R_g; r_g] (7.6)" in md and "GIM weights fixed at 1/7 (control)" in md and "Valid AUC" in md
    gim = pd.read_csv(out / "readings_gim.csv")
    assert list(gim["variant"]) == ["default", "gim_sum_concat"] and list(gim["n_seeds"]) == [2, 2]
    assert (gim["share_R_ibim_gt_e_b_low"] <= gim["share_R_ibim_gt_e_b"]).all()
    assert "Left out (no learned GIM weights): GIM weights fixed at 1/7 (control)" in (out / "readings_gim.md").read_text()
    assert not (results / "movielens-100k" / "readings.md").exists()
    res = _invoke("ablate", "--study", "readings", "--models", "lr", "--results-dir", results)
    assert res.exit_code == 2 and "the readings study has no baseline row" in res.output


def test_visualize_attention_summary_has_each_seeds_share_and_the_interval(tiny, tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    shutil.copytree(tiny, data)
    res = _invoke("visualize-attention", "--cases", 3, "--seeds", 2, "--seed", 1, "--data-dir", data,
                  "--results-dir", results, "--set", "train.max_epochs=1", "--workers", 1)
    assert res.exit_code == 0, res.output
    [out] = list((results / "movielens-100k").glob("overrides-*/subsets/seed1_cases3_seeds2"))
    summary = json.loads((out / "gim_summary.json").read_text())
    records = {r["seed"]: r for r in RunStore(results / "runs").records()}
    assert sorted(records) == [0, 1]
    assert summary["seed"] == 1 and summary["run_id"] == records[1]["run_id"]  # the case figure's model
    assert summary["seeds"] == [0, 1] and summary["seed_run_ids"] == [records[0]["run_id"], records[1]["run_id"]]
    for pair in ("R_ibim>e_b", "R_iuim>e_u", "R_icim>e_c"):
        per = summary["share_interactive_larger_per_seed"][pair]
        assert per[1] == pytest.approx(summary["share_interactive_larger"][pair])
        assert summary["share_interactive_larger_over_seeds"][pair] == pytest.approx(np.mean(per))
        lo, hi = summary["share_interval"][pair]
        assert 0 <= lo <= hi <= 1
    assert summary["bootstrap"]["replicates"] == 2000 and "interval, bootstrap over" in res.output and "test users and the seeds" in res.output
    # a model of a statistics seed that is not its record's sends the files to local/
    path = results / "runs" / f"{records[0]['run_id']}.json"
    from bench.training.runs import sealed

    rec = dict(records[0], test={**records[0]["test"], "auc": records[0]["test"]["auc"] - 0.01})
    path.write_text(json.dumps(sealed(rec)))
    res = _invoke("visualize-attention", "--cases", 3, "--seeds", 2, "--seed", 1, "--data-dir", data,
                  "--results-dir", results, "--set", "train.max_epochs=1", "--workers", 1)
    assert res.exit_code == 0, res.output
    assert "the checkpoint of MIAN seed 0 (a retrain on this machine) differs from record" in res.output
    local = json.loads((out / "local" / "gim_summary.json").read_text())
    assert local["model_differs_from_record"][0].startswith("seed 0: test AUC")
    assert json.loads((out / "gim_summary.json").read_text()) == summary


# --------------------------------------------------------------------------- studies on a reading (ablate --reading)


def test_a_study_on_a_reading_composes_overrides_and_reuses_moot_runs():
    from bench.training.studies import (ABLATION_VARIANTS, TABLE4_VARIANTS, TRANSFORMER_VARIANTS, on_reading,
                                        study_variant)

    abl = on_reading("gim_sum_concat", ABLATION_VARIANTS)
    assert list(abl)[0] == "gim_sum_concat" and abl["gim_sum_concat"][1] == {"gim_mode": "sum_concat"}
    assert abl["gim_sum_concat+no_ibim"][1] == {"gim_mode": "sum_concat", "use_ibim": False}
    assert "no_gim" in abl and abl["no_gim"] == ABLATION_VARIANTS["no_gim"]  # GIM off: the reading is moot
    dice = on_reading("mlp_dice", ABLATION_VARIANTS)
    assert dice["mlp_dice+no_gim"][1] == {"mlp_activation": "dice", "use_gim": False}  # not moot
    t4 = on_reading("bilinear_score", {v: TRANSFORMER_VARIANTS[v] for v in TABLE4_VARIANTS})
    assert t4["bilinear_score+no_transformer"][1] == {"ibim_score": "bilinear", "transformer": "none"}
    assert on_reading("default", ABLATION_VARIANTS) == ABLATION_VARIANTS
    for name, (label, over) in {**abl, **dice, **t4}.items():  # every composed name resolves back (protocol_records)
        assert study_variant(name) == (label, over)
    assert study_variant("gim_sum_concat+no_gim") is None and study_variant("nonsense+no_ibim") is None
    assert study_variant("mlp_dice+shared_score") is None  # shared_score is a reading, not a Table 4 row
    with pytest.raises(KeyError, match="unknown reading 'nope'"):
        on_reading("nope", ABLATION_VARIANTS)


def test_the_reading_is_chosen_on_validation_auc_never_test_and_only_once_complete():
    from bench.training.studies import READINGS_VARIANTS, chosen_reading

    def rec(v, seed, valid, test):
        return {"dataset": "d", "model": "mian", "variant": v, "seed": seed, "valid": {"auc": valid},
                "test": {"auc": test}}

    recs = [rec(v, s, 0.70 + (0.01 if v == "mlp_dice" else 0.0), 0.9 if v == "gim_concat" else 0.6)
            for v in READINGS_VARIANTS for s in range(5)]
    best, means = chosen_reading(recs, "d")
    assert best == "mlp_dice" and means["mlp_dice"] == pytest.approx(0.71)  # test AUC (gim_concat) ignored
    assert chosen_reading(recs[:-1], "d") == (None, {})  # a reading lacks a seed: not complete
    tie = [rec(v, s, 0.7, 0.7) for v in READINGS_VARIANTS for s in range(5)]
    assert chosen_reading(tie, "d")[0] == "default"  # a tie keeps the default


def test_ablate_on_a_reading_writes_its_own_tables_and_refuses_bad_readings(tiny, tmp_path):
    from click.testing import CliRunner

    import cli
    from bench.training.runs import RunStore

    results = tmp_path / "results"
    common = ["--seeds", "1", "--data-dir", str(tiny), "--results-dir", str(results), "--set", "train.max_epochs=1",
              "--workers", "1"]
    run = CliRunner().invoke
    res = run(cli.cli, ["ablate", "--reading", "gim_sum_concat", "--variants", "no_gim,no_ibim", "--models", "none",
                        *common])
    assert res.exit_code == 0, res.output
    variants = sorted(r["variant"] for r in RunStore(results / "runs").records())
    assert variants == ["gim_sum_concat", "gim_sum_concat+no_ibim", "no_gim"]
    [md] = list(results.rglob("readings/gim_sum_concat/subsets/*/ablation.md"))
    text = md.read_text()
    assert "every MIAN row on the reading gim_sum_concat" in text and "w/o IBIM [MLP on [R_g; r_g] (7.6)]" in text
    assert not list(results.rglob("ablation.md"))[1:]
    res = run(cli.cli, ["ablate", "--reading", "best", *common])
    assert res.exit_code != 0 and "'best': the readings study of movielens-100k is not complete" in res.output
    assert res.output.count("--reading") == 1  # the option named once
    res = run(cli.cli, ["ablate", "--reading", "default", *common])
    assert res.exit_code != 0 and "leave --reading out" in res.output
    res = run(cli.cli, ["ablate", "--reading", "nope", *common])
    assert res.exit_code != 0 and "'nope' is not a reading" in res.output
    res = run(cli.cli, ["ablate", "--study", "readings", "--reading", "mlp_dice", *common])
    assert res.exit_code != 0 and "applies to --study ablation and transformer" in res.output
