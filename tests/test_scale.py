"""bench --scale (issue 16, part 2): sizes, the synthetic McAuley-format writer (bench.perf.synthetic),
per-process peak RSS, the table / plot and the command end to end at a tiny size."""
from __future__ import annotations

import ast
import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.data.sources import amazon
from bench.perf import scale, synthetic
from bench.perf.scale import ScaleOptions, parse_size, parse_sizes, size_label, subset_tag
from bench.perf.synthetic import SyntheticError, SyntheticSpec, write_mcauley_synthetic

DAY = 86_400
FIELDS = ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary", "unixReviewTime",
          "reviewTime"]


# --------------------------------------------------------------------------- sizes and tags

@pytest.mark.parametrize("text, n", [("20k", 20_000), ("100K", 100_000), ("1M", 1_000_000), ("2.5M", 2_500_000),
                                     ("20M", 20_000_000), ("1500", 1_500), ("1G", 10**9), (" 5m ", 5_000_000)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["1X", "", "M", "-5k", "1.0001k", "999", "2G", "1e6", "20 k", "0x10"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match=r"is not a size; expected a whole number of reviews from 1,000"):
        parse_size(text)


def test_parse_sizes_sorts_and_refuses_repeats():
    assert parse_sizes("20M,1M,5M") == (1_000_000, 5_000_000, 20_000_000)
    with pytest.raises(ValueError, match="names a size twice"):
        parse_sizes("1M,1000k")
    assert [size_label(n) for n in (1_500, 20_000, 1_000_000, 2_500_000, 10**9)] == ["1.5k", "20k", "1M", "2.5M", "1G"]


def test_only_the_protocols_run_writes_the_top_level_files():
    assert subset_tag(ScaleOptions()) is None
    assert subset_tag(ScaleOptions(sizes=(20_000, 100_000))) == "sizes20k+100k"
    assert subset_tag(ScaleOptions(seed=3, models=("din",), max_steps=50)) == "seed3_din_steps50"
    assert subset_tag(ScaleOptions(threads=1, keep=True)) is None  # neither changes what is measured


@pytest.mark.parametrize("args, match", [
    (["--scale", "--sizes", "1X"], r"Invalid value for --sizes: '1X' is not a size; expected a whole number"),
    (["--scale", "--sizes", "1M,,5M"], r"Invalid value for --sizes: '' is not a size"),
    (["--sizes", "20k"], r"--sizes applies only with --scale"),
    (["--keep"], r"--keep applies only with --scale"),
    (["--scale", "--dataset", "amazon-beauty"], r"--dataset does not apply to --scale"),
    (["--scale", "--peer", "deepctr-torch"], r"--peer does not apply to --scale"),
])
def test_bad_scale_options_are_one_click_error(args, match, tmp_path):
    from cli import cli

    res = CliRunner().invoke(cli, ["bench", *args, "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and re.search(match, lines[0]), res.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- the synthetic files

SPEC = SyntheticSpec(n_reviews=3_000, seed=7, chunk_lines=700)  # several chunks


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("syn")
    return write_mcauley_synthetic(folder, SPEC)


def _reviews(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return pd.DataFrame([json.loads(line) for line in f])


def test_synthetic_reviews_are_5core_mcauley_lines(written):
    df = _reviews(written.reviews_path)
    assert list(df.columns) == FIELDS
    assert len(df) == SPEC.n_reviews == written.n_reviews
    assert not df.duplicated(["reviewerID", "asin"]).any()
    per_user, per_item = df.groupby("reviewerID").size(), df.groupby("asin").size()
    assert len(per_user) == written.n_users and len(per_item) == written.n_items
    assert per_user.min() >= 5 and per_item.min() >= 5
    # skew: heavy-tailed users, Zipf items (a uniform assignment would give neither)
    assert per_user.max() >= 5 * per_user.median()
    top = per_item.sort_values(ascending=False)
    assert top.iloc[: len(top) // 10].sum() >= 0.2 * len(df)  # twice their share under uniform popularity
    # McAuley's forms: ids, midnight UTC times, "MM D, YYYY" dates that agree with them
    assert df.reviewerID.str.fullmatch(r"A\d{13}").all() and df.asin.str.fullmatch(r"B\d{9}").all()
    assert (df.unixReviewTime % DAY == 0).all()
    dates = pd.to_datetime(df.unixReviewTime, unit="s")
    assert (dates.dt.strftime("%m ") + dates.dt.day.astype(str) + dates.dt.strftime(", %Y")).tolist() == df.reviewTime.tolist()
    assert dates.min() >= pd.Timestamp("1997-01-01") and dates.max() <= pd.Timestamp("2014-07-23")
    assert df.overall.isin([1.0, 2.0, 3.0, 4.0, 5.0]).all()
    assert all(0 <= h <= t for h, t in df.helpful) and (df.reviewText.str.len() >= 1).all()
    assert df.asin.is_monotonic_increasing  # asin order, as McAuley's files
    # same-day reviews of a user exist (ties the protocol must handle)
    assert df.duplicated(["reviewerID", "unixReviewTime"]).any()


def test_synthetic_meta_is_python_literals_with_category_paths(written):
    with gzip.open(written.meta_path, "rt", encoding="utf-8") as f:
        meta = [ast.literal_eval(line) for line in f]
    assert len(meta) == written.n_meta
    asins = [m["asin"] for m in meta]
    reviewed = set(_reviews(written.reviews_path).asin)
    listed = reviewed & set(asins)
    assert 0 < len(reviewed - listed) < 0.05 * len(reviewed)  # a few reviewed items have no meta line
    assert len(set(asins) - reviewed) > 0  # and unreviewed items are listed, as in the real files
    for m in meta:
        assert m["categories"][0][0] == "Books" and len(m["categories"][0]) == 3
        assert set(m) == {"asin", "title", "price", "imUrl", "salesRank", "categories"}
    assert any(len(m["categories"]) == 2 for m in meta)


def test_read_mcauley_reads_the_synthetic_files(written):
    r = amazon.read_mcauley(amazon.acquire("amazon-books", written.reviews_path.parent, written.reviews_path.parent))
    assert len(r.user) == written.n_reviews and len(r.item_ids) == written.n_items
    assert len(np.unique(r.user)) == written.n_users
    assert 0 < (r.categories == -1).sum() < 0.05 * written.n_items


def test_same_seed_same_bytes_other_seed_other_bytes(written, tmp_path):
    again = write_mcauley_synthetic(tmp_path / "a", SPEC)
    assert again.reviews_path.read_bytes() == written.reviews_path.read_bytes()
    assert again.meta_path.read_bytes() == written.meta_path.read_bytes()
    other = write_mcauley_synthetic(tmp_path / "b", SyntheticSpec(n_reviews=3_000, seed=8, chunk_lines=700))
    assert other.reviews_path.read_bytes() != written.reviews_path.read_bytes()


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    real = synthetic.assemble

    def fail_second(m, parts):
        calls.append(m)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(m, parts)

    monkeypatch.setattr(synthetic, "assemble", fail_second)
    with pytest.raises(KeyboardInterrupt):
        write_mcauley_synthetic(tmp_path / "x", SPEC)
    assert list((tmp_path / "x").iterdir()) == []


def test_assemble_equals_python_formatting():
    rng = np.random.default_rng(0)
    m = 500
    a, b = rng.integers(0, 10**7, m), rng.integers(0, 100, m)
    base = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
    start, length = rng.integers(0, 20, m), rng.integers(0, 16, m)
    got = synthetic.assemble(m, ['{"x": ', synthetic.ascii_int(a), ', "p": "', synthetic.ascii_int(b, 4),
                                 '", "t": "', synthetic._Slice(base, start, length), '"}\n'])
    text = bytes(base).decode()
    want = "".join(f'{{"x": {x}, "p": "{y:04d}", "t": "{text[s:s + n]}"}}\n' for x, y, s, n in zip(a, b, start, length))
    assert got.decode() == want
    assert synthetic.ascii_int(np.array([0, 9, 10, 99, 100]))[1].tolist() == [1, 1, 2, 2, 3]


def test_degrees_and_assignment_keep_both_degree_sequences():
    rng = np.random.default_rng(1)
    users = synthetic.degrees(5_000, rng.pareto(1.6, 300) + 1, 5, 100, rng)
    items = synthetic.degrees(5_000, (np.arange(200) + 1.0) ** -0.8, 5, 75, rng)
    assert users.sum() == items.sum() == 5_000 and users.min() >= 5 and users.max() <= 100 and items.max() <= 75
    slots = synthetic.assign_items(users, items, rng, block_slots=1_000)
    assert np.array_equal(np.bincount(slots, minlength=200), items)
    owner = np.repeat(np.arange(300), users)
    assert len(np.unique(owner * 200 + slots)) == 5_000  # no (user, item) twice
    # many blocks (64 x the largest user = 640 slots each): the repeats are removed within each
    users = synthetic.degrees(2_500, rng.pareto(1.6, 300) + 1, 5, 10, rng)
    items = synthetic.degrees(2_500, (np.arange(60) + 1.0) ** -0.8, 5, 75, rng)
    slots = synthetic.assign_items(users, items, rng, block_slots=100)
    owner = np.repeat(np.arange(300), users)
    assert np.array_equal(np.bincount(slots, minlength=60), items) and len(np.unique(owner * 60 + slots)) == 2_500
    with pytest.raises(SyntheticError, match="cannot deal"):
        synthetic.degrees(100, np.ones(30), 5, 50, rng)
    with pytest.raises(SyntheticError, match=r"200 reviews give 16 users and 8 items; expected at least 10"):
        SyntheticSpec(n_reviews=200).counts()
    assert SyntheticSpec(n_reviews=scale.MIN_REVIEWS).counts() == (83, 41)  # the smallest size --sizes takes


# --------------------------------------------------------------------------- child processes

HOG = """
import argparse, json, numpy as np
p = argparse.ArgumentParser(); p.add_argument("step"); p.add_argument("--mb", type=int); p.add_argument("--out")
a = p.parse_args()
if a.mb == -2:
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
if a.mb < 0:
    raise SystemExit(3)
x = np.ones(a.mb * 2**20 // 8)
open(a.out, "w").write(json.dumps({"sum": float(x.sum())}))
"""


def test_each_step_reports_its_own_peak_rss(tmp_path, monkeypatch):
    (tmp_path / "memhog.py").write_text(HOG)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    big = scale.run_step("hog.big", ["--mb", "300"], tmp_path / "w", module="memhog")
    small = scale.run_step("hog.small", ["--mb", "10"], tmp_path / "w", module="memhog")
    assert big["sum"] == 300 * 2**20 // 8 and big["peak_rss_bytes"] >= 300 * 2**20
    assert big["peak_rss_source"] == small["peak_rss_source"] == "VmHWM"
    # not RUSAGE_CHILDREN's maximum over every child so far: the small step's own peak
    assert small["peak_rss_bytes"] < big["peak_rss_bytes"] - 200 * 2**20
    with pytest.raises(scale.ScaleError, match=r"scale step hog.bad \(--mb -1\) failed \(exit 3.*hog.bad.log"):
        scale.run_step("hog.bad", ["--mb", "-1"], tmp_path / "w", module="memhog")
    with pytest.raises(scale.ScaleError, match=r"hog.oom \(--mb -2\) failed \(killed by signal 9, the kernel's OOM"):
        scale.run_step("hog.oom", ["--mb", "-2"], tmp_path / "w", module="memhog")


# --------------------------------------------------------------------------- end to end

def test_bench_scale_end_to_end_at_a_tiny_size(tmp_path):
    """Two tiny sizes, two training steps per model: every figure present and positive, the files
    under subsets/<tag>/ (never the protocol's results/scale.*), the work folder removed."""
    from cli import cli

    results, data_dir = tmp_path / "results", tmp_path / "data"
    res = CliRunner().invoke(cli, ["bench", "--scale", "--sizes", "2k,3k", "--max-steps", "2", "--threads", "1",
                                   "--results-dir", str(results), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    out = results / "subsets" / "sizes2k+3k_steps2"
    assert sorted(p.name for p in out.iterdir()) == ["scale.csv", "scale.md", "scale.png"]
    assert not (results / "scale.md").exists()
    csv = pd.read_csv(out / "scale.csv")
    assert csv["size"].tolist() == ["2k", "3k"] and csv.reviews.tolist() == [2_000, 3_000]
    assert list(csv.columns) == scale.csv_columns(("din", "mian")) + ["table_stamp"]
    for col in ("prepare_s", "prepare_peak_rss_mb", "prepare_bytes_per_review", "cache_mb", "din_train_samples_per_s",
                "mian_train_samples_per_s", "din_peak_rss_mb", "mian_peak_rss_mb"):
        assert (csv[col] > 0).all(), col
    assert (csv.din_samples == 2 * 256).all()  # --max-steps 2 at the Books config's batch 256
    assert csv.prepare_bytes_per_review.tolist() == pytest.approx((csv.prepare_peak_rss_mb * 2**20 / csv.reviews).tolist(), rel=1e-5)  # 6 digits
    assert csv.events_prepared.tolist() == [2_000, 3_000]  # every synthetic review reaches the protocol
    md = (out / "scale.md").read_text()
    assert "`python cli.py bench --scale --sizes 2k,3k --seed 0 --models din,mian --max-steps 2 --threads 1`" in md
    assert "code " in md and "Generator settings: seed=0" in md
    assert "Machine:" in md and csv.table_stamp.iloc[0] in md
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".tmp-scale")] == []


def test_a_failed_step_writes_nothing_and_removes_the_work_folder(tmp_path, monkeypatch):
    from cli import cli

    def broken(step, args, folder, threads=None, module=None):
        if step == "prepare":
            raise scale.ScaleError("scale step prepare failed (killed by signal 9)")
        return {"n_users": 1, "n_items": 1, "reviews_bytes": 1, "meta_bytes": 1, "seconds": 0.0, "peak_rss_bytes": 1}

    monkeypatch.setattr(scale, "run_step", broken)
    work = tmp_path / "work"
    res = CliRunner().invoke(cli, ["bench", "--scale", "--sizes", "2k", "--results-dir", str(tmp_path / "r"),
                                   "--data-dir", str(tmp_path / "d"), "--work-dir", str(work)])
    assert res.exit_code == 1 and "Error: scale step prepare failed (killed by signal 9)" in res.output
    assert not (tmp_path / "r" / "subsets").exists() and list(work.iterdir()) == []
    res = CliRunner().invoke(cli, ["bench", "--scale", "--sizes", "2k", "--results-dir", str(tmp_path / "r"),
                                   "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 1 and [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".tmp-scale")] == []


def test_only_dead_runs_work_folders_are_removed(tmp_path):
    import os
    import subprocess

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".tmp-scale~{int(gone.stdout)}~abc"
    live = tmp_path / f".tmp-scale~{os.getpid()}~def"
    for folder in (dead, live):
        (folder / "1M" / "raw").mkdir(parents=True)
        os.utime(folder, (0, 0))  # old: age alone must not remove a live run's folder
    assert scale.remove_dead_work_folders(tmp_path) == [dead]
    assert not dead.exists() and live.is_dir()


def test_a_work_dir_holding_other_files_is_refused_untouched(tmp_path):
    from cli import cli

    mine = tmp_path / "work" / "2k" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("not the benchmark's")
    res = CliRunner().invoke(cli, ["bench", "--scale", "--sizes", "2k", "--work-dir", str(tmp_path / "work"),
                                   "--results-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 1 and "is not a scale work folder" in res.output and mine.read_text() == "not the benchmark's"


def test_the_target_lines_judge_only_the_sizes_the_targets_are_for():
    from bench.perf.scale import _verdicts

    def row(n, ratio):
        return {"reviews": n, "prepare_bytes_per_review": 250.0, "prepare_peak_rss_mb": 1000.0,
                "din_peak_rss_mb": 2000.0, "din_throughput_vs_smallest": ratio}

    small = _verdicts([row(5_000, 1.0), row(100_000, 0.5)], ["din"])
    assert "(n/a: the target is for 20M)" in small and "(n/a: the target compares 20M with 1M)" in small
    assert "beyond 20 %" not in small and "within 20 %" not in small
    full = _verdicts([row(1_000_000, 1.0), row(20_000_000, 0.7)], ["din"])
    assert "1.95 GB (met)" in full and "0.70 (beyond 20 %)" in full
    assert "compares 20M" not in _verdicts([row(5_000, 1.0)], ["din"])


def test_sigterm_ends_a_run_as_ctrl_c_does_no_work_folder_and_no_table_left(tmp_path):
    """kill / timeout send SIGTERM: the running step is killed, the temporary work folder removed,
    nothing written under results/ (the first size is large enough to be still generating)."""
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parents[1]
    data_dir, results = tmp_path / "data", tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "cli.py", "bench", "--scale", "--sizes", "2M", "--results-dir",
                             str(results), "--data-dir", str(data_dir)], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(data_dir.glob(".tmp-scale*/2M/generate.log")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(1)  # a step left running would go on writing into its folder
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".tmp-scale")] == []
    assert not results.exists() or not any(results.rglob("scale.*"))
