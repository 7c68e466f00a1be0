"""The tuned protocol (issue 15, second half): `reproduce --tuned`, `ablate --tuned`, `ablate --study
transformer --tuned` on a tiny synthetic MovieLens-100K after a tiny `tune` (2-epoch protocol): each
model in the best configuration of its study, on seeds distinct from the tuning seed, into
results/<dataset>/tuned/; the ablation and Table 4 variants start from MIAN's tuned configuration;
a missing or partial study is one clear error; the default protocol never picks tuned runs up; the
report shows both protocols side by side and lists the changed verdicts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.training import config as config_mod
from bench.training.runs import RunStore
from cli import cli

REPO = Path(__file__).resolve().parents[1]
TOML = (REPO / "bench" / "training" / "configs" / "movielens-100k.toml").read_text()
DS = "movielens-100k"
TRIALS = 2


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny tune of lr, din and mian (2 trials each), then the three tuned tables on 2 seeds; the
    configs (2 epochs, patience 1) stay patched for the module's tests."""
    from datagen import prepare_tiny_ml100k

    root = tmp_path_factory.mktemp("tuned")
    data = prepare_tiny_ml100k(root)
    folder = root / "configs"
    folder.mkdir()
    (folder / f"{DS}.toml").write_text(TOML.replace("max_epochs = 20", "max_epochs = 2")
                                       .replace("patience = 2", "patience = 1"))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config_mod, "CONFIG_DIR", folder)
        results = root / "results"
        common = ["--data-dir", data, "--results-dir", results, "--threads", 1, "--workers", 1]
        outs = {"tune": invoke("tune", "--models", "lr,din,mian", "--trials", TRIALS, *common)}
        tuned = ["--tuned", "--trials", TRIALS, "--seeds", 2, *common]
        outs["main"] = invoke("reproduce", "--models", "lr,din", *tuned)
        outs["ablation"] = invoke("ablate", "--variants", "no_gim", "--models", "din", *tuned)
        outs["transformer"] = invoke("ablate", "--study", "transformer", "--variants", "post_ln", *tuned)
        yield {"data": data, "results": results, "common": common, "outs": outs}
    torch.set_num_threads(threads)


def records(results) -> list[dict]:
    return list(RunStore(Path(results) / "runs").records())


def best_trials(recs) -> dict[str, dict]:
    """Per model, the trial record with the highest validation AUC (the earlier on a tie)."""
    out = {}
    for r in sorted((r for r in recs if r["variant"].startswith("tune-")), key=lambda r: r["tuning"]["trial"]):
        if r["model"] not in out or r["valid"]["auc"] > out[r["model"]]["valid"]["auc"]:
            out[r["model"]] = r
    return out


def test_the_tuned_tables_use_each_studys_best_configuration_on_seeds_other_than_the_tuning_seed(study):
    for name, res in study["outs"].items():
        assert res.exit_code == 0, (name, res.output)
    recs = records(study["results"])
    best = best_trials(recs)
    tuned = [r for r in recs if r["variant"].startswith("tuned-")]
    assert {r["model"] for r in tuned} == {"lr", "din", "mian"}
    for r in tuned:
        trial = best[r["model"]]
        digest = trial["variant"][len("tune-"):]
        head = f"tuned-{digest}-t{trial['tuning']['trial']}"
        assert r["variant"] == head or r["variant"].startswith(head + "+")
        assert r["seed"] in (0, 1) and r["seed"] != trial["seed"] == 100
        assert r.get("test_scored", True) is not False and RunStore(study["results"] / "runs").has_scores(r)
        if r["variant"] == head:  # the best trial's config itself: the protocol's plus its values
            assert r["config"] == trial["config"] and r["run_id"] != trial["run_id"]
    out = study["results"] / DS / "tuned" / "subsets"
    main = pd.read_csv(out / "lr+din_seeds2_trials2" / "main_table.csv")
    assert list(main["model"]) == ["lr", "din"] and list(main["n_seeds"]) == [2, 2]
    md = (out / "lr+din_seeds2_trials2" / "main_table.md").read_text()
    assert "(tuned protocol)" in md and f"trial {best['din']['tuning']['trial']} of study" in md
    assert "not the tuning seed 100" in md
    manifest = json.loads((out / "lr+din_seeds2_trials2" / "tuned.json").read_text())
    assert manifest["models"]["din"]["trial_run_id"] == best["din"]["run_id"]
    assert {p.name for p in (out / "default+no_gim_base-din_seeds2_trials2").iterdir()} >= {"ablation.md", "ablation.csv"}
    assert (out / "default+post_ln_seeds2_trials2" / "transformer.csv").exists()
    assert not (study["results"] / DS / "main_table.csv").exists()  # nothing written over the default tables
    assert "tuned configuration = trial" in study["outs"]["main"].output


def test_the_ablation_and_transformer_variants_start_from_mians_tuned_config(study):
    recs = records(study["results"])
    mian = best_trials(recs)["mian"]
    params = {k: v for k, v in mian["tuning"]["params"].items()}
    assert params  # the trial sampled something
    tuned = {r["variant"].partition("+")[2] or "default": r for r in recs
             if r["model"] == "mian" and r["variant"].startswith("tuned-") and r["seed"] == 0}
    assert set(tuned) == {"default", "no_gim", "post_ln"}
    base = tuned["default"]["config"]
    assert base == mian["config"]
    for variant, switch in (("no_gim", {"use_gim": False}), ("post_ln", {"transformer": "post_ln"})):
        cfg = tuned[variant]["config"]
        assert cfg["train"] == base["train"]  # the tuned lr, batch size, regulariser
        assert {k: v for k, v in cfg["model"].items() if k not in switch} == \
               {k: v for k, v in base["model"].items() if k not in switch}
        assert all(cfg["model"][k] == v for k, v in switch.items())
    # the ablation's baseline row is the tuned main table's din run (one run, not trained twice)
    din = [r for r in recs if r["model"] == "din" and r["variant"].startswith("tuned-")]
    assert len(din) == 2


def test_neither_protocol_picks_the_others_runs(study):
    from bench.report.claims import tuned_claims
    from bench.training.studies import protocol_records, study_variant
    from bench.training.tuned import read_manifest, tuned_protocol_records

    recs = records(study["results"])
    kept, notes = protocol_records(recs)
    assert kept == []  # tuning trials and tuned runs only: none is a default-protocol run
    assert any("runs of the tuned protocol" in n for n in notes)
    folder = study["results"] / DS / "tuned" / "subsets" / "default+no_gim_base-din_seeds2_trials2"
    manifest = read_manifest(folder / "tuned.json")
    fake_default = {**next(r for r in recs if r["variant"].startswith("tuned-")), "variant": "default"}
    shown, _ = tuned_protocol_records([*recs, fake_default], DS, manifest, study_variant)
    assert {r["variant"] for r in shown if r["model"] == "mian"} == {"default", "no_gim", "post_ln"}
    assert len(shown) == len([r for r in recs if r["variant"].startswith("tuned-") and r["model"] in ("din", "mian")])
    assert set(manifest["models"]) == {"din", "mian"}  # the ablation's models: MIAN and its baseline pool
    info = tuned_claims(recs, DS, folder)
    claims = {r["claim"] for r in info["rows"]}
    assert "Table 3: removing GIM lowers AUC" in claims and "Table 4: Pre-LN beats Post-LN (AUC)" in claims
    assert not any(c.startswith("Figure 5") for c in claims)


def test_a_missing_or_partial_study_is_one_clear_error(study):
    res = invoke("reproduce", "--tuned", "--trials", TRIALS, "--models", "lr,dcn,xdeepfm", *study["common"])
    assert res.exit_code == 1
    assert ("the tuning studies of dcn (0/2 trials), xdeepfm (0/2 trials) on movielens-100k are not complete"
            in res.output)
    assert "run `python cli.py tune --dataset movielens-100k --models dcn,xdeepfm --trials 2` first" in res.output
    res = invoke("reproduce", "--tuned", "--trials", 3, "--models", "lr", *study["common"])
    assert res.exit_code == 1 and "lr (2/3 trials)" in res.output
    res = invoke("reproduce", "--tuned", "--models", "lr", *study["common"])  # the default budget: 20
    assert res.exit_code == 1 and "lr (2/20 trials)" in res.output and "--models lr` first" in res.output
    # the tuning seed may not be a table seed
    res = invoke("reproduce", "--tuned", "--trials", TRIALS, "--models", "lr", "--seeds", 101, *study["common"])
    assert res.exit_code == 1 and "include the tuning seed 100" in res.output
    for bad, hint in ((["--set", "train.lr=0.1"], "--set"), (["--study", "readings"], "--tuned"),
                      (["--reading", "gim_concat"], "--tuned")):
        res = invoke("ablate", "--tuned", *bad, *study["common"])
        assert res.exit_code == 2 and hint in res.output, res.output
    res = invoke("reproduce", "--trials", 3, *study["common"])
    assert res.exit_code == 2 and "applies with --tuned only" in res.output
    assert not any(r["model"] in ("dcn", "xdeepfm") for r in records(study["results"]))  # nothing trained


def test_the_report_shows_both_protocols_and_lists_the_changed_verdicts(tmp_path):
    """Fake records: under the default protocol MIAN loses to DIN; under the tuned one it wins."""
    from test_studies import _test_split, scored

    from bench.report.claims import NOT_REPRODUCED, REPRODUCED, claims_markdown, dataset_claims

    rng, labels, users = _test_split()
    sign = 2.0 * labels - 1
    logits = {}
    for s in range(5):
        z = rng.normal(size=labels.size)
        for key, k in ((("din", "default"), 1.0), (("mian", "default"), 0.8), (("mian", "no_ibim"), 0.8),
                       (("din", "tuned"), 1.0), (("mian", "tuned"), 1.4), (("mian", "tuned+no_ibim"), 1.0)):
            logits[(*key, s)] = k * sign + z + rng.normal(0, 0.02, labels.size)
    recs, evidence = scored(tmp_path, logits, labels, users)
    default = [r for r in recs if not r["variant"].startswith("tuned")]
    tuned = [{**r, "variant": r["variant"].partition("+")[2] or "default"} for r in recs
             if r["variant"].startswith("tuned")]
    base = dataset_claims(default, "ds", evidence=evidence)
    rows = [r for r in dataset_claims(tuned, "ds", evidence=evidence) if not r["claim"].startswith("Figure 5")]
    table2 = "Table 2: MIAN's AUC beats the best baseline (din)"
    assert {r["claim"]: r["verdict"] for r in base}[table2] == NOT_REPRODUCED
    assert {r["claim"]: r["verdict"] for r in rows}[table2] == REPRODUCED
    manifest = {"models": {m: {"trial": 1, "valid_auc": 0.7, "budget": 20, "tuning_seed": 100} for m in ("din", "mian")}}
    md = claims_markdown({"ds": base}, tuned={"ds": {"manifest": manifest, "rows": rows, "notes": []}})
    assert "### ds: the claims under the default and the tuned protocol" in md
    assert "| verdict, default protocol (above)" in md and "| ours, tuned protocol" in md
    assert "Verdicts that change under the tuned protocol (" in md
    assert f"{table2} (not reproduced -> reproduced)" in md
    assert "seeds other than the tuning seed 100" in md and "Two protocols:" in md
    none = claims_markdown({"ds": base}, tuned={"ds": None})
    assert "Tuned protocol: not yet (no tuned tables of ds: `python cli.py tune --dataset ds`, then " \
           "`python cli.py reproduce --tuned --dataset ds`" in none


def test_a_claim_against_another_best_baseline_under_each_protocol_is_one_row():
    """Tuning may change which baseline is best: the Table 2 claim is then against DIEN on one side and
    DIN on the other, and is still one claim (one row, one verdict change), the other side naming its model."""
    from bench.report.claims import _side_by_side, claim_key

    assert claim_key("Table 2: MIAN's AUC beats the best baseline (dien)") == "Table 2: MIAN's AUC beats the best baseline"
    assert claim_key("Table 4: Pre-LN beats Post-LN (AUC)") == "Table 4: Pre-LN beats Post-LN (AUC)"
    default = [{"claim": "Table 2: MIAN's AUC beats the best baseline (dien)", "ours": "0.71 vs 0.72", "verdict": "inconclusive"},
               {"claim": "Table 3: removing GIM lowers AUC", "ours": "x", "verdict": "inconclusive"}]
    tuned = [{"claim": "Table 2: MIAN's AUC beats the best baseline (din)", "ours": "0.70 vs 0.72", "verdict": "not reproduced"},
             {"claim": "Table 3: removing GIM lowers AUC", "ours": "y", "verdict": "inconclusive"}]
    table, changed, missing, figure6, only = _side_by_side(default, tuned, "absent")
    assert [row[0] for row in table] == [default[0]["claim"], default[1]["claim"]] and only == [] and missing == []
    assert table[0][2:] == ["against din: 0.70 vs 0.72", "not reproduced"]
    assert table[1][2:] == ["y", "inconclusive"]  # the same claim text: no model named again
    assert changed == ["Table 2: MIAN's AUC beats the best baseline (dien / din) (inconclusive -> not reproduced)"]

    from bench.report.claims import claims_markdown

    manifest = {"models": {"din": {"trial": 1, "valid_auc": 0.7, "budget": 20, "tuning_seed": 100}}}
    fig5 = {"claim": "Figure 5: Pre-LN reaches 99% of its best validation AUC in fewer steps than Post-LN", "paper": "p",
            "ours": "z", "verdict": "inconclusive"}
    for row in default:
        row["paper"] = "p"
    md = claims_markdown({"ds": [*default, fig5]}, tuned={"ds": {"manifest": manifest, "rows": tuned, "notes": []}})
    assert "Not run under the tuned protocol (1 claim(s)): Figure 5 is the default protocol's only" in md
    md = claims_markdown({"ds": [*default, fig5]}, tuned={"ds": {"manifest": manifest, "rows": tuned[1:], "notes": []}})
    assert "Not run under the tuned protocol (2 claim(s)): Table 2 comes from `python cli.py reproduce --tuned" in md


def test_report_puts_the_tuned_claims_beside_the_default_ones(study):
    """`report` with default-protocol runs and a tuned folder: the default claims come from the default
    runs only, the tuned column from the tuned runs only."""
    import shutil

    results = study["results"]
    res = invoke("report", "--results-dir", results)
    assert res.exit_code == 1 and "none of the protocol's" in res.output  # tuned runs are no protocol runs
    res = invoke("reproduce", "--models", "din,mian", "--seeds", 2, *study["common"])
    assert res.exit_code == 0, res.output
    res = invoke("report", "--results-dir", results)
    assert res.exit_code == 0, res.output
    md = (results / "CLAIMS.md").read_text()
    assert "Tuned protocol: not yet (no tuned tables of movielens-100k" in md  # the tuning tables are in subsets/
    (results / DS / "tuning").mkdir()
    (results / DS / "tuning" / "summary.md").write_text("the full tune's summary\n")
    assert invoke("report", "--results-dir", results).exit_code == 0
    assert "Tuned protocol: not yet (the tuning studies of movielens-100k are in results/movielens-100k/tuning/, " \
           "the tuned tables are not: `python cli.py reproduce --tuned --dataset movielens-100k`" \
        in (results / "CLAIMS.md").read_text()
    sub = results / DS / "tuned" / "subsets" / "default+no_gim_base-din_seeds2_trials2" / "tuned.json"
    shutil.copy(sub, results / DS / "tuned" / "tuned.json")  # as the full `reproduce --tuned` would write it
    res = invoke("report", "--results-dir", results)
    assert res.exit_code == 0, res.output
    md = (results / "CLAIMS.md").read_text()
    section = md.split("### movielens-100k: the claims under the default and the tuned protocol")[1]
    lines = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| T")}
    recs = records(results)
    default = {r["model"]: r for r in recs if r["variant"] == "default" and r["seed"] in (0, 1)}
    assert len(default) == 2 and all(r["config"]["train"]["lr"] == 1e-3 for r in default.values())
    both = lines["Table 2: MIAN's AUC beats the best baseline (din)"]
    assert "not run under" not in both and both.count("n=2") == 1  # the default verdict cell, then the tuned run
    only = lines["Table 3: removing GIM lowers AUC"]  # no default ablation here: only the tuned protocol has it
    assert "not run under the default protocol" in only and "n=2" in only
    assert "din trial" in section and "mian trial" in section
    # the default table's claim comes from the default runs, the tuned column from the tuned runs
    top = md.split("## movielens-100k")[1].split("###")[0]
    tuned_auc = [r["test"]["auc"] for r in recs if r["model"] == "mian" and r["variant"].startswith("tuned-")
                 and "+" not in r["variant"]]
    default_auc = [r["test"]["auc"] for r in recs if r["model"] == "mian" and r["variant"] == "default"]
    assert f"{np.mean(default_auc):.4f} vs" in top and f"{np.mean(tuned_auc):.4f} vs" in both
