"""The executor of a study's missing runs (bench/training/executor.py): the same records in this process, on
two local worker processes and on a Ray cluster; a worker's error raised in the parent as itself;
a killed or terminated study keeps its records, leaves no worker behind, and a rerun trains only
the runs without a record."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.training import train as train_mod
from bench.training.config import ConfigError, parse_overrides
from bench.training.executor import ExecutorError, LocalPool, make_executor
from bench.training.runs import RunStore
from bench.training.studies import Runner
from cli import cli

REPO = Path(__file__).resolve().parents[1]
#: a tiny study: DIN and MIAN (whose float reductions change with the thread count) x 2 seeds
STUDY = ["--models", "din,mian", "--seeds", "2", "--threads", "1", "--set", "train.max_epochs=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datagen import prepare_tiny_ml100k

    return prepare_tiny_ml100k(tmp_path_factory.mktemp("executor"))


def _reproduce(data, results, *extra, study=STUDY):
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(cli, ["reproduce", *study, "--data-dir", str(data), "--results-dir", str(results),
                                       *extra], catch_exceptions=False)
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    return {r["run_id"]: r for r in RunStore(Path(results) / "runs").records()}


def _same_records(a: dict, b: dict) -> None:
    assert set(a) == set(b) and len(a) == 4
    for rid in a:
        for key in ("test", "valid", "valid_history", "best_epoch", "epochs_run", "steps", "threads"):
            assert a[rid][key] == b[rid][key], (rid, key)


def _checkpoints_hold_the_records(data, records: dict, since: float) -> None:
    """Every record's checkpoint was written by this study and holds the recorded model."""
    runner = Runner(data_dir=data, progress=False)
    for rid, rec in records.items():
        assert (Path(data) / "checkpoints" / f"{rid}.pt").stat().st_mtime >= since
        assert runner.checkpoint_differences(rec) == []


def _same_scores(one_dir, other_dir, records: dict) -> None:
    """Every record has its test scores beside it (checked against it), the same as one worker's."""
    one, other = RunStore(Path(one_dir) / "runs"), RunStore(Path(other_dir) / "runs")
    for rid, rec in records.items():
        scores, why = other.checked_scores(rec)
        assert why is None, why
        assert other.scores_path(rid).read_bytes() == one.scores_path(rid).read_bytes()


def _trainers(results) -> set[str]:
    """The process names that the run logs say trained the runs."""
    import re

    return {re.search(r"\[([\w-]+)\] run ", p.read_text()).group(1) for p in (Path(results) / "logs").glob("*.log")}


def test_one_worker_two_workers_and_ray_give_the_same_records(tiny, tmp_path):
    one = _reproduce(tiny, tmp_path / "one", "--workers", "1")
    assert _trainers(tmp_path / "one") == {"MainProcess"}  # --workers 1: no pool
    start = time.time() - 1
    two = _reproduce(tiny, tmp_path / "two", "--workers", "2")
    _same_records(one, two)
    assert all(name.startswith("SpawnProcess-") for name in _trainers(tmp_path / "two"))  # by the pool's workers
    _checkpoints_hold_the_records(tiny, two, start)  # written by the parent from the workers' bytes
    _same_scores(tmp_path / "one", tmp_path / "two", two)  # so are the test scores

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[cluster]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start = time.time() - 1
        on_ray = _reproduce(tiny, tmp_path / "ray", "--cluster", "auto")  # the Ray this process started
        _same_records(one, on_ray)
        _checkpoints_hold_the_records(tiny, on_ray, start)
        _same_scores(tmp_path / "one", tmp_path / "ray", on_ray)
        # a task's error is raised here as itself, not as Ray's wrapper
        with make_executor(cluster="auto") as ex, pytest.raises(ConfigError, match=r"^--set 'nokey': expected key=value$"):
            list(ex.completed(parse_overrides, [["nokey"]]))
    finally:
        ray.shutdown()


def test_workers_and_cluster_exclude_each_other(tmp_path):
    res = CliRunner().invoke(cli, ["reproduce", "--workers", "2", "--cluster", "auto", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--workers and --cluster exclude each other" in res.output


def test_a_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ExecutorError, match=r"--cluster needs Ray, which is not installed: pip install -e '\.\[cluster\]'"):
        make_executor(cluster="auto")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pids, seconds=20.0) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_a_worker_error_is_raised_as_itself_and_sigterm_or_a_dead_worker_stop_the_pool():
    with LocalPool(2, threads=1) as pool:
        with pytest.raises(ConfigError, match=r"^--set 'nokey': expected key=value$"):
            for _, out in pool.completed(parse_overrides, [["train.lr=0.5"], ["nokey"], ["train.lr=0.1"]]):
                assert out in ({"train.lr": 0.5}, {"train.lr": 0.1})
        pids = pool.pids()
    assert pids and _wait_gone(pids) == []  # the pool's workers end with it
    # SIGTERM to the parent: KeyboardInterrupt here, the running calls stopped, the handler restored
    before, pids = signal.getsignal(signal.SIGTERM), []

    def terminate():
        pids.extend(pool.pids())
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(1.0, terminate)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with LocalPool(2) as pool:
            timer.start()
            for _ in pool.completed(time.sleep, [60, 60, 60]):
                raise AssertionError("a call of 60 s ended")
    timer.cancel()
    assert signal.getsignal(signal.SIGTERM) == before
    assert len(pids) == 2 and _wait_gone(pids, 10) == []
    with LocalPool(1) as pool, pytest.raises(ExecutorError, match="a worker process died while training"):
        list(pool.completed(os._exit, [3]))


def _children(pid: int) -> list[int]:
    """The pids of the live processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return out


def _stop_mid_study(data, results, sig) -> list[int]:
    """Start the 8-run study with 2 workers in a subprocess, send it ``sig`` once it has written a
    record, and return the pids of its child processes (taken just before the signal)."""
    args = [sys.executable, str(REPO / "cli.py"), "reproduce", "--models", "lr,din", "--seeds", "4", "--threads", "1",
            "--workers", "2", "--set", "train.max_epochs=3", "--data-dir", str(data), "--results-dir", str(results)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        before = set((Path(results) / "runs").glob("*.json"))
        deadline = time.time() + 120
        while set((Path(results) / "runs").glob("*.json")) <= before and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        workers = _children(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err
    assert len(workers) >= 2, workers  # two workers (and multiprocessing's resource tracker)
    return workers


def test_a_stopped_study_keeps_its_records_and_a_rerun_trains_only_the_rest(tiny, tmp_path, monkeypatch, caplog):
    results = tmp_path / "r"
    runs = results / "runs"
    workers = _stop_mid_study(tiny, results, signal.SIGKILL)
    assert _wait_gone(workers) == [], "worker processes outlived their killed study"  # they notice and end
    done = {r["run_id"]: r for r in RunStore(runs).records()}  # every record written is whole (checked on read)
    assert 0 < len(done) < 8
    mtimes = {p: p.stat().st_mtime_ns for rid in done for p in (runs / f"{rid}.json", results / "logs" / f"{rid}.log")}

    trained = []
    real = train_mod.train_run

    def counting(ds, model, cfg, seed, **kw):
        trained.append((model, seed))
        return real(ds, model, cfg, seed, **kw)

    monkeypatch.setattr(train_mod, "train_run", counting)
    with caplog.at_level("INFO"):
        after = _reproduce(tiny, results, "--workers", "1",
                           study=["--models", "lr,din", "--seeds", "4", "--threads", "1", "--set", "train.max_epochs=3"])
    assert f"8 runs: {len(done)} done, {8 - len(done)} to run" in caplog.text
    assert len(after) == 8 and len(trained) == 8 - len(done)
    assert not {(r["model"], r["seed"]) for r in done.values()} & set(trained)  # nothing trained twice
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # the records (and logs) kept are untouched
    assert all(after[rid] == rec for rid, rec in done.items())
    assert not list(runs.glob(".*.tmp"))  # a temporary of a killed write is cleared by the rerun
