"""Faults around what the harness writes: untrustworthy run records, unwritable folders, damaged
checkpoints, full disks and interrupted writes. Each test checks the one-line error (or the
recovery) and that nothing already written changed."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench import io as io_mod
from bench.training import studies as studies_mod
from bench.training import train as train_mod
from bench.training.runs import RecordError, RunStore, StoreError, checksum, record_problems, scores_problems, seal, sealed
from bench.training.train import RunSpec
from cli import cli
from test_harness import config, runner  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
DEAD_PID = 99_999_999  # above any Linux pid_max: never a live process


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny prepared movielens-100k and a results folder holding one LR run record."""
    from datagen import prepare_tiny_ml100k

    data = prepare_tiny_ml100k(tmp_path_factory.mktemp("records"))
    results = tmp_path_factory.mktemp("results")
    res = CliRunner().invoke(cli, ["train", "--model", "lr", *_args(data, results)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return data, results


def _args(data, results):
    return ["--data-dir", str(data), "--results-dir", str(results), "--set", "train.max_epochs=1"]


def _copy(tiny, tmp_path):
    data, results = tiny
    shutil.copytree(results, tmp_path / "r")
    return data, tmp_path / "r"


def _one_error(res, *parts):
    """``res`` failed with exactly one line, ``Error: ...``, holding every one of ``parts``."""
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output
    for p in parts:
        assert p in res.output, (p, res.output)


def _no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("trained although the command should have stopped first")

    monkeypatch.setattr(train_mod, "train_run", fail)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- run records (7)

def test_committed_records_pass_their_check():
    store = RunStore(REPO / "results" / "runs")
    records = store.records()
    assert len(records) >= 160 and all(r["checksum"] == checksum(r) for r in records)


def test_an_edited_metric_is_refused_by_every_command_and_force_retrains_it(tiny, tmp_path, monkeypatch):
    data, results = _copy(tiny, tmp_path)
    [path] = list((results / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    record["test"]["auc"] = 0.99  # a hand edit, checksum left as it was
    path.write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")
    edited = path.read_bytes()
    with monkeypatch.context() as m:
        _no_training(m)
        for cmd in (["train", "--model", "lr", *_args(data, results)],
                    ["reproduce", "--models", "lr", "--seeds", "1", *_args(data, results)],
                    ["report", "--results-dir", str(results)]):
            res = CliRunner().invoke(cli, cmd)
            _one_error(res, str(path), "does not match its checksum", f"git checkout -- {path}", "--force")
    assert path.read_bytes() == edited
    assert not (results / "CLAIMS.md").exists() and not (results / "movielens-100k").exists()
    res = CliRunner().invoke(cli, ["train", "--model", "lr", "--force", *_args(data, results)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    again = RunStore(results / "runs").load(path.stem)
    assert again["test"]["auc"] != 0.99 and again["checksum"] == checksum(again)


@pytest.mark.parametrize("content, why", [
    ("null", "expected a JSON object, found NoneType"),
    ('{"test": "abc"}', "run_id: expected a string, found missing"),
    ("not json", "is not valid JSON"),
])
def test_a_record_of_the_wrong_shape_is_refused_by_name(tiny, tmp_path, content, why):
    data, results = _copy(tiny, tmp_path)
    [path] = list((results / "runs").glob("*.json"))
    path.write_text(content)
    for cmd in (["train", "--model", "lr", *_args(data, results)], ["report", "--results-dir", str(results)]):
        _one_error(CliRunner().invoke(cli, cmd), str(path), why, "--force")
    assert path.read_text() == content


def test_record_problems_name_the_key_and_the_type(tiny):
    [path] = list((tiny[1] / "runs").glob("*.json"))
    good = json.loads(path.read_text())
    assert record_problems(good, path.stem) == []
    cases = {
        ("test",): ("abc", "test: expected an object"),
        ("test", "auc"): (float("inf"), "test.auc: expected a finite number"),
        ("valid", "gauc"): ("0.5", "valid.gauc: expected a number, found str"),
        ("seed",): (True, "seed: expected an integer, found bool"),
        ("valid_history",): ([{"epoch": 1}], "valid_history[0].step: expected an integer, found missing"),
        ("config", "train"): (None, "config.train: expected an object"),
    }
    for keys, (value, msg) in cases.items():
        bad = json.loads(path.read_text())
        target = bad
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
        assert any(msg in p for p in record_problems(bad, path.stem)), (keys, record_problems(bad, path.stem))
    assert "not its file name" in record_problems(good, "0" * 16)[0]
    moved = dict(good, seed=good["seed"] + 1)
    assert "run_id is not the hash" in record_problems(moved)[0]


def test_the_selection_on_logloss_is_checked_against_the_records_own_history(tiny):
    [path] = list((tiny[1] / "runs").glob("*.json"))
    good = json.loads(path.read_text())
    assert good["test_by_logloss"]["epoch"] == 1 and good["valid_by_logloss"] == good["valid_history"][-1]["valid"]
    committed = RunStore(REPO / "results" / "runs").load("01abea69baf7566c")
    assert "test_by_logloss" not in committed and record_problems(committed, committed["run_id"]) == []  # older: accepted
    for edit, msg in (
        (lambda r: r["test_by_logloss"].update(epoch=2), "test_by_logloss.epoch: expected 1 (the epoch end of lowest"),
        (lambda r: r["valid_by_logloss"].update(auc=0.1), "valid_by_logloss: expected the validation metrics of epoch 1"),
        (lambda r: r.pop("valid_by_logloss"), "valid_by_logloss: expected an object {auc, logloss, gauc}, found missing"),
        (lambda r: r["test_by_logloss"].update(epoch="1"), "test_by_logloss.epoch: expected an integer, found str"),
        (lambda r: r["test_by_logloss"].update(logloss=float("inf")), "test_by_logloss.logloss: expected a finite"),
    ):
        bad = json.loads(path.read_text())
        edit(bad)
        assert msg in record_problems(sealed(bad), path.stem)[0], (msg, record_problems(sealed(bad), path.stem))


def test_a_trained_run_keeps_its_test_scores_and_they_are_checked_against_its_record(tiny, tmp_path):
    data, results = _copy(tiny, tmp_path)
    store = RunStore(results / "runs")
    [record] = store.records()
    scores_file = results / "scores" / f"{record['run_id']}.npy"
    [keys_file] = list((results / "scores").glob("test-movielens-100k-*.npz"))
    assert keys_file.name == f"test-movielens-100k-{record['fingerprint'][:16]}.npz"
    scores = np.load(scores_file, allow_pickle=False)
    assert scores.dtype == np.float32 and scores.ndim == 1
    got, why = store.checked_scores(record)
    assert why is None and np.array_equal(got, scores.astype(np.float64))
    labels, users = store.load_test_keys(record["dataset"], record["fingerprint"])
    assert scores_problems(record, scores, labels, users) == [] and labels.size == scores.size

    def why_not(array=None, raw: bytes | None = None) -> str:
        if raw is not None:
            scores_file.write_bytes(raw)
        else:
            np.save(scores_file, array, allow_pickle=False)
        got, why = store.checked_scores(record)
        assert got is None
        return why

    flipped = scores.copy()
    flipped[:5] = -flipped[:5]
    assert "does not reproduce its record (test auc" in why_not(flipped)
    assert f"{scores.size - 1} scores for a test split of {scores.size} samples" in why_not(scores[:-1])
    assert "cannot be read" in why_not(raw=b"\x93NUMPY garbage")
    np.save(scores_file, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle is never loaded
    assert "cannot be read" in store.checked_scores(record)[1]
    scores_file.unlink()
    assert store.checked_scores(record) == (None, f"run {record['run_id']} has no scores file ({scores_file.name})")
    np.save(scores_file, scores, allow_pickle=False)
    keys_file.unlink()
    assert "no test-split keys" in store.checked_scores(record)[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_named_before_any_metric(tiny, bad):
    [record] = RunStore(tiny[1] / "runs").records()
    store = RunStore(tiny[1] / "runs")
    scores = np.load(store.scores_path(record["run_id"]), allow_pickle=False)
    labels, users = store.load_test_keys(record["dataset"], record["fingerprint"])
    broken = scores.copy()
    broken[[0, 7]] = bad
    assert scores_problems(record, broken, labels, users) == ["2 non-finite scores (NaN or ±inf)"]
    assert scores_problems(record, scores.astype(np.int64), labels, users) == ["scores of dtype int64, expected floats"]


def _train_again(data, results, caplog):
    """Run the tiny fixture's `train` command again (its record exists: nothing trains) and return the log."""
    caplog.clear()
    with caplog.at_level("INFO"):
        res = CliRunner().invoke(cli, ["train", "--model", "lr", *_args(data, results)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return caplog.text


@pytest.mark.parametrize("damage", ["truncate", "nan", "other"])
def test_a_damaged_scores_file_is_replaced_by_the_next_study_command_and_a_good_one_never(tiny, tmp_path, monkeypatch,
                                                                                          caplog, damage):
    data, results = _copy(tiny, tmp_path)
    store = RunStore(results / "runs")
    [record] = store.records()
    path = store.scores_path(record["run_id"])
    good = path.read_bytes()
    scores = np.load(path, allow_pickle=False)
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    else:
        np.save(path, np.where(np.arange(scores.size) < 3, np.nan if damage == "nan" else 0.0, scores), allow_pickle=False)
    assert store.checked_scores(record)[0] is None
    _no_training(monkeypatch)  # the checkpoint gives them
    text = _train_again(data, results, caplog)
    assert f"run {record['run_id']}: its scores file {path.name}" in text and "replacing it" in text
    assert "1 from checkpoints, 0 from retrains; 0 not written (scores differ from the record); 1 replaced" in text
    assert path.read_bytes() == good and store.checked_scores(record)[1] is None
    writes = []
    monkeypatch.setattr(RunStore, "save_scores", lambda *a: writes.append(a))
    text = _train_again(data, results, caplog)
    assert writes == [] and "test scores written" not in text and "replacing" not in text


def test_the_test_keys_file_is_written_again_when_missing_unreadable_or_not_the_datas(tiny, tmp_path, monkeypatch,
                                                                                       caplog):
    data, results = _copy(tiny, tmp_path)
    store = RunStore(results / "runs")
    [record] = store.records()
    [keys_file] = list((results / "scores").glob("test-*.npz"))
    good = keys_file.read_bytes()
    labels, users = store.load_test_keys(record["dataset"], record["fingerprint"])
    scores_before = store.scores_path(record["run_id"]).read_bytes()
    _no_training(monkeypatch)
    damages = {
        "missing": lambda: keys_file.unlink(),
        "truncated": lambda: keys_file.write_bytes(good[: len(good) // 2]),
        "other labels": lambda: np.savez(keys_file, label=1 - labels, user=users),
    }
    for what, damage in damages.items():
        damage()
        assert store.checked_scores(record)[0] is None, what
        text = _train_again(data, results, caplog)
        assert keys_file.read_bytes() == good, what
        assert store.checked_scores(record)[1] is None, what
        if what == "truncated":
            assert f"test-split keys {keys_file} cannot be read" in text
        if what == "other labels":
            assert "hold other labels or users than the prepared data's test split" in text
    assert store.scores_path(record["run_id"]).read_bytes() == scores_before  # the scores were fine all along
    keys_file.write_bytes(b"garbage")
    assert store.checked_scores(record)[1] == (f"run {record['run_id']}: its test-split keys file {keys_file.name} "
                                               "cannot be read")
    keys_file.unlink()
    assert store.checked_scores(record)[1] == f"run {record['run_id']}: no test-split keys file {keys_file.name}"
    store.save_test_keys(record["dataset"], record["fingerprint"], labels, users)
    writes = []
    monkeypatch.setattr("bench.training.runs.atomic_write_bytes", lambda *a: writes.append(a))
    _train_again(data, results, caplog)
    assert writes == []  # a keys file of the data's test split is kept as it is


def _protocol_results(tmp_path) -> tuple[Path, list[dict]]:
    """A results folder with the committed MovieLens-100K records of MIAN and MIAN without IBIM
    (this RESULTS_VERSION), their test scores and the test split's keys."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "scores").mkdir()
    kept = [r for r in RunStore(REPO / "results" / "runs").records()
            if r["dataset"] == "movielens-100k" and r["model"] == "mian" and r["variant"] in ("default", "no_ibim")
            and r["results_version"] == 2]
    for r in kept:
        shutil.copy(REPO / "results" / "runs" / f"{r['run_id']}.json", results / "runs")
        shutil.copy(REPO / "results" / "scores" / f"{r['run_id']}.npy", results / "scores")
    for k in (REPO / "results" / "scores").glob("test-movielens-100k-*.npz"):
        shutil.copy(k, results / "scores")
    return results, sorted(kept, key=lambda r: r["run_id"])


def test_report_names_the_runs_without_usable_scores_once_and_never_crashes_on_them(tmp_path):
    results, recs = _protocol_results(tmp_path)
    assert len(recs) == 10
    truncated, nan = (results / "scores" / f"{recs[i]['run_id']}.npy" for i in (0, 1))
    truncated.write_bytes(truncated.read_bytes()[:200])
    np.save(nan, np.full(np.load(nan).shape, np.nan, dtype=np.float32), allow_pickle=False)
    (results / "scores" / f"{recs[2]['run_id']}.npy").unlink()
    res = CliRunner().invoke(cli, ["report", "--results-dir", str(results)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    [summary] = [line for line in res.output.splitlines() if "without usable test scores" in line]
    assert summary.startswith("3 run(s) without usable test scores: run ")
    for rec, why in zip(recs, ("cannot be read", "non-finite scores", "has no scores file")):
        assert f"run {rec['run_id']}" in summary and why in summary
    assert summary.endswith("Their claims are inconclusive; run the study command that made them (reproduce, "
                            "ablate) again to fill them in.")
    claims = (results / "CLAIMS.md").read_text()
    [row] = [line for line in claims.splitlines() if line.startswith("| Table 3: removing IBIM lowers AUC")]
    assert "p users n/a: no usable test scores for 3 of these 10 runs" in row and "| inconclusive" in row
    assert "Failed to read" not in claims and "without usable test scores" not in claims


def test_report_tells_no_records_from_records_none_of_the_protocols(tiny, tmp_path):
    data, results = _copy(tiny, tmp_path)  # one LR record made with --set train.max_epochs=1
    res = CliRunner().invoke(cli, ["report", "--results-dir", str(results)])
    _one_error(res, f"1 run record(s) under {results / 'runs'}, none of the protocol's: 1 run record(s) left out: "
               "made with --set overrides or an older config.")
    for p in (results / "runs").glob("*.json"):
        p.unlink()
    _one_error(CliRunner().invoke(cli, ["report", "--results-dir", str(results)]),
               f"no run records under {results / 'runs'}; run `reproduce`, `ablate` first")


def test_seal_adds_only_the_checksum(tmp_path):
    src = sorted((REPO / "results" / "runs").glob("*.json"))[:3]
    (tmp_path / "runs").mkdir()
    originals = {}
    for p in src:
        rec = json.loads(p.read_text())
        del rec["checksum"]
        text = json.dumps(rec, sort_keys=True, indent=1) + "\n"
        (tmp_path / "runs" / p.name).write_text(text)
        originals[p.name] = text
    with pytest.raises(RecordError, match="no checksum"):
        RunStore(tmp_path / "runs").records()
    assert len(seal(tmp_path / "runs")) == 3
    for name, text in originals.items():
        new = (tmp_path / "runs" / name).read_text().splitlines()
        old = text.splitlines()
        added = [line for line in new if line not in old]
        assert len(new) == len(old) + 1 and len(added) == 1 and added[0].startswith(' "checksum": "')
        assert (tmp_path / "runs" / name).read_bytes() == (REPO / "results" / "runs" / name).read_bytes()
    assert seal(tmp_path / "runs") == []  # a second pass changes nothing


# --------------------------------------------------------------------------- file-system faults (6)

def test_results_dir_under_a_file_fails_before_any_work(tiny, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(cli, ["train", "--model", "lr", *_args(tiny[0], tmp_path / "file" / "sub")])
    _one_error(res, str(tmp_path / "file" / "sub"), "--results-dir", f"{tmp_path / 'file'} is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_data_dir_env_pointing_to_a_file_is_named(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    (tmp_path / "data").write_text("x")
    monkeypatch.setenv("MIAN_DATA_DIR", str(tmp_path / "data"))
    for cmd in (["train", "--model", "lr", "--results-dir", str(tmp_path / "r")], ["prepare", "movielens-100k"]):
        _one_error(CliRunner().invoke(cli, cmd), f"MIAN_DATA_DIR={tmp_path / 'data'}", "is a file, not a folder",
                   "--data-dir or MIAN_DATA_DIR")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("folder", ["runs", "scores"])
def test_unwritable_runs_or_scores_folder_fails_before_training(tiny, tmp_path, monkeypatch, folder):
    data, results = _copy(tiny, tmp_path)
    before = _snapshot(results)
    real = io_mod.probe

    def probe(path):  # permission bits do not stop root, so the refusal is simulated
        if Path(path) == results / folder:
            raise PermissionError(errno.EACCES, "Permission denied")
        real(path)

    monkeypatch.setattr(io_mod, "probe", probe)
    _no_training(monkeypatch)
    res = CliRunner().invoke(cli, ["train", "--model", "lr", "--seed", "3", *_args(data, results)])
    _one_error(res, f"{results / folder} (from --results-dir {results}) is not writable: Permission denied")
    assert _snapshot(results) == before


def test_unwritable_data_dir_fails_with_its_name(tmp_path):
    if os.geteuid() == 0:  # permission bits do not stop root; sysfs refuses new files to everyone
        data = Path("/sys/kernel")
        if not data.is_dir():
            pytest.skip("no /sys/kernel to stand for a read-only folder")
    else:
        data = tmp_path / "data"
        data.mkdir(mode=0o555)
    res = CliRunner().invoke(cli, ["prepare", "movielens-100k", "--data-dir", str(data)])
    _one_error(res, f"--data-dir {data}", "not writable")


def test_a_record_that_cannot_be_written_names_its_path_and_metrics(runner, monkeypatch):  # noqa: F811
    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=1))

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bench.training.runs.atomic_write_text", full)
    spec = RunSpec("toyset", "toy", 0)
    with pytest.raises(StoreError) as err:
        runner.run(spec)
    rid = runner.resolve(spec)[0]
    assert str(runner.store.path(rid)) in str(err.value) and "No space left" in str(err.value)
    assert "test AUC 0." in str(err.value)


def test_a_truncated_checkpoint_is_treated_as_missing(runner, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr(studies_mod, "resolve_config", lambda ds, m, v, o, **kw: config(max_epochs=1))
    rec, _ = runner.run(RunSpec("toyset", "toy", 0))
    ckpt = runner.checkpoint_dir / f"{rec['run_id']}.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:40])
    record_before = runner.store.path(rec["run_id"]).read_bytes()
    with caplog.at_level("WARNING"):
        again, model = runner.run(RunSpec("toyset", "toy", 0), keep_model=True)
    assert model is None and again == rec
    assert f"checkpoint {ckpt} is damaged" in caplog.text and caplog.text.count("is damaged") == 1
    assert runner.store.path(rec["run_id"]).read_bytes() == record_before


def test_a_full_disk_keeps_the_old_files_and_leaves_no_temporary(tmp_path, monkeypatch):
    old = {tmp_path / "a.md": b"old a", tmp_path / "b.csv": b"old b"}
    for p, b in old.items():
        p.write_bytes(b)
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        io_mod.atomic_write_many({p: b"new" for p in old})
    assert {p: p.read_bytes() for p in old} == old  # neither replaced: the first waits for the second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.csv"]


# --------------------------------------------------------------------------- interrupted writes (10)

def test_stale_temporaries_are_removed_at_start_and_live_ones_kept(tiny, tmp_path):
    data, results = _copy(tiny, tmp_path)
    data = Path(shutil.copytree(data, tmp_path / "d", ignore=shutil.ignore_patterns("checkpoints")))
    raw = data / "raw" / "movielens-100k"
    raw.mkdir(parents=True)
    old = time.time() - 3600
    stale = [results / "runs" / f".0123.json.{DEAD_PID}~abc.tmp", results / "movielens-100k" / ".main_table.md.x1y2.tmp",
             data / "movielens-100k" / f".LATEST.{DEAD_PID}~q.tmp", raw / f".pip-{DEAD_PID}~zz",
             raw / f".u.data.{DEAD_PID}~a.part"]
    live = [results / "runs" / f".0123.json.{os.getpid()}~abc.tmp", results / "movielens-100k" / ".fresh.md.abc.tmp"]
    for p in stale + live:
        p.parent.mkdir(parents=True, exist_ok=True)
        if "pip" in p.name:
            p.mkdir()
            (p / "x.whl").write_bytes(b"w")
        else:
            p.write_text("partial")
    os.utime(stale[1], (old, old))  # an older release's name (no pid): stale once old
    keep = results / "runs" / ".not-ours"
    keep.write_text("x")
    res = CliRunner().invoke(cli, ["train", "--model", "lr", *_args(data, results)], catch_exceptions=False)
    assert res.exit_code == 0 and "already done" in res.output
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in live) and keep.exists()


def test_a_table_is_published_with_one_stamp_and_a_kill_between_renames_shows(tmp_path, monkeypatch):
    import pandas as pd

    from bench.report import main_table
    from test_report import rec

    recs = [rec(m, s, 0.6 + 0.01 * s + (m == "mian") * 0.01, 0.5) for m in ("lr", "mian") for s in range(3)]
    tab = main_table(recs, "ds", ["lr", "mian"])
    paths = tab.write(tmp_path / "main_table")

    def stamps():
        md, csv, tex = paths
        return (md.read_text().rsplit("table stamp ", 1)[1][:12], set(pd.read_csv(csv)["table_stamp"]),
                tex.read_text().rsplit("table stamp ", 1)[1][:12])

    md_stamp, csv_stamp, tex_stamp = stamps()
    assert csv_stamp == {md_stamp} and tex_stamp == md_stamp == tab.stamp()
    before = {p: p.read_bytes() for p in paths}
    tab2 = main_table(recs[:-1], "ds", ["lr", "mian"])
    real = os.replace
    done = []

    def replace(src, dst):
        done.append(dst)
        if len(done) == 2:
            raise KeyboardInterrupt  # interrupted after the md was renamed
        real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after the md was renamed: the md is put back
        tab2.write(tmp_path / "main_table")
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporary left

    done.clear()
    monkeypatch.setattr(io_mod, "_restore", lambda done, backups: None)  # SIGKILL: nothing runs after the md
    with pytest.raises(KeyboardInterrupt):
        tab2.write(tmp_path / "main_table")
    monkeypatch.undo()
    md_stamp2, csv_stamp2, _ = stamps()
    assert md_stamp2 == tab2.stamp() != md_stamp and csv_stamp2 == {md_stamp}  # the mismatch is visible
    assert paths[1].read_bytes() == before[paths[1]] and paths[2].read_bytes() == before[paths[2]]


def test_a_table_file_that_cannot_be_replaced_leaves_the_whole_table_as_it_was(tmp_path, monkeypatch):
    from bench.report import main_table
    from test_report import rec

    recs = [rec(m, s, 0.6 + 0.01 * s + (m == "mian") * 0.01, 0.5) for m in ("lr", "mian") for s in range(3)]
    paths = main_table(recs, "ds", ["lr", "mian"]).write(tmp_path / "main_table")
    before = {p: p.read_bytes() for p in paths}
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".csv"):  # e.g. an immutable file (chattr +i), a full quota
            raise PermissionError(1, "Operation not permitted")
        real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(io_mod.PathError, match=r"main_table.csv cannot be written \(Operation not permitted\); the 3 files"):
        main_table(recs[:-1], "ds", ["lr", "mian"]).write(tmp_path / "main_table")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


# --------------------------------------------------------------------------- seeds

def test_seeds_have_an_upper_bound(tmp_path):
    for cmd in ("reproduce", "ablate"):
        res = CliRunner().invoke(cli, [cmd, "--seeds", "1000000", "--results-dir", str(tmp_path)])
        assert res.exit_code == 2 and "1000000 is not in the range 1<=x<=1000" in res.output
    assert not any(tmp_path.iterdir())


def test_publication_without_hard_links_still_puts_the_old_table_back(tmp_path, monkeypatch):
    """On a file system without hard links the backups are copies: a failed rename still leaves
    the whole table as it was."""
    from bench.report import main_table
    from test_report import rec

    recs = [rec(m, s, 0.6 + 0.01 * s + (m == "mian") * 0.01, 0.5) for m in ("lr", "mian") for s in range(3)]
    paths = main_table(recs, "ds", ["lr", "mian"]).write(tmp_path / "main_table")
    before = {p: p.read_bytes() for p in paths}

    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")

    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".tex"):
            raise PermissionError(1, "Operation not permitted")
        real(src, dst)

    monkeypatch.setattr(io_mod.os, "link", no_link)
    monkeypatch.setattr(io_mod.os, "replace", replace)
    with pytest.raises(io_mod.PathError, match="main_table.tex cannot be written"):
        main_table(recs[:-1], "ds", ["lr", "mian"]).write(tmp_path / "main_table")
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
