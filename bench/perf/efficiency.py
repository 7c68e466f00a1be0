"""Efficiency benchmark: parameters, training and inference throughput, epoch time split,
peak memory of every model, optionally against DeepCTR-Torch on the same prepared arrays.

    python cli.py bench --dataset movielens-100k [--peer deepctr-torch] [--threads 1]
    python -m bench.perf.efficiency --gauc          # gAUC on 10^6 predictions from 10^4 users

Each model is measured in a fresh child process (multiprocessing ``spawn``), so its peak resident
set size (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own: the prepared dataset in memory, the
model, its optimiser state and the largest batch's activations. In the child, in this order:

1. one full training epoch of a freshly seeded model on the prepared train split (the trainer's
   own ``StepLoop`` set-up, ``Split.batches(shuffle=True)`` and ``train_step``, batch size from the
   dataset config), timed as *data* (gathering the batch from the split tensors) and *compute*
   (forward, loss, backward, Adam update, the non-finite check); epoch samples/s = N_train / (data + compute);
2. one validation pass as the trainer does it (``evaluate``: scores + AUC/logloss/gAUC), timed;
3. inference samples/s: N_valid / seconds of ``predict`` over the validation split at the config's
   eval batch size, median of ``infer_passes`` passes;
4. training samples/s: batch size / median seconds of ``steps`` full-batch training steps after
   ``warmup`` steps (the step-level figure, free of epoch-level overheads); then, outside the timed
   loop, the FLOPs of one more training step on the last timed batch, counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv-type aten ops only: embedding
   lookups, elementwise ops, scatter and the optimiser are not counted), and the achieved GFLOP/s
   = those FLOPs / the median step;
5. peak RSS (and on CUDA the peak allocated device memory).

Once per bench run, in its own child with the same threads, the machine's fp32 matmul throughput
(:func:`measure_matmul_peak`: median of a few ``torch.mm`` of ``matmul_n`` x ``matmul_n``): every
row's ``flop_fraction`` = its achieved GFLOP/s / that peak.

Test metrics of our models come from the run records (``bench.training.studies.Runner``: an existing
main-table run is reused, a missing one is trained with the protocol). The DeepCTR-Torch peer
(``bench.perf.peer``) is trained by the same protocol inside its child, by the same loop as ours
(``bench.training.train.Trainer`` over ``bench.perf.peer.DeepCTRAdapter``): ``fit(..., epochs=1)`` per epoch,
validation AUC with ``bench.metrics`` after each, early stopping with the config's patience, best
epoch restored, the test split scored once. Its throughput is epoch based (N_train / seconds of
the first ``fit`` epoch), so the ratio ours / theirs uses OUR epoch-based figure too.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from bench.training.config import TrainConfig, resolve_config
from bench.perf.peer import (DEEPCTR_MODELS, PEER_INSTALL, PEER_VERSION, PeerUnavailable, deepctr_adapter, import_deepctr,
                        peer_installed, peer_notes)
from bench.training.runtime import allocator_note, synchronize, tune_allocator
from bench.training.registry import build_model, count_params
from bench.training.train import RunSpec, StepLoop, Trainer, git_commit, machine_info, predict, seed_everything, train_step

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BenchOptions:
    """What one benchmark invocation measures and where its data is.

    cache: the prepared dataset's cache folder (children load it directly).
    steps / warmup: timed / untimed full-batch training steps of the median-step figure.
    infer_passes: timed passes over the validation split (median).
    threads: torch intra-op threads in each child (None: torch's default).
    seed: model seed (initialisation, shuffling, DIEN negatives) of ours and of the peer.
    accuracy: also train the peer to early stopping and score its test split.
    matmul_n / matmul_repeats: size and timed repeats (after one warm-up) of the fp32 ``torch.mm``
        of the matmul-peak figure.
    """

    dataset: str
    cache: str
    device: str = "cpu"
    threads: int | None = None
    steps: int = 30
    warmup: int = 5
    infer_passes: int = 3
    seed: int = 0
    accuracy: bool = True
    matmul_n: int = 2048
    matmul_repeats: int = 5


# --------------------------------------------------------------------------- helpers


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _child_setup(opts: BenchOptions) -> torch.device:
    tune_allocator()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dev = torch.device(opts.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    return dev


def _gpu_peak_mb(dev: torch.device) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")


def run_in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a fresh spawned interpreter (so its peak RSS is its own); re-raises the
    child's exception."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _load(opts: BenchOptions):
    from bench.data import load_cache

    return load_cache(Path(opts.cache))


# --------------------------------------------------------------------------- our models


def measure_ours(opts: BenchOptions, model_name: str) -> dict[str, Any]:
    """Figures 1-5 of the module docstring for our ``model_name`` (run in a child process)."""
    dev = _child_setup(opts)
    ds = _load(opts)
    base_rss = rss_mb()
    cfg = resolve_config(opts.dataset, model_name)
    tcfg = TrainConfig(**cfg["train"])
    seed_everything(opts.seed)
    model = build_model(model_name, ds.schema, cfg["model"], item_table=ds.item_table).to(dev)
    loop = StepLoop(model, {"train": ds.train, "valid": ds.valid}, tcfg, opts.seed, dev, run=model_name)
    train, valid = loop.splits["train"], loop.splits["valid"]
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"{ds.name}: empty train or validation split")
    data_s, compute_s, _, _ = timed_epoch(loop, dev)  # 1.
    t0 = time.perf_counter()  # 2. one validation pass as the trainer does it
    valid_metrics = loop.score("valid")
    eval_s = time.perf_counter() - t0
    infer_s = _seconds(lambda: predict(model, valid, tcfg.eval_batch_size), opts.infer_passes, dev)  # 3.
    full = min(tcfg.batch_size, len(train))
    per_step, last = _step_seconds(loop, full, opts, dev)  # 4.
    step_s = statistics.median(per_step)
    step_gflop = step_flops(loop, last) / 1e9  # outside the timed loop, on the last timed batch
    return {
        "model": model_name,
        "n_params": count_params(model),
        "batch_size": tcfg.batch_size,
        "eval_batch_size": tcfg.eval_batch_size,
        "train_samples_per_s": full / step_s,
        "step_ms": 1e3 * step_s,
        "step_gflop": step_gflop,
        "achieved_gflops": step_gflop / step_s,
        "epoch_train_samples_per_s": len(train) / (data_s + compute_s),
        "infer_samples_per_s": len(valid) / statistics.median(infer_s),
        "epoch_data_s": data_s,
        "epoch_compute_s": compute_s,
        "eval_s": eval_s,
        "epoch_total_s": data_s + compute_s + eval_s,
        "valid_auc_epoch1": valid_metrics["auc"],
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base_rss,
        "peak_gpu_mb": _gpu_peak_mb(dev),
        "threads": torch.get_num_threads(),
        "timed_steps": len(per_step),
    }


def timed_epoch(loop: StepLoop, dev: torch.device, max_steps: int | None = None) -> tuple[float, float, int, int]:
    """Seconds of (data, compute) of one training epoch of ``loop`` (its first ``max_steps`` steps
    when given), the samples and the steps it took: gathering each batch, and its
    :func:`bench.training.train.train_step` with the trainer's per-step non-finite check. Raises
    RuntimeError on a non-finite loss."""
    loop.model.train()
    data_s = compute_s = 0.0
    samples = steps = 0
    batches = loop.splits["train"].batches(loop.tcfg.batch_size, shuffle=True, generator=loop.generator)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None) if max_steps is None or steps < max_steps else None
        synchronize(dev)
        t1 = time.perf_counter()
        if batch is None:
            return data_s, compute_s, samples, steps
        samples += len(batch)
        steps += 1
        loss = train_step(loop.model, loop.optimizer, batch)
        finite = bool(torch.isfinite(loss))  # the trainer's per-step check (synchronises)
        t2 = time.perf_counter()
        data_s += t1 - t0
        compute_s += t2 - t1
        if not finite:
            raise RuntimeError(f"{loop.run}: non-finite loss during the timed epoch")


def _step_seconds(loop: StepLoop, full: int, opts: BenchOptions, dev: torch.device) -> tuple[list[float], Any]:
    """Seconds of ``opts.steps`` training steps on batches of ``full`` rows (shuffled batches of
    the train split, smaller ones skipped) after ``opts.warmup`` untimed ones, and the last timed
    batch."""
    loop.model.train()
    per_step: list[float] = []
    batch = None
    need = max(opts.steps, 1) + max(opts.warmup, 0)
    seen = 0
    while seen < need:
        for batch in loop.splits["train"].batches(loop.tcfg.batch_size, shuffle=True, generator=loop.generator):
            if len(batch) < full:
                continue
            synchronize(dev)
            t0 = time.perf_counter()
            loss = train_step(loop.model, loop.optimizer, batch)
            bool(torch.isfinite(loss))
            t1 = time.perf_counter()
            if seen >= opts.warmup:
                per_step.append(t1 - t0)
            seen += 1
            if seen >= need:
                break
    return per_step, batch


def step_flops(loop: StepLoop, batch) -> int:
    """FLOPs of one training step (:func:`bench.training.train.train_step`: forward, loss, backward,
    Adam) of ``loop.model`` on ``batch``, as ``torch.utils.flop_counter.FlopCounterMode`` counts
    them: matmul/conv-type aten ops only (mm, addmm, bmm, baddbmm, convolutions, attention
    kernels); embedding lookups, elementwise ops, scatter and the optimiser's update count 0. The
    step is really taken (the model is updated), so call it after the timed steps."""
    from torch.utils.flop_counter import FlopCounterMode

    loop.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(loop.model, loop.optimizer, batch)
    return int(counter.get_total_flops())


def measure_matmul_peak(opts: BenchOptions) -> dict[str, Any]:
    """This machine's fp32 matmul throughput at ``opts.threads`` (run in a child process, set up as
    the models' children): GFLOP/s of the median of ``opts.matmul_repeats`` ``torch.mm`` of two
    ``opts.matmul_n`` x ``opts.matmul_n`` fp32 matrices (2 n^3 FLOPs each) after one warm-up."""
    dev = _child_setup(opts)
    n = opts.matmul_n
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    torch.mm(a, b)  # warm-up
    synchronize(dev)
    secs = _seconds(lambda: torch.mm(a, b), opts.matmul_repeats, dev)
    return {"matmul_peak_gflops": 2.0 * n**3 / statistics.median(secs) / 1e9, "matmul_n": n,
            "matmul_repeats": len(secs), "threads": torch.get_num_threads()}


def _seconds(fn: Callable[[], Any], repeats: int, dev: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` (at least one) calls of ``fn``, the device synchronised."""
    out = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        synchronize(dev)
        out.append(time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- DeepCTR-Torch peer


def measure_peer(opts: BenchOptions, model_name: str) -> dict[str, Any]:
    """The DeepCTR-Torch peer of ``model_name`` (run in a child process): parameters, epoch-based
    training samples/s, inference samples/s, evaluation time, peak RSS; with ``opts.accuracy`` its
    test metrics after the protocol's early stopping (``bench.training.train.Trainer`` over
    ``bench.perf.peer.DeepCTRAdapter``)."""
    dev = _child_setup(opts)
    api = import_deepctr()
    version = api[3]
    ds = _load(opts)
    base_rss = rss_mb()
    cfg = resolve_config(opts.dataset, model_name)
    tcfg = TrainConfig(**cfg["train"])
    peer = deepctr_adapter(ds, model_name, cfg, dev, opts.seed, api)
    trainer = Trainer(peer, tcfg.max_epochs, tcfg.patience)
    valid1 = trainer.epoch()["valid"]  # the timed first epoch and one validation pass
    eval_s = trainer.eval_seconds
    infer_s = _seconds(lambda: peer.predict("valid"), opts.infer_passes, dev)
    out: dict[str, Any] = {
        "model": model_name,
        "peer_model": f"DeepCTR-Torch {version} {DEEPCTR_MODELS[model_name]}",
        "peer_version": version,
        "peer_n_params": sum(p.numel() for p in peer.model.parameters() if p.requires_grad),
        "peer_train_samples_per_s": len(peer.y["train"]) / peer.fit_seconds[0],
        "peer_epoch_s": peer.fit_seconds[0],
        "peer_eval_s": eval_s,
        "peer_infer_samples_per_s": len(peer.y["valid"]) / statistics.median(infer_s),
        "peer_valid_auc_epoch1": valid1["auc"],
        "peer_peak_rss_mb": rss_mb(),
        "peer_base_rss_mb": base_rss,
        "peer_peak_gpu_mb": _gpu_peak_mb(dev),
        "peer_threads": torch.get_num_threads(),
    }
    if opts.accuracy:
        test = trainer.fit().test()
        out.update({
            "peer_test_auc": test["auc"], "peer_test_logloss": test["logloss"], "peer_test_gauc": test["gauc"],
            "peer_valid_auc": trainer.best_auc, "peer_best_epoch": trainer.best_epoch,
            "peer_epochs_run": trainer.epochs_run,
        })
    return out


def _peer_safely(opts: BenchOptions, model_name: str) -> dict[str, Any]:
    """:func:`measure_peer` that returns the failure as ``peer_status`` instead of raising (one
    peer model failing must not lose the other rows)."""
    try:
        out = measure_peer(opts, model_name)
        out["peer_status"] = "ok"
        return out
    except PeerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {"model": model_name, "peer_status": f"failed: {type(exc).__name__}: {exc}"[:300]}


# --------------------------------------------------------------------------- gAUC timing


def gauc_benchmark(n: int = 1_000_000, n_users: int = 10_000, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Seconds of ``bench.metrics.gauc`` on ``n`` random predictions from ``n_users`` users
    (minimum and median of ``repeats`` calls) and the value."""
    from bench.metrics import gauc

    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    labels = (rng.random(n) < 0.5).astype(np.float64)
    scores = rng.standard_normal(n) + 0.3 * labels
    times, value = [], float("nan")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        value = gauc(labels, scores, users)
        times.append(time.perf_counter() - t0)
    return {"n": n, "users": n_users, "min_s": min(times), "median_s": statistics.median(times), "gauc": value}


# --------------------------------------------------------------------------- the table


def _n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


CSV_COLUMNS = (
    "model", "n_params", "train_samples_per_s", "epoch_train_samples_per_s", "infer_samples_per_s",
    "step_ms", "epoch_data_s", "epoch_compute_s", "eval_s", "epoch_total_s", "peak_rss_mb", "base_rss_mb",
    "peak_gpu_mb", "test_auc", "test_logloss", "test_gauc", "best_epoch",
    "peer_model", "peer_n_params", "peer_train_samples_per_s", "peer_infer_samples_per_s", "peer_epoch_s",
    "peer_eval_s", "peer_peak_rss_mb", "peer_base_rss_mb", "peer_peak_gpu_mb", "peer_test_auc",
    "peer_test_logloss", "peer_test_gauc", "peer_best_epoch", "peer_status", "ratio", "infer_ratio",
    "step_gflop", "achieved_gflops", "matmul_peak_gflops", "flop_fraction", "run_seconds",
)


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


def _sig(v: Any, digits: int = 3) -> str:
    """``v`` to ``digits`` significant figures (LR's step is ~1e-4 GFLOP, xDeepFM's ~10), blank when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:#.{digits}g}".rstrip(".") if abs(v) < 10 ** digits else f"{v:,.0f}"


def efficiency_table(rows: Sequence[dict[str, Any]], notes: Sequence[str], dataset: str, peer: str | None):
    """A ``bench.report.Table`` of the measured rows (CSV: every column of ``CSV_COLUMNS``)."""
    from bench.report import MODEL_LABELS, Table

    csv = pd.DataFrame([{c: r.get(c, np.nan) for c in CSV_COLUMNS} for r in rows], columns=list(CSV_COLUMNS))
    frame = pd.DataFrame({
        "Model": [MODEL_LABELS.get(r["model"], r["model"]) for r in rows],
        "Params": [_fmt(r.get("n_params")) for r in rows],
        "Train samples/s (median step)": [_fmt(r.get("train_samples_per_s")) for r in rows],
        "Train samples/s (epoch)": [_fmt(r.get("epoch_train_samples_per_s")) for r in rows],
        "Infer samples/s": [_fmt(r.get("infer_samples_per_s")) for r in rows],
        "Epoch data / compute / eval (s)": [
            " / ".join(_fmt(r.get(k), 2) for k in ("epoch_data_s", "epoch_compute_s", "eval_s")) for r in rows],
        "Peak RSS (MB)": [_fmt(r.get("peak_rss_mb")) for r in rows],
        "GFLOP/step": [_sig(r.get("step_gflop")) for r in rows],
        "GFLOP/s": [_sig(r.get("achieved_gflops")) for r in rows],
        "% of matmul peak": [_sig(100 * r["flop_fraction"] if r.get("flop_fraction") is not None else None)
                             for r in rows],
        "Test AUC": [_fmt(r.get("test_auc"), 4) for r in rows],
    })
    if peer:
        frame["DeepCTR train samples/s (epoch)"] = [_fmt(r.get("peer_train_samples_per_s")) for r in rows]
        frame["DeepCTR infer samples/s"] = [_fmt(r.get("peer_infer_samples_per_s")) for r in rows]
        frame["DeepCTR peak RSS (MB)"] = [_fmt(r.get("peer_peak_rss_mb")) for r in rows]
        frame["DeepCTR test AUC"] = [
            _fmt(r.get("peer_test_auc"), 4) if r.get("peer_status", "ok") == "ok" else str(r.get("peer_status", ""))[:60]
            for r in rows]
        frame["Ratio ours/DeepCTR (train, epoch)"] = [_fmt(r.get("ratio"), 2) for r in rows]
    return Table(title=f"Efficiency: {dataset}", frame=frame, csv=csv, bold=set(), underline=set(), notes=list(notes))


def write_table(table, stem: Path) -> list[Path]:
    """``<stem>.md`` and ``<stem>.csv`` published together (both complete before either is
    renamed into place) with the same table stamp, as :meth:`bench.report.Table.write`."""
    from bench.io import atomic_write_many

    stem = Path(stem)
    stamp = table.stamp()
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv")]
    atomic_write_many({paths[0]: table.markdown(stamp).encode("utf-8"), paths[1]: table.csv_text(stamp).encode("utf-8")})
    return paths


def run_bench(
    opts: BenchOptions,
    models: Sequence[str],
    ds,
    peer: str | None = None,
    runner=None,
    out_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
):
    """Measure ``models`` (and their peers), add test metrics, write ``<out_dir>/efficiency.{md,csv}``.

    Args:
        ds: the loaded PreparedDataset (its cache folder is ``opts.cache``).
        runner: a ``bench.training.studies.Runner`` giving our test metrics (existing run records reused,
            missing runs trained); None (or ``opts.accuracy`` False) leaves them empty.
    Returns (table, written paths). Raises PeerUnavailable when ``peer`` is not installed.
    """
    if peer is not None and not peer_installed(peer):
        raise PeerUnavailable(f"--peer {peer} needs DeepCTR-Torch: {PEER_INSTALL}")
    say = progress or (lambda msg: log.info("%s", msg))
    started = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    rows = []
    for name in models:
        say(f"{opts.dataset}: measuring {name}")
        row = run_in_child(measure_ours, opts, name)
        if peer is not None and DEEPCTR_MODELS.get(name):
            say(f"{opts.dataset}: measuring the DeepCTR-Torch peer of {name}"
                + (" (and training it to early stopping)" if opts.accuracy else ""))
            row.update({k: v for k, v in run_in_child(_peer_safely, opts, name).items() if k != "model"})
        rows.append(row)
    say(f"{opts.dataset}: measuring the fp32 matmul peak ({opts.matmul_n} x {opts.matmul_n} torch.mm)")
    peak = run_in_child(measure_matmul_peak, opts)
    for row in rows:
        row["matmul_peak_gflops"] = peak["matmul_peak_gflops"]
        row["flop_fraction"] = row["achieved_gflops"] / peak["matmul_peak_gflops"]
    load_end = os.getloadavg()
    with_test = opts.accuracy and runner is not None
    for row in rows if with_test else ():
        say(f"{opts.dataset}: test metrics of {row['model']} (run record, trained if missing)")
        record, _ = runner.run(RunSpec(opts.dataset, row["model"], opts.seed))
        row.update({"test_auc": record["test"]["auc"], "test_logloss": record["test"]["logloss"],
                    "test_gauc": record["test"]["gauc"], "best_epoch": record["best_epoch"],
                    "run_id": record["run_id"], "run_seconds": sum(record["wall_seconds"].values()),
                    "run_cpu": (record.get("machine") or {}).get("cpu", "")})
    for row in rows:
        peer_rate = row.get("peer_train_samples_per_s")
        row["ratio"] = row["epoch_train_samples_per_s"] / peer_rate if peer_rate else float("nan")
        peer_inf = row.get("peer_infer_samples_per_s")
        row["infer_ratio"] = row["infer_samples_per_s"] / peer_inf if peer_inf else float("nan")
    notes = _notes(opts, ds, rows, with_test, (started, load_start[0], load_end[0]), peak)
    if peer is not None:
        version = next((r.get("peer_version") for r in rows if r.get("peer_version")), PEER_VERSION)
        notes += peer_notes(version)
        failed = [f"{r['model']}: {r['peer_status']}" for r in rows if r.get("peer_status", "ok") != "ok"]
        if failed:
            notes.append("Peer failures: " + "; ".join(failed))
    table = efficiency_table(rows, notes, opts.dataset, peer)
    paths = write_table(table, Path(out_dir) / "efficiency") if out_dir is not None else []
    return table, paths


def _notes(opts: BenchOptions, ds, rows: Sequence[dict[str, Any]], with_test: bool,
           when: tuple[datetime, float, float], peak: dict[str, Any]) -> list[str]:
    """The notes under the table: machine, dataset, what each figure is, the gAUC timing (measured
    here). ``when``: the start of the measurements and the load averages at their start and end;
    ``peak``: :func:`measure_matmul_peak`'s result."""
    started, load_start, load_end = when
    g = gauc_benchmark()
    tune_allocator()
    threads = sorted({r["threads"] for r in rows})
    first = rows[0] if rows else {}
    return [
        f"Machine: {_n_cpus()} CPUs available ({os.cpu_count()} online), {machine_info()['cpu']}; "
        f"load average {load_start:.2f} at the start, {load_end:.2f} at the end of the measurements; "
        f"device {opts.device}; torch {torch.__version__} with {', '.join(map(str, threads))} intra-op thread(s) "
        f"per child; Python {platform.python_version()}; {allocator_note()}.",
        f"Dataset {ds.name} ({ds.protocol}), fingerprint {ds.fingerprint[:16]}; train {len(ds.train):,}, "
        f"valid {len(ds.valid):,}, test {len(ds.test):,} samples; batch {first.get('batch_size', '?')}, "
        f"eval batch {first.get('eval_batch_size', '?')} (dataset config); seed {opts.seed}; "
        f"measured {started.isoformat(timespec='seconds')} to "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}; code {git_commit()}.",
        "Each model in a fresh spawned process. Train samples/s (median step): batch / median time of "
        f"{opts.steps} full-batch training steps (forward, loss, backward, Adam, non-finite check) after "
        f"{opts.warmup} warm-up steps, real shuffled batches of the train split. Train samples/s (epoch): "
        "N_train / (data + compute) seconds of the first epoch of a freshly seeded model; data = batch "
        "gathering from the split tensors, compute = the training steps; eval = one validation pass "
        "(scores + AUC, logloss, gAUC). Infer samples/s: N_valid / median seconds of "
        f"{opts.infer_passes} scoring passes over the validation split. Peak RSS: ru_maxrss of the "
        "child: interpreter, libraries, the prepared dataset and the model (base_rss_mb in the CSV: the "
        "child's peak after its imports and loading the dataset, before building the model).",
        f"GFLOP/step: FLOPs of one full-batch training step (forward, loss, backward, Adam) on the last "
        "timed batch, counted outside the timed loop by torch.utils.flop_counter.FlopCounterMode, which "
        "counts matmul/conv-type ops only (mm, addmm, bmm, convolutions, attention): embedding lookups, "
        "elementwise ops, scatter and the optimiser update are not counted, so memory-bound models "
        "(embedding-heavy, little dense compute) show a small fraction. GFLOP/s: GFLOP/step / median "
        f"step seconds. % of matmul peak: GFLOP/s / this machine's fp32 matmul throughput, "
        f"{peak['matmul_peak_gflops']:,.1f} GFLOP/s (median of {peak['matmul_repeats']} torch.mm of "
        f"{peak['matmul_n']} x {peak['matmul_n']} fp32 after one warm-up, 2 n^3 FLOPs each, "
        f"{peak['threads']} thread(s), measured once in its own spawned process; matmul_peak_gflops in "
        "the CSV).",
        ("Test AUC: our run records (the main table's runs when they exist; else trained now by the "
         "protocol: early stopping on validation AUC, patience and max epochs from the config, best "
         "epoch restored, test scored once)." if with_test else
         "Test metrics not computed (--no-accuracy): speed and memory only."),
        *([seed_cost_note(rows, opts.seed)] if with_test else []),
        f"bench.metrics.gauc on {g['n']:,} predictions from {g['users']:,} users: "
        f"{g['min_s']:.3f} s (min of 3; median {g['median_s']:.3f} s).",
    ]


def seed_cost_note(rows: Sequence[dict[str, Any]], seed: int) -> str:
    """One seed of every benchmarked model, from their run records' train + eval seconds (each run
    on one worker): the cost of one tuning trial set, with the share of each model."""
    timed = [r for r in rows if r.get("run_seconds") is not None]
    total = sum(r["run_seconds"] for r in timed)
    parts = ", ".join(f"{r['model']} {r['run_seconds']:.0f} s" for r in sorted(timed, key=lambda r: -r["run_seconds"]))
    cpus = sorted({r.get("run_cpu") or "unknown CPU" for r in timed})
    return (f"One seed of the {len(timed)} models (the run records of seed {seed}, training to early stopping "
            f"plus scoring, each run in one worker process): {total:,.0f} s = {total / 60:.1f} min of worker "
            f"time ({parts}); on 2 workers about half of it in wall time. A run that draws Figure 5's "
            f"curves (MIAN's default) includes its mid-epoch validations. Records made on {'; '.join(cpus)}.")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Efficiency helpers (the benchmark itself: python cli.py bench).")
    p.add_argument("--gauc", action="store_true", help="time bench.metrics.gauc on 10^6 predictions, 10^4 users")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    args = p.parse_args(argv)
    if not args.gauc:
        p.error("nothing to do: pass --gauc (the model benchmark is `python cli.py bench`)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    g = gauc_benchmark(args.n, args.users)
    log.info("gauc on %s predictions from %s users: %.3f s (min of 3), median %.3f s, value %.6f",
             f"{g['n']:,}", f"{g['users']:,}", g["min_s"], g["median_s"], g["gauc"])


if __name__ == "__main__":
    main()
