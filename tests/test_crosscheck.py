"""crosscheck: the same run ids trained elsewhere against our records (on a tiny synthetic
MovieLens-100K; the "other machine" is a copy of our records with one model's metrics moved, as
another CPU moves them)."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.training.runs import RESULTS_VERSION, sealed
from cli import cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("xcheck"))


def invoke(*args):
    n = torch.get_num_threads()
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        torch.set_num_threads(n)


def test_crosscheck_compares_run_by_run_keeps_the_records_and_notes_the_tables(tiny, tmp_path):
    results, other = tmp_path / "results", tmp_path / "other"
    study = ["reproduce", "--models", "lr,din", "--seeds", 2, "--set", "train.max_epochs=1", "--data-dir", tiny]
    res = invoke(*study, "--results-dir", results)
    assert res.exit_code == 0, res.output
    shutil.copytree(results / "runs", other / "runs")
    moved = {}
    for path in (other / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["machine"] = {"cpu": "Test CPU", "isa": "AVX2", "arch": "x86_64", "simd": "avx2"}
        if rec["model"] == "din":
            moved[rec["seed"]] = 0.003 if rec["seed"] == 0 else -0.001
            rec["test"]["auc"] += moved[rec["seed"]]
        path.write_text(json.dumps(sealed(rec)))

    res = invoke("crosscheck", "--other", other, "--name", "Test Box", "--results-dir", results)
    assert res.exit_code == 0, res.output
    [out] = list(results.glob("*/cross_machine/test-box.csv"))
    frame = pd.read_csv(out).set_index("model")
    assert frame.loc["lr", "runs"] == 2 and frame.loc["lr", "bit_identical"] == 2
    assert frame.loc["lr", "max_abs_delta_auc"] == 0
    assert frame.loc["din", "bit_identical"] == 0
    assert frame.loc["din", "max_abs_delta_auc"] == pytest.approx(0.003)
    assert frame.loc["din", "mean_abs_delta_auc"] == pytest.approx(0.002)
    assert frame.loc["din", "abs_delta_mean_auc"] == pytest.approx(0.001)
    md = out.with_suffix(".md").read_text()
    assert "Test CPU (torch kernels AVX2)" in md and "crosscheck --other" in md
    kept = sorted(p.name for p in (results / "machines" / "test-box" / "runs").glob("*.json"))
    assert kept == sorted(p.name for p in (other / "runs").glob("*.json"))

    from bench.report.crosscheck import cross_machine_notes

    [note] = cross_machine_notes(results / "movielens-100k")  # what every protocol table of the dataset notes
    assert note.startswith("Another machine (cross_machine/test-box.md, 4 runs of ml100k-ctr-v1 retrained): test AUC "
                           "of a run moves by up to 3.0e-03 (DIN)")
    assert set(frame["results_version"]) == {RESULTS_VERSION}
    # a check made with older code (no results_version column: version 1) says so in the note
    frame.drop(columns="results_version").reset_index().to_csv(out, index=False)
    [note] = cross_machine_notes(results / "movielens-100k")
    assert f"retrained with the code of RESULTS_VERSION 1, not this table's {RESULTS_VERSION})" in note
    res = invoke(*study, "--results-dir", results)  # a table made with --set is of other runs: no note
    assert res.exit_code == 0, res.output
    [table] = list(results.glob("*/**/main_table.md"))
    assert "overrides-" in str(table) and "Another machine" not in table.read_text()


def test_crosscheck_without_common_runs_is_one_error(tiny, tmp_path):
    (tmp_path / "other" / "runs").mkdir(parents=True)
    res = invoke("crosscheck", "--other", tmp_path / "other", "--results-dir", tmp_path / "results")
    assert res.exit_code != 0
    assert res.output.startswith("Error: --other") and "none of its 0 run records" in res.output


def test_a_check_over_two_code_versions_keeps_them_apart():
    """Runs of RESULTS_VERSION 1 and 2 in one comparison: one row per version, never one mixed row,
    and the tables' note reads the newest version's rows."""
    from bench.report.crosscheck import crosscheck_table, cross_machine_notes

    rows = []
    for version, delta in ((1, 0.004), (2, 0.0005)):
        for seed in range(3):
            rows.append({"dataset": "ds", "protocol": "p", "model": "din", "variant": "default", "seed": seed,
                         "results_version": version, "run_id": f"v{version}s{seed}", "identical": False,
                         "same_best_epoch": True, "ours_auc": 0.70 + 0.01 * seed, "theirs_auc": 0.70 + 0.01 * seed + delta,
                         "ours_logloss": 0.6, "theirs_logloss": 0.6, "ours_gauc": 0.7, "theirs_gauc": 0.7})
    table = crosscheck_table(pd.DataFrame(rows), "ds", "ours", "theirs", "test")
    csv = table.csv.set_index("results_version")
    assert list(csv.index) == [1, 2] and list(csv["runs"]) == [3, 3]
    assert csv.loc[1, "max_abs_delta_auc"] == pytest.approx(0.004) and csv.loc[2, "max_abs_delta_auc"] == pytest.approx(0.0005)
    assert "DIN [RESULTS_VERSION 1]" in table.markdown()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cross_machine").mkdir()
        table.csv.to_csv(Path(tmp) / "cross_machine" / "box.csv", index=False)
        [note] = cross_machine_notes(Path(tmp))
    assert "up to 5.0e-04 (DIN)" in note and "6 runs" not in note
