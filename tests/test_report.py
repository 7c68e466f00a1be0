import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report import main_table


def rec(model, seed, auc, logloss, gauc=0.6, dataset="ds"):
    return {
        "run_id": f"{model}{seed}", "dataset": dataset, "protocol": "p-v1", "fingerprint": "ab" * 32,
        "model": model, "variant": "default", "seed": seed, "config": {},
        "test": {"auc": auc, "logloss": logloss, "gauc": gauc},
        "wall_seconds": {"train": 10.0, "eval": 2.0},
    }


@pytest.fixture
def records():
    rs = []
    aucs = {"lr": [0.70, 0.71, 0.72], "din": [0.75, 0.76, 0.74], "dien": [0.74, 0.745, 0.75], "mian": [0.77, 0.78, 0.772]}
    lls = {"lr": [0.60, 0.61, 0.62], "din": [0.55, 0.56, 0.54], "dien": [0.53, 0.535, 0.54], "mian": [0.56, 0.55, 0.57]}
    for m in aucs:
        for s in range(3):
            rs.append(rec(m, s, aucs[m][s], lls[m][s]))
    rs.append(rec("mian", 0, 0.5, 0.9, dataset="other"))  # another dataset: ignored
    return rs, aucs, lls


def test_main_table_rows_stats_marks_and_pvalue(records, tmp_path):
    rs, aucs, lls = records
    tab = main_table(rs, "ds", ["lr", "wide_deep", "din", "dien", "mian"])
    csv = tab.csv.set_index("model")
    assert list(csv.index) == ["lr", "din", "dien", "mian"]  # paper order, missing models skipped
    for m in aucs:
        assert csv.loc[m, "auc_mean"] == pytest.approx(np.mean(aucs[m]))
        assert csv.loc[m, "auc_std"] == pytest.approx(np.std(aucs[m], ddof=1))
        assert csv.loc[m, "logloss_mean"] == pytest.approx(np.mean(lls[m]))
        assert csv.loc[m, "n_seeds"] == 3
    # best baseline by AUC is DIN (0.75 mean) -> Impr, RelaImpr and paired p on MIAN's row
    base = np.mean(aucs["din"])
    ours = np.mean(aucs["mian"])
    assert csv.loc["mian", "impr_auc_pct"] == pytest.approx((ours - base) / base * 100)
    assert csv.loc["mian", "rela_impr_pct"] == pytest.approx(((ours - 0.5) / (base - 0.5) - 1) * 100)
    assert csv.loc["mian", "p_value_auc"] == pytest.approx(stats.ttest_rel(aucs["mian"], aucs["din"]).pvalue)
    assert np.isnan(csv.loc["din", "p_value_auc"])
    # bold = best overall (MIAN AUC, DIEN logloss); underline = best baseline (DIN AUC, DIEN logloss)
    rows = list(tab.frame["Model"])
    assert (rows.index("MIAN"), "AUC") in tab.bold
    assert (rows.index("DIEN"), "Logloss") in tab.bold
    assert (rows.index("DIN"), "AUC") in tab.underline
    assert (rows.index("DIEN"), "Logloss") in tab.underline
    md = tab.markdown()
    assert f"**{np.mean(aucs['mian']):.4f} ± {np.std(aucs['mian'], ddof=1):.4f}**" in md
    assert f"<u>{np.mean(aucs['din']):.4f} ± {np.std(aucs['din'], ddof=1):.4f}</u>" in md
    assert "p-v1" in md and "seeds: 0, 1, 2" in md
    tex = tab.latex()
    assert "\\textbf{" in tex and "\\underline{" in tex and "$\\pm$" in tex
    paths = tab.write(tmp_path / "main_table")
    back = pd.read_csv(paths[1])
    assert list(back.columns[:8]) == ["model", "n_seeds", "auc_mean", "auc_std", "logloss_mean",
                                      "logloss_std", "gauc_mean", "gauc_std"]
    assert len(back) == 4
    assert "paper_books_auc" in back.columns


def test_main_table_without_records_is_an_error(records):
    with pytest.raises(ValueError, match="no run records"):
        main_table(records[0], "nope", ["lr"])


def test_capped_runs_are_named_under_the_table():
    from bench.report import capped_notes

    def rec(model, best, cap=20):
        return {"model": model, "best_epoch": best, "config": {"train": {"max_epochs": cap}}}

    notes = capped_notes([rec("lr", 20), rec("lr", 19), rec("lr", 20), rec("dcn", 3), rec("din", 5, cap=5)])
    assert len(notes) == 2
    assert notes[0].startswith("LR: ") and "in 2 of 3 runs" in notes[0] and "max_epochs = 20" in notes[0]
    assert notes[1].startswith("DIN: ") and "in 1 of 1 runs" in notes[1]


def test_deltas_never_print_minus_zero():
    from bench.report import fmt_delta

    assert fmt_delta(-0.00001) == "+0.0000"
    assert fmt_delta(-0.00006) == "-0.0001"
    assert fmt_delta(0.0123) == "+0.0123"
    assert fmt_delta(-3.4, 0) == "-3"


def test_machines_note_counts_runs_per_machine_and_warns_only_when_they_are_mixed():
    from bench.report import machines_note

    intel = {"cpu": "Intel(R) Xeon(R) Processor", "isa": "AVX512"}
    amd = {"cpu": "AMD EPYC", "isa": "AVX512"}
    one = machines_note([{"machine": intel}] * 3)
    assert one == "runs per machine: Intel(R) Xeon(R) Processor (torch kernels AVX512) 3"
    mixed = machines_note([{"machine": intel}] * 3 + [{"machine": amd}] * 2 + [{}])
    assert mixed.startswith("runs per machine: AMD EPYC (torch kernels AVX512) 2; Intel(R) Xeon(R) Processor "
                            "(torch kernels AVX512) 3; a machine not named (records made before 2026-12-01) 1. ")
    assert "what the machine alone moves" in mixed and "what the machine alone moves" not in one
