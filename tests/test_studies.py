"""Figure writers, convergence statistics and the claims report, on known inputs."""
import numpy as np
import pandas as pd
import pytest

from bench.training.runs import RESULTS_VERSION

from bench.metrics import split_metrics
from bench.report.claims import (INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, TestEvidence, claims_markdown, combined_verdict,
                                 dataset_claims, main_table_claims, verdict)
from bench.training.runs import RunStore
from bench.report.figures import FIGURE6_ROWS, GIM_INPUTS, convergence_plot, gim_heatmap, gim_summary, select_cases
from bench.report import convergence_curves, steps_to_fraction, variant_table
from bench.training.studies import ABLATION_VARIANTS


def test_heatmap_writer_known_weights(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7), size=14)
    frame = pd.DataFrame(w, columns=list(GIM_INPUTS))
    gim_heatmap(frame, tmp_path / "h.png", "test")
    png = (tmp_path / "h.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the paper's layout: columns (cases) of the 7 x 14 matrix sum to 1
    mat = frame[list(FIGURE6_ROWS)].T.to_numpy()
    assert mat.shape == (7, 14)
    np.testing.assert_allclose(mat.sum(0), 1.0)
    bad = frame.copy()
    bad["e_i"] += 0.5
    with pytest.raises(ValueError, match="sum to 1"):
        gim_heatmap(bad, tmp_path / "bad.png", "bad")
    assert not (tmp_path / "bad.png").exists()


def test_select_cases_is_reproducible_and_positive():
    labels = np.array([0, 1] * 50, dtype=float)
    a = select_cases(labels, 14, 7)
    assert np.array_equal(a, select_cases(labels, 14, 7))
    assert not np.array_equal(a, select_cases(labels, 14, 8))
    assert (labels[a] == 1).all() and len(set(a)) == 14
    with pytest.raises(ValueError, match="only 50"):
        select_cases(labels, 51, 0)


def test_gim_summary_means_and_shares():
    w = np.zeros((4, 7))
    # e_i, e_c, e_b, e_u, R_ibim, R_iuim, R_icim
    w[:, 4] = [0.5, 0.5, 0.1, 0.1]
    w[:, 2] = [0.1, 0.1, 0.5, 0.5]
    w[:, 0] = 1 - w[:, 4] - w[:, 2]
    s = gim_summary(w)
    assert s["mean_weight"]["R_ibim"] == pytest.approx(0.3)
    assert s["share_interactive_larger"]["R_ibim>e_b"] == pytest.approx(0.5)
    assert s["share_interactive_larger"]["R_iuim>e_u"] == 0.0


def _rec(variant, seed, auc, logloss=0.5, model="mian", history=None, dataset="ds"):
    return {"run_id": f"{model}-{variant}-{seed}", "dataset": dataset, "protocol": "p", "fingerprint": "f" * 64,
            "model": model, "variant": variant, "seed": seed, "config": {"train": {"batch_size": 256, "eval_every_steps": 10}},
            "test": {"auc": auc, "logloss": logloss, "gauc": auc}, "wall_seconds": {"train": 1.0, "eval": 1.0},
            "n_params": 100, "valid_history": history or [], "results_version": RESULTS_VERSION}


def _hist(aucs, every=10):
    return [{"step": every * (i + 1), "epoch": 1, "epoch_end": False, "valid": {"auc": a, "logloss": 1 - a}}
            for i, a in enumerate(aucs)]


def test_steps_to_99_percent():
    recs = [_rec("default", 0, 0.8, history=_hist([0.5, 0.79, 0.8, 0.8])),
            _rec("post_ln", 0, 0.8, history=_hist([0.5, 0.6, 0.7, 0.795, 0.8]))]
    steps = steps_to_fraction(convergence_curves(recs, "ds", ["default", "post_ln"]))
    got = dict(zip(steps["variant"], steps["steps"]))
    assert got == {"default": 30, "post_ln": 40}  # 99% of 0.8 = 0.792: 0.79 is short, 0.795 reaches it


def test_convergence_plot_writes_png(tmp_path):
    recs = [_rec(v, s, 0.8, history=_hist(list(np.linspace(0.6, 0.8 - 0.01 * k, 6)) )) for k, v in
            enumerate(["default", "post_ln", "no_transformer"]) for s in range(3)]
    curves = convergence_curves(recs, "ds", ["default", "post_ln", "no_transformer"])
    assert len(curves) == 9 * 6
    convergence_plot(curves, {"default": "Pre-LN", "post_ln": "Post-LN", "no_transformer": "none"}, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_verdict_rule():
    assert verdict(0.01, 0.01, +1) == REPRODUCED
    assert verdict(-0.01, 0.01, +1) == NOT_REPRODUCED
    assert verdict(0.01, 0.2, +1) == INCONCLUSIVE
    assert verdict(-0.01, 0.01, -1) == REPRODUCED
    assert verdict(0.01, float("nan"), +1) == INCONCLUSIVE


def fake_study(mian_gain: float, ibim_drop: float, gim_drop: float):
    """5 seeds; full MIAN = base + mian_gain over the best baseline (DIN)."""
    rng = np.random.default_rng(1)
    recs = []
    for s in range(5):
        noise = rng.normal(0, 0.001)
        base = 0.75 + noise
        recs.append(_rec("default", s, base, model="din"))
        recs.append(_rec("default", s, base - 0.02, model="lr"))
        full = base + mian_gain + rng.normal(0, 0.0005)
        recs.append(_rec("default", s, full, history=_hist([0.6, 0.7, full, full])))
        recs.append(_rec("no_ibim", s, full - ibim_drop + rng.normal(0, 0.0005)))
        recs.append(_rec("no_gim", s, full - gim_drop + rng.normal(0, 0.0005)))
        recs.append(_rec("post_ln", s, full - 0.005 + rng.normal(0, 0.0005), history=_hist([0.6, 0.65, 0.7, full - 0.005])))
    return recs


def _test_split(n_users=300, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users) + 1000, per_user)
    return rng, rng.integers(0, 2, users.size), users


def scored(tmp_path, logits: dict[tuple[str, str, int], np.ndarray], labels, users, histories=None, extra=None):
    """Run records of ``logits`` ((model, variant, seed) -> test logits [N]) whose test metrics are
    those of the logits, the logits kept as their scores in ``tmp_path``, and the TestEvidence over them."""
    store = RunStore(tmp_path / "runs")
    store.save_test_keys("ds", "f" * 64, labels, users)
    recs = []
    for (model, variant, seed), x in logits.items():
        x = np.asarray(x, dtype=np.float32)
        rec = _rec(variant, seed, 0.0, model=model, history=(histories or {}).get((model, variant, seed)))
        rec["test"] = split_metrics(labels, x.astype(np.float64), users)
        rec.update((extra or {}).get((model, variant, seed), {}))
        store.save_scores(rec["run_id"], x)
        recs.append(rec)
    return recs, TestEvidence(store, n_boot=400)


def scored_study(tmp_path, mian_gain: float, ibim_drop: float, gim_drop: float):
    """fake_study's runs with test scores: per seed one noise vector shared by every model (so that
    their differences are precise over test samples), logits = k * (2 y - 1) + noise with strength k:
    DIN 1 (+ a little per seed), LR 0.7, MIAN DIN's + ``mian_gain``, its variants MIAN's - their drop."""
    rng, labels, users = _test_split()
    sign = 2.0 * labels - 1
    logits, hist = {}, {}
    for s in range(5):
        z = rng.normal(size=labels.size)
        k = 1.0 + rng.normal(0, 0.01)
        full = k + mian_gain
        for key, strength in ((("din", "default"), k), (("lr", "default"), 0.7), (("mian", "default"), full),
                              (("mian", "no_ibim"), full - ibim_drop), (("mian", "no_gim"), full - gim_drop),
                              (("mian", "post_ln"), full - 0.1)):
            logits[(*key, s)] = strength * sign + z + rng.normal(0, 0.02, labels.size)
        hist[("mian", "default", s)] = _hist([0.6, 0.7, 0.8, 0.8])
        hist[("mian", "post_ln", s)] = _hist([0.6, 0.65, 0.7] + [0.75] * (s % 2) + [0.8])  # 40 or 50 steps
    return scored(tmp_path, logits, labels, users, hist)


def test_claims_report_verdicts_when_claims_hold(tmp_path):
    recs, evidence = scored_study(tmp_path, 0.2, 0.3, 0.1)
    rows = {r["claim"]: r for r in dataset_claims(recs, "ds", evidence=evidence)}
    for claim in ("Table 2: MIAN's AUC beats the best baseline (din)", "Table 3: removing IBIM lowers AUC",
                  "Table 3: removing IBIM hurts most", "Table 4: Pre-LN beats Post-LN (AUC)"):
        assert rows[claim]["verdict"] == REPRODUCED, rows[claim]
    assert "p users 0.0025 [+0." in rows["Table 2: MIAN's AUC beats the best baseline (din)"]["ours"]  # 1/400: floor
    fig5 = rows["Figure 5: Pre-LN reaches 99% of its best validation AUC in fewer steps than Post-LN"]
    assert fig5["verdict"] == REPRODUCED and "p seeds" in fig5["ours"] and "p users" not in fig5["ours"]  # t-test alone
    # the same records without their scores: no test-metric claim can be reproduced
    bare = {r["claim"]: r for r in dataset_claims(recs, "ds")}
    assert bare["Table 2: MIAN's AUC beats the best baseline (din)"]["verdict"] == INCONCLUSIVE
    assert "p users n/a: no test scores were given to the report" in bare["Table 3: removing IBIM lowers AUC"]["ours"]
    assert bare["Table 3: removing IBIM hurts most"]["verdict"] == INCONCLUSIVE
    # one run's scores missing: its claims say so and are inconclusive; the others keep their verdicts
    gone = next(r for r in recs if r["variant"] == "no_ibim" and r["seed"] == 3)
    RunStore(tmp_path / "runs").scores_path(gone["run_id"]).unlink()
    evidence = TestEvidence(RunStore(tmp_path / "runs"), 400)
    rows = {r["claim"]: r for r in dataset_claims(recs, "ds", evidence=evidence)}
    assert rows["Table 3: removing IBIM lowers AUC"]["verdict"] == INCONCLUSIVE
    assert "p users n/a: no usable test scores for 1 of these " in rows["Table 3: removing IBIM lowers AUC"]["ours"]
    assert evidence.unusable() == {gone["run_id"]: f"run {gone['run_id']} has no scores file ({gone['run_id']}.npy)"}
    assert evidence.summary().startswith(f"1 run(s) without usable test scores: run {gone['run_id']} has no scores")
    assert rows["Table 2: MIAN's AUC beats the best baseline (din)"]["verdict"] == REPRODUCED


def test_claims_report_verdicts_when_claims_fail(tmp_path):
    shares = {"R_ibim>e_b": 0.2, "R_iuim>e_u": 0.7, "R_icim>e_c": 0.45}
    gim = {"mean_weight": dict(zip(GIM_INPUTS, [0.25, 0.1, 0.2, 0.1, 0.1, 0.13, 0.12])), "n_samples": 100,
           "share_interactive_larger": shares, "share_interactive_larger_over_seeds": shares,
           "mean_weight_over_seeds": dict(zip(GIM_INPUTS, [0.25, 0.1, 0.2, 0.1, 0.1, 0.13, 0.12])),
           "share_interval": {"R_ibim>e_b": [0.1, 0.3], "R_iuim>e_u": [0.6, 0.8], "R_icim>e_c": [0.4, 0.52]}}
    recs, evidence = scored_study(tmp_path, -0.2, 0.02, 0.3)
    rows = {r["claim"]: r["verdict"] for r in dataset_claims(recs, "ds", gim, evidence)}
    assert rows["Table 2: MIAN's AUC beats the best baseline (din)"] == NOT_REPRODUCED
    assert rows["Table 3: removing IBIM hurts most"] == NOT_REPRODUCED  # GIM's drop is larger
    assert rows["Figure 6: GIM weighs R_ibim above e_b"] == NOT_REPRODUCED
    assert rows["Figure 6: GIM weighs R_iuim above e_u"] == REPRODUCED
    assert rows["Figure 6: GIM weighs R_icim above e_c"] == INCONCLUSIVE  # the interval spans 50 %
    md = claims_markdown({"ds": dataset_claims(recs, "ds", gim, evidence)})
    assert "not reproduced" in md and "## ds" in md
    assert "the claim is *reproduced* only when both say reproduced" in md and "2000 replicates" in md


def _claim_row(recs, evidence, claim="Table 2: MIAN's AUC beats the best baseline (din)"):
    return next(r for r in main_table_claims(recs, "ds", evidence) if r["claim"] == claim)


def test_a_seed_significant_difference_within_test_sample_noise_is_inconclusive(tmp_path):
    """Two fixed models that rank the test samples differently, the seeds moving them hardly at
    all: the t-test over seeds sees a steady difference, the bootstrap over users sees noise."""
    rng, labels, users = _test_split(n_users=60, per_user=10, seed=3)
    sign = 2.0 * labels - 1
    f_mian, f_din = 1.0 * sign + rng.normal(size=labels.size), 0.97 * sign + rng.normal(size=labels.size)
    logits = {}
    for s in range(5):
        logits[("mian", "default", s)] = f_mian + rng.normal(0, 0.01, labels.size)
        logits[("din", "default", s)] = f_din + rng.normal(0, 0.01, labels.size)
    recs, evidence = scored(tmp_path, logits, labels, users)
    row = _claim_row(recs, evidence)
    a = {r["seed"]: r["test"]["auc"] for r in recs if r["model"] == "mian"}
    b = {r["seed"]: r["test"]["auc"] for r in recs if r["model"] == "din"}
    from bench.report import paired_test
    diff, p_seeds = np.mean([a[s] - b[s] for s in a]), paired_test(a, b)
    boot, _ = evidence.compare(*({r["seed"]: r for r in recs if r["model"] == m} for m in ("mian", "din")), "auc")
    assert diff > 0 and p_seeds < 0.05 and boot.p > 0.05, (diff, p_seeds, boot)  # the case: the tests disagree
    assert verdict(diff, p_seeds, +1) == REPRODUCED  # what the t-test alone said before
    assert row["verdict"] == INCONCLUSIVE
    assert f"p seeds {p_seeds:.2g}" in row["ours"] and f"p users {boot.p:.2g}" in row["ours"]


def test_a_difference_clear_over_test_samples_but_not_over_seeds_is_inconclusive(tmp_path):
    """Per seed the two models share their noise (each seed's difference is precise over test
    samples) but the difference swings between seeds: the bootstrap is significant, the t-test not."""
    rng, labels, users = _test_split(n_users=300, per_user=8, seed=4)
    sign = 2.0 * labels - 1
    logits = {}
    for s, gain in enumerate([0.12, -0.06, 0.15, -0.03, 0.1]):
        z = rng.normal(size=labels.size)
        logits[("mian", "default", s)] = (1.0 + gain) * sign + z
        logits[("din", "default", s)] = 1.0 * sign + z
    recs, evidence = scored(tmp_path, logits, labels, users)
    row = _claim_row(recs, evidence)
    boot, _ = evidence.compare(*({r["seed"]: r for r in recs if r["model"] == m} for m in ("mian", "din")), "auc")
    p_seeds = float(row["ours"].split("p seeds ")[1].split(",")[0])
    assert boot.diff > 0 and boot.p < 0.05 and p_seeds > 0.05, (boot, row["ours"])
    assert row["verdict"] == INCONCLUSIVE


def test_combined_verdict_rule():
    assert combined_verdict(0.01, 0.01, 0.001, +1) == REPRODUCED
    assert combined_verdict(-0.01, 0.01, 0.001, +1) == NOT_REPRODUCED
    assert combined_verdict(0.01, 0.01, 0.2, +1) == INCONCLUSIVE  # the tests disagree
    assert combined_verdict(0.01, 0.2, 0.001, +1) == INCONCLUSIVE
    assert combined_verdict(-0.01, 0.01, None, +1) == INCONCLUSIVE  # bootstrap n/a: never a verdict
    assert combined_verdict(0.01, 0.01, float("nan"), +1) == INCONCLUSIVE
    assert combined_verdict(-0.01, 0.001, 0.001, -1) == REPRODUCED


def test_logloss_claims_say_how_the_models_were_selected_and_show_the_logloss_selection(tmp_path):
    rng, labels, users = _test_split()
    sign = 2.0 * labels - 1
    logits, extra = {}, {}
    for s in range(5):
        z = rng.normal(size=labels.size)
        for model, k in (("mian", 1.3), ("din", 1.0)):
            logits[(model, "default", s)] = k * sign + z
            extra[(model, "default", s)] = {"test_by_logloss": {"epoch": 2, "auc": 0.7, "gauc": 0.7,
                                                                "logloss": (0.55 if model == "mian" else 0.6) + 0.001 * s}}
    recs, evidence = scored(tmp_path, logits, labels, users, extra=extra)
    row = _claim_row(recs, evidence, "Table 2: MIAN's logloss is below the best baseline's (din)")
    assert row["verdict"] == REPRODUCED and "p users 0.0025 [-0." in row["ours"]
    assert "; models selected on validation AUC. Selected on validation logloss: 0.5520 vs 0.6020 (Δ -0.0500, " \
           "p seeds n/a, n=5)" in row["ours"]  # (constant differences: the t-test is undefined)
    del recs[0]["test_by_logloss"]
    row = _claim_row(recs, evidence, "Table 2: MIAN's logloss is below the best baseline's (din)")
    assert "Selected on validation logloss: n/a (the records predate test_by_logloss; `reproduce --backfill`" in row["ours"]


def test_the_paper_numbers_give_the_papers_best_baselines_and_claims_texts():
    """The paper's underlined baselines (MIAN.md 6.1: DIEN, except Deep&Cross for Commercial AUC) and
    the paper column of the claims come from bench.report.paper alone."""
    from bench.report.paper import PAPER_TABLE2, PAPER_TABLE2_LOGLOSS, paper_best_baseline

    assert [paper_best_baseline(PAPER_TABLE2, j, True) for j in range(3)] == ["dien", "dien", "dcn"]
    assert [paper_best_baseline(PAPER_TABLE2_LOGLOSS, j, False) for j in range(3)] == ["dien", "dien", "dien"]
    rows = {r["claim"]: r["paper"] for r in dataset_claims(fake_study(0.01, 0.02, 0.005), "ds")}
    assert rows["Table 2: MIAN's logloss is below the best baseline's (din)"] == \
        "Books 0.4018 vs 0.4100, Electronics 0.1136 vs 0.1225, Commercial 0.3097 vs 0.3151"
    assert rows["Table 2: MIAN's AUC beats the best baseline (din)"] == \
        "Books 0.8209 vs 0.8159, Electronics 0.8913 vs 0.8836, Commercial 0.7674 vs 0.7646"
    assert rows["Table 3: removing IBIM hurts most"] == "Books drop 0.0055 (largest), Electronics 0.0070 (largest)"


def test_ablation_table_rows_deltas_and_pvalues(tmp_path):
    recs = fake_study(0.01, 0.02, 0.005)
    tab = variant_table(recs, "ds", ABLATION_VARIANTS, "t", {}, ("books_auc",), baseline="din")
    csv = tab.csv.set_index("variant")
    assert list(csv.index) == ["default", "no_ibim", "no_gim", "best_baseline"]
    full = np.mean([r["test"]["auc"] for r in recs if r["model"] == "mian" and r["variant"] == "default"])
    nib = np.mean([r["test"]["auc"] for r in recs if r["variant"] == "no_ibim"])
    assert csv.loc["no_ibim", "delta_auc"] == pytest.approx(nib - full)
    assert csv.loc["no_ibim", "p_value_auc"] < 0.01
    assert np.isnan(csv.loc["default", "p_value_auc"])
    tab.write(tmp_path / "ablation")
    back = pd.read_csv(tmp_path / "ablation.csv")
    assert list(back.columns[:7]) == ["variant", "label", "n_seeds", "auc_mean", "auc_std", "logloss_mean", "logloss_std"]


def test_protocol_records_leave_out_overridden_configs_and_other_fingerprints():
    from bench.training.config import resolve_config
    from bench.training.studies import protocol_records

    proto = resolve_config("movielens-100k", "mian", {"use_gim": False}, {})
    good = _rec("no_gim", 0, 0.7, dataset="movielens-100k")
    good["config"] = proto
    debug = _rec("no_gim", 1, 0.6, dataset="movielens-100k")
    debug["config"] = resolve_config("movielens-100k", "mian", {"use_gim": False}, {"train.max_epochs": 1})
    stale = dict(good, seed=2, fingerprint="0" * 64)
    odd = dict(good, variant="my_experiment")
    older = dict(good, seed=4, results_version=RESULTS_VERSION - 1)  # made by code before a results change
    kept, notes = protocol_records([good, debug, stale, dict(good, seed=3), odd, older])
    assert [r["seed"] for r in kept] == [0, 3]
    text = " ".join(notes)
    assert "overrides" in text and "fingerprint" in text and "variant" in text
    assert f"1 run record(s) left out: made by code of another RESULTS_VERSION ({RESULTS_VERSION - 1}" in text


def _runner_on_fake_data():
    """A Runner whose movielens-100k is a stand-in with the fields a run id needs (no data loaded)."""
    from types import SimpleNamespace

    from bench.training.studies import Runner

    fake = SimpleNamespace(protocol="p", name="movielens-100k", fingerprint="f" * 64)
    return Runner(_datasets={"movielens-100k": fake})


def test_only_the_curve_runs_validate_mid_epoch():
    from bench.training.config import load_dataset_config
    from bench.training.studies import (ABLATION_VARIANTS, CONVERGENCE_VARIANTS, TRANSFORMER_VARIANTS, draws_curves,
                                        main_specs, variant_specs)
    from bench.training.train import RunSpec

    every = load_dataset_config("movielens-100k")["curves"]["eval_every_steps"]
    assert every == 50
    runner = _runner_on_fake_data()
    for model in ("lr", "din", "dien"):
        assert runner.resolve(RunSpec("movielens-100k", model, 0))[1]["train"]["eval_every_steps"] == 0
    transformer = {s.variant: s for s in variant_specs("movielens-100k", TRANSFORMER_VARIANTS, [0])}
    for variant in CONVERGENCE_VARIANTS:
        assert draws_curves("mian", variant)
        assert runner.resolve(transformer[variant])[1]["train"]["eval_every_steps"] == every
    assert runner.resolve(transformer["shared_score"])[1]["train"]["eval_every_steps"] == 0
    assert not draws_curves("lr", "default") and not draws_curves("mian", "no_gim")
    # the main table's MIAN, the ablation's full MIAN and the Pre-LN row: one run
    main = [s for s in main_specs("movielens-100k", ["lr", "mian"], [0]) if s.model == "mian"][0]
    ablation = variant_specs("movielens-100k", ABLATION_VARIANTS, [0])[0]
    assert ablation.variant == "default"
    ids = {runner.resolve(s)[0] for s in (main, ablation, transformer["default"])}
    assert len(ids) == 1
    assert runner.resolve(transformer["post_ln"])[0] not in ids
    # a --set cadence wins over [curves], for curve and other runs alike
    for model, variant in (("mian", "default"), ("lr", "default")):
        spec = RunSpec("movielens-100k", model, 0, variant=variant, overrides={"train.eval_every_steps": 7})
        assert runner.resolve(spec)[1]["train"]["eval_every_steps"] == 7


def test_protocol_records_want_each_run_with_its_own_cadence():
    from bench.training.config import resolve_config
    from bench.training.studies import protocol_records

    curve = _rec("post_ln", 0, 0.7, dataset="movielens-100k")
    curve["config"] = resolve_config("movielens-100k", "mian", {"transformer": "post_ln"}, {}, curves=True)
    plain = _rec("default", 0, 0.7, model="lr", dataset="movielens-100k")
    plain["config"] = resolve_config("movielens-100k", "lr", {}, {})
    assert curve["config"]["train"]["eval_every_steps"] == 50 and plain["config"]["train"]["eval_every_steps"] == 0
    curve_without = dict(curve, seed=1, config=resolve_config("movielens-100k", "mian", {"transformer": "post_ln"}, {}))
    plain_with = dict(plain, seed=1, config=resolve_config("movielens-100k", "lr", {}, {}, curves=True))
    kept, notes = protocol_records([curve, plain, curve_without, plain_with])
    assert [(r["model"], r["seed"]) for r in kept] == [("mian", 0), ("lr", 0)]
    assert notes == ["2 run record(s) left out: made with --set overrides or an older config."]


@pytest.mark.parametrize("curves, error", [
    ("eval_every_steps = 0", "eval_every_steps must be an integer >= 1"),
    ("eval_every_steps = 2.5", "eval_every_steps must be an integer >= 1"),
    ("eval_every_steps = true", "eval_every_steps must be an integer >= 1"),
    ("eval_every_step = 50", r"\[curves\]: unknown key\(s\) \['eval_every_step'\]"),
])
def test_a_bad_curves_section_is_refused_naming_the_file(tmp_path, monkeypatch, curves, error):
    from bench.training import config as config_mod

    monkeypatch.setattr(config_mod, "CONFIG_DIR", tmp_path)
    (tmp_path / "toy-data.toml").write_text(f"[train]\nlr = 1e-3\n\n[curves]\n{curves}\n")
    with pytest.raises(config_mod.ConfigError, match=error) as info:
        config_mod.resolve_config("toy-data", "lr")
    assert str(tmp_path / "toy-data.toml") in str(info.value)
    (tmp_path / "toy-data.toml").write_text("[train]\nlr = 1e-3\n\n[curves]\neval_every_steps = 3\n")
    assert config_mod.resolve_config("toy-data", "lr")["train"]["eval_every_steps"] == 0
    assert config_mod.resolve_config("toy-data", "lr", curves=True)["train"]["eval_every_steps"] == 3


def test_set_values_are_type_checked():
    from bench.training.config import ConfigError, check_overrides, resolve_config

    assert resolve_config("movielens-100k", "mian", None, {"use_gim": "False"})["model"]["use_gim"] is False
    for bad in ({"use_gim": "maybe"}, {"n_heads": 2.0}, {"mlp": "200,80"}, {"train.lr": "abc"}, {"train.max_epochs": 0}):
        with pytest.raises(ConfigError):
            resolve_config("movielens-100k", "mian", None, bad)
    check_overrides({"n_heads": 4, "model.embed_dim": 8}, ["lr", "mian"])  # known to one model: fine
    with pytest.raises(ConfigError, match="n_heads"):
        check_overrides({"n_heads": 4}, ["lr", "dcn"])
    # a study-wide model key applies to the models that have it
    assert "n_heads" not in resolve_config("movielens-100k", "dcn", None, {"n_heads": 4}, skip_foreign=True)["model"]


def test_datasets_csv_keeps_rows_of_datasets_not_prepared_here(tmp_path):
    import csv

    from bench.data.stats import CSV_COLUMNS, write_csv_atomic

    row = {c: "" for c in CSV_COLUMNS}
    a = dict(row, dataset="a", split="train", samples=10)
    b = dict(row, dataset="b", split="train", samples=20)
    path = tmp_path / "datasets.csv"
    write_csv_atomic([a, b], path)
    write_csv_atomic([dict(a, samples=11)], path)  # only "a" prepared on this machine
    rows = list(csv.DictReader(open(path)))
    assert {(r["dataset"], r["samples"]) for r in rows} == {("a", "11"), ("b", "20")}


def test_table4_steps_column_covers_the_curve_runs_with_their_cadence(tmp_path):
    from bench.report.studies import transformer_study
    from bench.training.studies import TRANSFORMER_VARIANTS

    def rec(variant, seed, every):
        r = _rec(variant, seed, 0.8 + 0.001 * seed, history=_hist([0.6, 0.79, 0.8, 0.8], every=every or 100))
        r["config"] = {"train": {"batch_size": 256, "eval_every_steps": every}}
        return r

    class FakeRunner:
        def run_all(self, specs, desc):
            return [rec(s.variant, s.seed, 0 if s.variant == "shared_score" else 50) for s in specs]

    transformer_study(FakeRunner(), tmp_path, "ds", TRANSFORMER_VARIANTS, 2, {}, None)
    csv = pd.read_csv(tmp_path / "ds" / "transformer.csv").set_index("variant")
    assert list(csv["steps_to_99pct_mean"].loc[["default", "post_ln", "no_transformer"]]) == [150.0] * 3
    assert np.isnan(csv.loc["shared_score", "steps_to_99pct_mean"])
    md = (tmp_path / "ds" / "transformer.md").read_text()
    assert "validation is evaluated every 50 steps" in md and "every 0" not in md


def test_claims_side_by_side_under_the_reading_chosen_on_validation(tmp_path):
    """MIAN's default loses to DIN; the reading mlp_dice has the best VALIDATION AUC and beats DIN
    on test, gim_concat has the best TEST AUC but a low validation AUC: the side column is
    mlp_dice's and names the Table 2 verdict that depends on the reading."""
    from bench.report.claims import as_reading, reading_claims
    from bench.training.studies import READINGS_VARIANTS

    rng, labels, users = _test_split()
    sign = 2.0 * labels - 1
    logits, extra = {}, {}
    for s in range(5):
        z = rng.normal(size=labels.size)
        logits[("din", "default", s)] = 1.0 * sign + z + rng.normal(0, 0.02, labels.size)
        for v in READINGS_VARIANTS:
            k = {"default": 0.8, "mlp_dice": 1.2, "gim_concat": 1.5}.get(v, 0.9)
            logits[("mian", v, s)] = k * sign + z + rng.normal(0, 0.02, labels.size)
            extra[("mian", v, s)] = {"valid": {"auc": {"mlp_dice": 0.75, "gim_concat": 0.60}.get(v, 0.70)}}
        logits[("mian", "mlp_dice+no_ibim", s)] = 0.9 * sign + z + rng.normal(0, 0.02, labels.size)
        for v in ("post_ln", "no_transformer"):  # Table 4 on the default and on the reading, with curves
            logits[("mian", v, s)] = 0.8 * sign + z + rng.normal(0, 0.02, labels.size)
            logits[("mian", f"mlp_dice+{v}", s)] = 1.1 * sign + z + rng.normal(0, 0.02, labels.size)
    hist = {key: _hist([0.6, 0.7, 0.75, 0.75]) for key in logits if key[0] == "mian"}
    recs, evidence = scored(tmp_path, logits, labels, users, histories=hist, extra=extra)
    seen = as_reading(recs, "mlp_dice")
    assert {r["variant"] for r in seen if r["model"] == "mian"} == {"default", "no_ibim", "post_ln", "no_transformer"}
    assert all(r["run_id"].startswith("mian-mlp_dice") for r in seen if r["model"] == "mian")
    info = reading_claims(recs, "ds", tmp_path / "nonexistent", [], evidence)
    assert info["reading"] == "mlp_dice"  # not gim_concat, the best on test
    base = dataset_claims(recs, "ds", evidence=evidence)
    assert {r["claim"]: r["verdict"] for r in base}["Table 2: MIAN's AUC beats the best baseline (din)"] == NOT_REPRODUCED
    side = {r["claim"]: r["verdict"] for r in info["rows"]}
    assert side["Table 2: MIAN's AUC beats the best baseline (din)"] == REPRODUCED
    assert side["Table 3: removing IBIM lowers AUC"] == REPRODUCED
    assert "Table 4: Pre-LN beats Post-LN (AUC)" in side
    assert any(c.startswith("Figure 5") for c in {r["claim"] for r in base})
    assert not any(c.startswith("Figure 5") for c in side)  # the default reading's alone (its cadence)
    md = claims_markdown({"ds": base}, readings={"ds": info})
    assert "Chosen: **mlp_dice**" in md and "| ours, mlp_dice" in md
    assert "Verdicts that depend on the reading (" in md
    assert "Table 2: MIAN's AUC beats the best baseline (din) (not reproduced -> reproduced)" in md
    assert "not yet (the readings study of ds is not complete" in claims_markdown({"ds": base}, readings={"ds": None})


def test_removing_ibim_hurts_most_needs_a_significantly_larger_drop_either_way(tmp_path):
    """IBIM's and GIM's drops equal up to noise: whichever point estimate is larger, the verdict is
    inconclusive (a larger point estimate alone decides nothing); the rule's text says both tests."""
    recs, evidence = scored_study(tmp_path, 0.2, 0.1, 0.1)
    row = {r["claim"]: r for r in dataset_claims(recs, "ds", evidence=evidence)}["Table 3: removing IBIM hurts most"]
    assert row["verdict"] == INCONCLUSIVE, row
    assert "w/o GIM vs w/o IBIM:" in row["ours"] and "p seeds" in row["ours"] and "p users" in row["ours"]


def test_a_readings_figure6_summary_of_other_runs_is_left_out(tmp_path):
    import json

    from bench.report.claims import reading_claims
    from bench.training.studies import READINGS_VARIANTS

    recs = []
    for s in range(5):
        recs.append(_rec("default", s, 0.8, model="din"))
        for v in READINGS_VARIANTS:
            r = _rec(v, s, 0.8)
            r["valid"] = {"auc": 0.75 if v == "mlp_dice" else 0.7}
            recs.append(r)
    summary = {"seed_run_ids": ["not-a-protocol-run"], "share_interval": {}, "mean_weight_over_seeds": {}}
    (tmp_path / "readings_gim.json").write_text(json.dumps({"mlp_dice": summary}))
    left: list[str] = []
    info = reading_claims(recs, "ds", tmp_path, left)
    assert info["reading"] == "mlp_dice" and not any(r["claim"].startswith("Figure 6") for r in info["rows"])
    assert left and "not protocol runs" in left[0]
    summary["seed_run_ids"] = [f"mian-mlp_dice-{s}" for s in range(5)]
    (tmp_path / "readings_gim.json").write_text(json.dumps({"mlp_dice": summary}))
    left.clear()
    reading_claims(recs, "ds", tmp_path, left)
    assert left == []


def test_a_study_still_running_is_partial_not_a_verdict(tmp_path):
    """Claims whose compared runs share fewer than the protocol's 5 seeds (a study whose records are
    committed as they finish) say "partial (k of 5 seeds)", are counted apart, and are no change of
    verdict in a side-by-side column; the complete claims keep their verdicts."""
    from bench.report.claims import _side_by_side

    recs, evidence = scored_study(tmp_path, 0.2, 0.3, 0.1)
    running = [r for r in recs if not (r["variant"] in ("no_ibim", "post_ln") and r["seed"] >= 2)]
    rows = {r["claim"]: r for r in dataset_claims(running, "ds", evidence=evidence)}
    for claim in ("Table 3: removing IBIM lowers AUC", "Table 3: removing IBIM hurts most",
                  "Table 4: Pre-LN beats Post-LN (AUC)",
                  "Figure 5: Pre-LN reaches 99% of its best validation AUC in fewer steps than Post-LN"):
        assert rows[claim]["verdict"] == "partial (2 of 5 seeds)", rows[claim]
    assert "n=2" in rows["Table 3: removing IBIM lowers AUC"]["ours"]
    assert rows["Table 2: MIAN's AUC beats the best baseline (din)"]["verdict"] == REPRODUCED
    assert rows["Table 3: removing GIM lowers AUC"]["verdict"] == REPRODUCED
    md = claims_markdown({"ds": list(rows.values())})
    assert "partial (a study still running): 4" in md and "*partial (k of 5 seeds)*" in md
    complete = dataset_claims(recs, "ds", evidence=evidence)
    _, changed, _, _, _ = _side_by_side(complete, list(rows.values()), "absent")
    assert changed == []


def test_the_reading_section_names_the_commands_only_for_claims_that_a_command_can_add():
    from bench.report.claims import _reading_section

    rows = [{"claim": c, "paper": "", "ours": "x", "verdict": INCONCLUSIVE}
            for c in ("Table 3: removing IBIM lowers AUC", "Figure 5: Pre-LN reaches 99% of its best validation AUC "
                      "in fewer steps than Post-LN")]
    info = {"reading": "gim_concat", "label": "GIM weighted concatenation", "means": {"gim_concat": 0.7, "default": 0.6}}
    done = "\n".join(_reading_section(rows, {**info, "rows": rows[:1]}, "ds"))
    assert "Not run on gim_concat (1 claim(s)): Figure 5 is drawn for the default reading only" in done
    assert "ablate --reading best" not in done
    todo = "\n".join(_reading_section(rows, {**info, "rows": []}, "ds"))
    assert "Not run on gim_concat (2 claim(s)): the ablation and Table 4 on it come from" in todo


def test_a_dataset_without_figure_6_says_so_in_claims_md():
    rows = [{"claim": "Table 2: MIAN's AUC beats the best baseline (din)", "paper": "", "ours": "x",
             "verdict": INCONCLUSIVE}]
    md = claims_markdown({"ds": rows})
    assert "Figure 6: not checked (no usable results/ds/gim_summary.json" in md
    fig6 = rows + [{"claim": "Figure 6: GIM weighs R_ibim above e_b", "paper": "", "ours": "y", "verdict": INCONCLUSIVE}]
    assert "Figure 6: not checked" not in claims_markdown({"ds": fig6})
