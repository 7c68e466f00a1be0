"""Scale benchmark (issue 16, part 2): how preparing and training grow with the number of reviews.

    python cli.py bench --scale [--sizes 1M,5M,20M] [--seed 0] [--models din,mian] [--work-dir DIR] [--keep]

For each size: synthetic Amazon reviews in McAuley's raw 5-core format
(:mod:`bench.perf.synthetic`: ``reviews_Books_5.json.gz`` + ``meta_Books.json.gz``), then
``prepare`` of them as ``amazon-books`` (the real reader and protocol), then one training epoch of
each model on the prepared cache (``amazon-books``' config). Every step runs in a fresh Python
process (``python -m bench.perf.scale <step>``) and its peak resident set size is its own; the
child also reports its RSS before the measured work (after its imports, and for training after
loading the cache) and the seconds of that work. The peak is the process's VmHWM at its exit
(/proc; ``ru_maxrss`` is not used: Linux carries the parent's RSS at the fork into it). Results: ``scale.{md,csv,png}`` (prepare wall time,
peak RSS and bytes per review, cache bytes, train samples/s against size), written together
atomically; the protocol's run (default sizes, seed, models, whole epochs) writes them in the
results folder, any other under ``subsets/<tag>/``.

The issue's targets (reported under the table, never asserted): peak RSS of prepare <= 300 bytes
per review; a 20M prepare and one DIN epoch within 8 GB; training throughput at 20M within 20 %
of that at 1M.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from bench.perf.synthetic import SyntheticSpec, spec_json, write_mcauley_synthetic

log = logging.getLogger(__name__)

DATASET = "amazon-books"  # read_mcauley and the Books config
DEFAULT_SIZES = (1_000_000, 5_000_000, 20_000_000)
DEFAULT_MODELS = ("din", "mian")
MIN_REVIEWS = 1_000
MAX_REVIEWS = 1_000_000_000
#: the issue's targets (informational: reported, never asserted)
TARGET_BYTES_PER_REVIEW = 300
TARGET_RSS_BYTES = 8 * 2**30
TARGET_THROUGHPUT_DROP = 0.20
ROOT = Path(__file__).resolve().parents[2]
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
_UNIT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


class ScaleError(Exception):
    """A step of the scale benchmark failed; the message names the step, its exit and its log."""


# --------------------------------------------------------------------------- sizes

def parse_size(text: str) -> int:
    """``"20k"`` -> 20000, ``"1M"`` -> 1000000, ``"2.5M"``, ``"1500"``: a whole number of reviews in
    [:data:`MIN_REVIEWS`, :data:`MAX_REVIEWS`]. Raises ValueError saying what was expected."""
    m = _SIZE.match(text.strip())
    if m:
        number, unit = m.groups()
        value = float(number) * _UNIT[unit.lower()]
        if value == int(value) and MIN_REVIEWS <= value <= MAX_REVIEWS:
            return int(value)
    raise ValueError(f"{text.strip()!r} is not a size; expected a whole number of reviews from "
                     f"{MIN_REVIEWS:,} to {MAX_REVIEWS:,}, optionally with a k, M or G suffix (e.g. 20k, 1M, 2.5M)")


def parse_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated sizes (:func:`parse_size`), ascending; ValueError for a bad or repeated one."""
    items = [t for t in str(text).split(",")]
    sizes = [parse_size(t) for t in items]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"{text!r} names a size twice; expected distinct sizes (e.g. 1M,5M,20M)")
    return tuple(sorted(sizes))


def size_label(n: int) -> str:
    """20000 -> ``20k``, 1000000 -> ``1M``, 2500000 -> ``2.5M``, 1500 -> ``1.5k``."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return str(n)


# --------------------------------------------------------------------------- options

@dataclass(frozen=True)
class ScaleOptions:
    """One scale benchmark: sizes (reviews), seed (the synthetic files and the models), models,
    torch threads of the training children (None: torch's default), max_steps (cap of the timed
    epoch; None: the whole epoch), device, keep (leave the work folder's files)."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    seed: int = 0
    models: tuple[str, ...] = DEFAULT_MODELS
    threads: int | None = None
    max_steps: int | None = None
    device: str = "cpu"
    keep: bool = False


def scale_command(opts: ScaleOptions) -> str:
    """The command that measures what ``opts`` measures (for the table's notes): every option that
    changes a figure, spelled out (the folders and --keep do not)."""
    parts = ["python cli.py bench --scale", "--sizes " + ",".join(size_label(n) for n in opts.sizes),
             f"--seed {opts.seed}", "--models " + ",".join(opts.models)]
    if opts.max_steps is not None:
        parts.append(f"--max-steps {opts.max_steps}")
    if opts.threads is not None:
        parts.append(f"--threads {opts.threads}")
    if opts.device != "cpu":
        parts.append(f"--device {opts.device}")
    return " ".join(parts)


def subset_tag(opts: ScaleOptions) -> str | None:
    """The ``subsets/`` tag of a run that is not the protocol's (None when it is): the sizes, seed,
    models and epoch cap that differ, e.g. ``sizes20k+100k`` or ``sizes1M_din_steps200``."""
    ref = ScaleOptions()
    parts = []
    if opts.sizes != ref.sizes:
        parts.append("sizes" + "+".join(size_label(n) for n in opts.sizes))
    if opts.seed != ref.seed:
        parts.append(f"seed{opts.seed}")
    if tuple(opts.models) != ref.models:
        parts.append("+".join(opts.models))
    if opts.max_steps is not None:
        parts.append(f"steps{opts.max_steps}")
    return "_".join(parts) or None


# --------------------------------------------------------------------------- child processes

def run_step(step: str, args: Sequence[str], folder: Path, threads: int | None = None,
             module: str = "bench.perf.scale") -> dict[str, Any]:
    """``python -m <module> <step> <args> --out <json>`` in a fresh process (``step`` up to its
    first dot: ``train.din`` runs ``train`` and names its files ``train.din.*``); returns its
    result JSON plus ``peak_rss_bytes`` (the process's own peak: VmHWM at its exit, written by the
    launcher :data:`_LAUNCH`; where /proc lacks it, ``ru_maxrss`` from ``os.wait4``, named in
    ``peak_rss_source``) and ``process_s`` (wall seconds of the whole process). Its output goes to
    ``<folder>/<step>.log``. Ctrl-C kills the child. Raises :class:`ScaleError` when it fails
    (exit code or signal, log tail)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{step}.json"
    out.unlink(missing_ok=True)
    log_path = folder / f"{step}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    hwm = folder / f"{step}.vmhwm"
    hwm.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _LAUNCH, str(hwm), module, step.split(".")[0], *args, "--out", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if code != 0 or not out.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        why = (f"killed by signal {-code}" + (", the kernel's OOM killer's when memory runs out" if code == -9 else "")
               if code < 0 else f"exit {code}")
        raise ScaleError(f"scale step {step} ({' '.join(args)}) failed ({why}; ru_maxrss "
                         f"{_maxrss_bytes(usage.ru_maxrss) / 2**20:,.0f} MB, the parent's RSS at the fork "
                         f"included); its log {log_path}: "
                         + " | ".join(tail))
    result = json.loads(out.read_text())
    own = hwm.is_file() and hwm.read_text().strip()
    result.update(peak_rss_bytes=int(own) if own else _maxrss_bytes(usage.ru_maxrss),
                  peak_rss_source="VmHWM" if own else "ru_maxrss", process_s=seconds)
    return result


#: the child's launcher: runs ``module`` as __main__ and, at exit, writes the process's VmHWM (peak
#: RSS of its own address space since exec) to argv[1]. ``ru_maxrss`` (wait4, RUSAGE_CHILDREN or
#: RUSAGE_SELF in the child) is not used for the figure: Linux carries the pre-exec high-water mark
#: into it, i.e. the PARENT's RSS at the fork, so a small step would show the parent's memory.
_LAUNCH = """
import atexit, runpy, sys
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module] + sys.argv[3:]
def _vmhwm():
    try:
        with open('/proc/self/status', encoding='ascii') as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith('VmHWM:'))
        with open(out, 'w', encoding='ascii') as fh:
            fh.write(str(kb * 1024))
    except (OSError, StopIteration, ValueError):
        pass
atexit.register(_vmhwm)
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def _maxrss_bytes(value: int) -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def _self_rss_bytes() -> int:
    """This process's peak RSS so far: VmHWM (its own address space since exec) where /proc has
    it, else ``ru_maxrss`` (which may include the parent's RSS at the fork)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _write_result(path: Path, result: dict) -> None:
    from bench.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, sort_keys=True) + "\n")


def step_generate(folder: Path, spec: SyntheticSpec) -> dict[str, Any]:
    """Child: the synthetic raw files of ``spec`` in ``folder`` (:mod:`bench.perf.synthetic`)."""
    return write_mcauley_synthetic(folder, spec).to_dict() | {"spec": json.loads(spec_json(spec))}


def step_prepare(raw_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Child: ``prepare`` of ``raw_dir`` as :data:`DATASET` into ``data_dir`` (rebuilt: force).
    Returns its seconds, the RSS before it, the fingerprint, counts and the cache's bytes."""
    from bench.data import prepare

    base = _self_rss_bytes()
    t0 = time.perf_counter()
    info = prepare(DATASET, data_dir=data_dir, raw_dir=raw_dir, force=True)
    seconds = time.perf_counter() - t0
    files = [p for p in info.path.rglob("*") if p.is_file()]
    return {"prepare_s": seconds, "base_rss_bytes": base, "fingerprint": info.fingerprint,
            "counts": info.counts, "cache": str(info.path), "cache_bytes": sum(p.stat().st_size for p in files),
            "dataset_stats": json.loads((info.path / "meta.json").read_text())["stats"]["dataset"]}


def step_train(cache: Path, model_name: str, seed: int, device: str, max_steps: int | None) -> dict[str, Any]:
    """Child: one training epoch (or its first ``max_steps`` steps) of a freshly seeded
    ``model_name`` on the cache, :data:`DATASET`'s config, as ``bench``'s epoch figure
    (:func:`bench.perf.efficiency.timed_epoch`). Returns load seconds, RSS after loading, data /
    compute seconds, samples, steps and samples/s."""
    import torch

    from bench.data import load_cache
    from bench.perf.efficiency import timed_epoch
    from bench.training.config import TrainConfig, resolve_config
    from bench.training.registry import build_model
    from bench.training.runtime import tune_allocator
    from bench.training.train import StepLoop, seed_everything

    tune_allocator()
    dev = torch.device(device)
    t0 = time.perf_counter()
    ds = load_cache(cache)
    load_s = time.perf_counter() - t0
    base = _self_rss_bytes()
    cfg = resolve_config(DATASET, model_name)
    tcfg = TrainConfig(**cfg["train"])
    seed_everything(seed)
    model = build_model(model_name, ds.schema, cfg["model"], item_table=ds.item_table).to(dev)
    loop = StepLoop(model, {"train": ds.train}, tcfg, seed, dev, run=f"{model_name} (scale bench)")
    data_s, compute_s, samples, steps = timed_epoch(loop, dev, max_steps)
    return {"model": model_name, "load_s": load_s, "base_rss_bytes": base, "epoch_data_s": data_s,
            "epoch_compute_s": compute_s, "samples": samples, "steps": steps, "n_train": len(ds.train),
            "train_samples_per_s": samples / (data_s + compute_s), "threads": torch.get_num_threads(),
            "batch_size": tcfg.batch_size}


# --------------------------------------------------------------------------- the benchmark

def run_scale(opts: ScaleOptions, work_dir: Path, out_dir: Path | None, command: str,
              progress: Callable[[str], None] | None = None):
    """For each size of ``opts``: generate, prepare and train (each a child process, in
    ``work_dir/<size>/``, removed after the size unless ``opts.keep``); then write
    ``<out_dir>/scale.{md,csv,png}`` as one publication. ``command``: the command line, for the
    notes. Returns (table, written paths, rows). Raises :class:`ScaleError` for a failed step
    (nothing is written then)."""
    say = progress or (lambda msg: log.info("%s", msg))
    for n in opts.sizes:  # never remove a folder this benchmark did not make
        folder = Path(work_dir) / size_label(n)
        if folder.exists() and any(folder.iterdir()) and not (folder / "generate.log").is_file():
            raise ScaleError(f"{folder} exists and is not a scale work folder (no generate.log); choose another "
                             "--work-dir (its size folders are removed after use).")
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()[0]
    rows, spec = [], None
    for n in opts.sizes:
        label = size_label(n)
        folder = Path(work_dir) / label
        spec = SyntheticSpec(n_reviews=n, seed=opts.seed)
        try:
            say(f"scale {label}: writing {n:,} synthetic reviews (McAuley format) in {folder / 'raw'}")
            gen = run_step("generate", ["--dir", str(folder / "raw"), "--spec", spec_json(spec)], folder)
            say(f"scale {label}: prepare ({DATASET}) in a fresh process")
            prep = run_step("prepare", ["--raw-dir", str(folder / "raw"), "--data-dir", str(folder / "data")], folder)
            row = _size_row(n, gen, prep)
            say(f"scale {label}: prepared in {prep['prepare_s']:.1f} s, peak RSS "
                f"{prep['peak_rss_bytes'] / 2**20:,.0f} MB ({row['prepare_bytes_per_review']:,.0f} B/review), "
                f"cache {prep['cache_bytes'] / 2**20:,.1f} MB")
            for model in opts.models:
                say(f"scale {label}: one training epoch of {model}"
                    + (f" (first {opts.max_steps} steps)" if opts.max_steps else "") + " in a fresh process")
                args = ["--cache", prep["cache"], "--model", model, "--seed", str(opts.seed), "--device", opts.device]
                args += ["--max-steps", str(opts.max_steps)] if opts.max_steps else []
                tr = run_step(f"train.{model}", args, folder, opts.threads)
                row.update({f"{model}_train_samples_per_s": tr["train_samples_per_s"],
                            f"{model}_peak_rss_mb": tr["peak_rss_bytes"] / 2**20,
                            f"{model}_base_rss_mb": tr["base_rss_bytes"] / 2**20,
                            f"{model}_load_s": tr["load_s"], f"{model}_epoch_s": tr["epoch_data_s"] + tr["epoch_compute_s"],
                            f"{model}_samples": tr["samples"], f"{model}_threads": tr["threads"]})
                say(f"scale {label}: {model} {tr['train_samples_per_s']:,.0f} samples/s, peak RSS "
                    f"{tr['peak_rss_bytes'] / 2**20:,.0f} MB")
            rows.append(row)
        finally:
            if not opts.keep:
                shutil.rmtree(folder, ignore_errors=True)
    first = rows[0]
    for row in rows:
        for model in opts.models:
            row[f"{model}_throughput_vs_smallest"] = (row[f"{model}_train_samples_per_s"]
                                                      / first[f"{model}_train_samples_per_s"])
    notes = _notes(opts, rows, command, started, load_start, spec)
    table = scale_table(rows, opts.models, notes)
    paths = []
    if out_dir is not None:
        paths = write_scale(table, rows, opts.models, Path(out_dir) / "scale")
    return table, paths, rows


def _size_row(n: int, gen: dict, prep: dict) -> dict[str, Any]:
    counts = prep["counts"]
    totals = prep.get("dataset_stats") or {}
    return {
        "reviews": n, "users": gen["n_users"], "items": gen["n_items"],
        "events_prepared": totals.get("events"), "samples": sum(counts.values()),
        "train_samples": counts.get("train"), "raw_gz_mb": (gen["reviews_bytes"] + gen["meta_bytes"]) / 2**20,
        "generate_s": gen["seconds"], "prepare_s": prep["prepare_s"], "prepare_process_s": prep["process_s"],
        "prepare_peak_rss_mb": prep["peak_rss_bytes"] / 2**20, "prepare_base_rss_mb": prep["base_rss_bytes"] / 2**20,
        "prepare_bytes_per_review": prep["peak_rss_bytes"] / n,
        "prepare_bytes_per_review_beyond_base": (prep["peak_rss_bytes"] - prep["base_rss_bytes"]) / n,
        "cache_mb": prep["cache_bytes"] / 2**20, "cache_bytes_per_review": prep["cache_bytes"] / n,
        "generate_peak_rss_mb": gen["peak_rss_bytes"] / 2**20, "fingerprint": prep["fingerprint"],
    }


def csv_columns(models: Sequence[str]) -> list[str]:
    """The CSV's columns: per size, then per model (``<model>_...``)."""
    base = ["size", "reviews", "users", "items", "events_prepared", "samples", "train_samples", "raw_gz_mb",
            "generate_s", "generate_peak_rss_mb", "prepare_s", "prepare_process_s", "prepare_peak_rss_mb",
            "prepare_base_rss_mb", "prepare_bytes_per_review", "prepare_bytes_per_review_beyond_base", "cache_mb",
            "cache_bytes_per_review", "fingerprint"]
    per_model = ["train_samples_per_s", "throughput_vs_smallest", "peak_rss_mb", "base_rss_mb", "load_s",
                 "epoch_s", "samples", "threads"]
    return base + [f"{m}_{c}" for m in models for c in per_model]


def scale_table(rows: Sequence[dict[str, Any]], models: Sequence[str], notes: Sequence[str]):
    """A ``bench.report.Table``: one row per size (markdown: the key figures; CSV: every column of
    :func:`csv_columns`)."""
    from bench.report import MODEL_LABELS, Table

    cols = csv_columns(models)
    csv = pd.DataFrame([{c: (size_label(r["reviews"]) if c == "size" else r.get(c, np.nan)) for c in cols}
                        for r in rows], columns=cols)
    frame = pd.DataFrame({
        "Reviews": [f"{r['reviews']:,}" for r in rows],
        "Users / items": [f"{r['users']:,} / {r['items']:,}" for r in rows],
        "Samples": [f"{r['samples']:,}" for r in rows],
        "Prepare (s)": [f"{r['prepare_s']:,.1f}" for r in rows],
        "Prepare peak RSS (MB)": [f"{r['prepare_peak_rss_mb']:,.0f}" for r in rows],
        "B/review (beyond base)": [f"{r['prepare_bytes_per_review']:,.0f} ({r['prepare_bytes_per_review_beyond_base']:,.0f})"
                                   for r in rows],
        "Cache (MB)": [f"{r['cache_mb']:,.1f}" for r in rows],
    })
    for m in models:
        label = MODEL_LABELS.get(m, m)
        frame[f"{label} train samples/s"] = [f"{r[f'{m}_train_samples_per_s']:,.0f}" for r in rows]
        frame[f"{label} vs smallest"] = [f"{r[f'{m}_throughput_vs_smallest']:.2f}" for r in rows]
        frame[f"{label} peak RSS (MB)"] = [f"{r[f'{m}_peak_rss_mb']:,.0f}" for r in rows]
    return Table(title=f"Scale: prepare and one training epoch against size (synthetic {DATASET})",
                 frame=frame, csv=csv, bold=set(), underline=set(), notes=list(notes))


def scale_plot(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> bytes:
    """PNG bytes: four panels against reviews (log x): prepare seconds; peak RSS of prepare and of
    each model's epoch (the 300 B/review and 8 GB targets dashed); cache and raw MB; train samples/s."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import MODEL_LABELS

    x = np.array([r["reviews"] for r in rows], float)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    ax = axes[0, 0]
    ax.plot(x, [r["prepare_s"] for r in rows], "o-", label="prepare")
    ax.plot(x, [r["generate_s"] for r in rows], "s--", color="grey", label="generate (not a target)")
    ax.set(title="Wall time", ylabel="seconds")
    colour = {m: f"C{k + 1}" for k, m in enumerate(models)}  # prepare is C0
    ax = axes[0, 1]
    ax.plot(x, [r["prepare_peak_rss_mb"] for r in rows], "o-", color="C0", label="prepare (labels: B/review)")
    for xi, r in zip(x, rows):
        ax.annotate(f"{r['prepare_bytes_per_review']:,.0f}", (xi, r["prepare_peak_rss_mb"]), fontsize=7,
                    textcoords="offset points", xytext=(0, -11), ha="center", color="C0")
    for m in models:
        ax.plot(x, [r[f"{m}_peak_rss_mb"] for r in rows], "o-", color=colour[m], label=f"{MODEL_LABELS.get(m, m)} epoch")
    ax.plot(x, x * TARGET_BYTES_PER_REVIEW / 2**20, ":", color="black", label="300 B/review (target)")
    ax.axhline(TARGET_RSS_BYTES / 2**20, ls="--", color="red", lw=0.8, label="8 GB (target)")
    ax.set(title="Peak RSS", ylabel="MB")
    ax = axes[1, 0]
    ax.plot(x, [r["cache_mb"] for r in rows], "o-", label="prepared cache")
    ax.plot(x, [r["raw_gz_mb"] for r in rows], "s--", color="grey", label="raw .json.gz")
    ax.set(title="Bytes on disk", ylabel="MB")
    ax = axes[1, 1]
    for m in models:
        ax.plot(x, [r[f"{m}_train_samples_per_s"] for r in rows], "o-", color=colour[m], label=MODEL_LABELS.get(m, m))
    ax.set(title="Training throughput (one epoch)", ylabel="samples / s")
    for ax in axes.ravel():
        ax.set_xscale("log")
        ax.set_xlabel("reviews")
        if ax is not axes[1, 1]:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[1, 1].set_ylim(bottom=0)
    fig.suptitle(f"bench --scale: synthetic {DATASET} (McAuley format), " + ", ".join(size_label(r["reviews"]) for r in rows))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_scale(table, rows: Sequence[dict[str, Any]], models: Sequence[str], stem: Path) -> list[Path]:
    """``<stem>.md``, ``.csv`` (same table stamp, named in the md's last note) and ``.png``, published together
    (:func:`bench.io.atomic_write_many`: all complete before any is renamed into place)."""
    from bench.io import atomic_write_many

    stamp = table.stamp()
    note = (f"table stamp {stamp}: the .md, the .csv (column table_stamp) and the .png of this table were "
            "written together")
    files = {stem.with_suffix(".md"): replace(table, notes=[*table.notes, note]).markdown().encode("utf-8"),
             stem.with_suffix(".csv"): table.csv_text(stamp).encode("utf-8"),
             stem.with_suffix(".png"): scale_plot(rows, models)}
    atomic_write_many(files)
    return list(files)


def _verdicts(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> str:
    """The issue's targets against these rows (informational)."""
    big = rows[-1]
    parts = [", ".join(f"{size_label(r['reviews'])} {r['prepare_bytes_per_review']:,.0f}"
                       + (" (met)" if r["prepare_bytes_per_review"] <= TARGET_BYTES_PER_REVIEW else " (missed)")
                       for r in rows)]
    text = f"Targets of issue 16 (informational, not asserted): peak RSS of prepare <= {TARGET_BYTES_PER_REVIEW} B/review: {parts[0]}."
    if "din" in models:
        worst = max(big["prepare_peak_rss_mb"], big["din_peak_rss_mb"]) * 2**20
        text += (f" Prepare and one DIN epoch within 8 GB at {size_label(big['reviews'])}: peak "
                 f"{worst / 2**30:.2f} GB ("
                 + (('met' if worst <= TARGET_RSS_BYTES else 'missed') if big["reviews"] >= DEFAULT_SIZES[-1]
                    else "n/a: the target is for 20M") + ").")
    if len(rows) < 2:
        return text
    judged = big["reviews"] >= DEFAULT_SIZES[-1] and rows[0]["reviews"] <= DEFAULT_SIZES[0]
    for m in models:
        ratio = big[f"{m}_throughput_vs_smallest"]
        text += (f" {m} throughput at {size_label(big['reviews'])} / at {size_label(rows[0]['reviews'])}: {ratio:.2f}"
                 + (f" ({'within' if ratio >= 1 - TARGET_THROUGHPUT_DROP else 'beyond'} 20 %)." if judged
                    else " (n/a: the target compares 20M with 1M)."))
    return text


def _notes(opts: ScaleOptions, rows: Sequence[dict[str, Any]], command: str, started: datetime,
           load_start: float, spec: SyntheticSpec | None) -> list[str]:
    from bench.perf.efficiency import _n_cpus
    from bench.training.train import git_commit, machine_info

    spec_text = ", ".join(f"{k}={v}" for k, v in asdict(replace(spec, n_reviews=0)).items() if k != "n_reviews") \
        if spec is not None else ""
    threads = sorted({r.get(f"{m}_threads") for r in rows for m in opts.models} - {None})
    mem = _mem_total_gb()
    return [
        f"Made by `{command}`: sizes {', '.join(size_label(n) for n in opts.sizes)}, seed {opts.seed} (synthetic "
        f"files and models), models {', '.join(opts.models)}, "
        + (f"the first {opts.max_steps} steps of the epoch" if opts.max_steps else "one whole epoch") + "; "
        f"code {git_commit()}; {started.isoformat(timespec='seconds')} to "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.",
        f"Machine: {_n_cpus()} CPUs available ({os.cpu_count()} online), {machine_info()['cpu']}"
        + (f", {mem:.1f} GB RAM" if mem else "") + f"; load average {load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end; Python {platform.python_version()}; training threads "
        f"{', '.join(map(str, threads)) or '?'} per process; device {opts.device}.",
        f"Data: synthetic reviews in McAuley's 5-core format (bench/perf/synthetic.py: reviews_Books_5.json.gz and "
        f"meta_Books.json.gz; every user and item >= 5 reviews, Zipf item popularity, Pareto user activity), "
        f"prepared as {DATASET} (its reader, protocol and config). Generator settings: {spec_text}.",
        "Each step is a fresh Python process. Peak RSS: that process's VmHWM at its exit (/proc; its own "
        "address space since exec, unlike ru_maxrss, which inherits the parent's RSS at the fork), interpreter and "
        "libraries included (torch is imported by the data package); B/review = prepare's peak RSS / reviews, in "
        "brackets beyond the process's RSS before the prepare call. Prepare (s): the prepare call (raw parsing to "
        "written cache), forced rebuild. Cache: bytes of the prepared cache folder. Train samples/s: samples / "
        "(batch gathering + training steps) of the first epoch of a freshly seeded model (as bench's epoch "
        "figure), the dataset config's batch size; 'vs smallest': that over the smallest size's.",
        _verdicts(rows, opts.models),
    ]


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


WORK_PREFIX = ".tmp-scale~"


def remove_dead_work_folders(data_dir: Path) -> list[Path]:
    """Remove the temporary work folders ``<data_dir>/.tmp-scale~<pid>~*`` of scale runs whose
    process is gone (killed before its own clean-up); a live run's folder is kept however old it
    is (a 20M run lasts hours). Returns what was removed."""
    from bench.io import pid_alive

    removed = []
    for folder in Path(data_dir).glob(f"{WORK_PREFIX}*"):
        pid = folder.name[len(WORK_PREFIX):].split("~", 1)[0]
        if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by an interrupted scale run", folder)
            removed.append(folder)
    return removed


def work_folder(data_dir: Path, work_dir: Path | None) -> tuple[Path, bool]:
    """The folder the raw files and caches of the sizes go to, and whether it is a temporary one
    (made here under ``data_dir`` as ``.tmp-scale~<pid>~<random>``, which
    :func:`remove_dead_work_folders` removes once this process is gone, if it was killed)."""
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return Path(work_dir), False
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}~", dir=data_dir)), True


# --------------------------------------------------------------------------- child entry point

def main(argv: list[str] | None = None) -> None:
    """``python -m bench.perf.scale generate|prepare|train ... --out RESULT.json``: one step of the
    scale benchmark (run by :func:`run_step`; its result JSON written atomically)."""
    p = argparse.ArgumentParser(description="One step of `python cli.py bench --scale` (run in a fresh process).")
    sub = p.add_subparsers(dest="step", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--dir", type=Path, required=True)
    g.add_argument("--spec", required=True, help="SyntheticSpec as JSON")
    r = sub.add_parser("prepare")
    r.add_argument("--raw-dir", type=Path, required=True)
    r.add_argument("--data-dir", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--cache", type=Path, required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-steps", type=int, default=None)
    for q in (g, r, t):
        q.add_argument("--out", type=Path, required=True)
        q.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.step == "generate":
        result = step_generate(args.dir, SyntheticSpec(**json.loads(args.spec)))
    elif args.step == "prepare":
        result = step_prepare(args.raw_dir, args.data_dir)
    else:
        result = step_train(args.cache, args.model, args.seed, args.device, args.max_steps)
    _write_result(args.out, result)


if __name__ == "__main__":
    main()
