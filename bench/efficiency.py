"""Efficiency benchmark: parameters, training and inference throughput, epoch time split,
peak memory of every model, optionally against DeepCTR-Torch on the same prepared arrays.

    python cli.py bench --dataset movielens-100k [--peer deepctr-torch] [--threads 1]
    python -m bench.efficiency --gauc          # gAUC on 10^6 predictions from 10^4 users

Each model is measured in a fresh child process (multiprocessing ``spawn``), so its peak resident
set size (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own: the prepared dataset in memory, the
model, its optimiser state and the largest batch's activations. In the child, in this order:

1. one full training epoch of a freshly seeded model on the prepared train split (the trainer's
   own ``Split.batches(shuffle=True)`` and ``train_step``, batch size from the dataset config), timed as
   *data* (gathering the batch from the split tensors) and *compute* (forward, loss, backward,
   Adam update, the non-finite check); epoch samples/s = N_train / (data + compute);
2. one validation pass as the trainer does it (``evaluate``: scores + AUC/logloss/gAUC), timed;
3. inference samples/s: N_valid / seconds of ``predict`` over the validation split at the config's
   eval batch size, median of ``infer_passes`` passes;
4. training samples/s: batch size / median seconds of ``steps`` full-batch training steps after
   ``warmup`` steps (the step-level figure, free of epoch-level overheads);
5. peak RSS (and on CUDA the peak allocated device memory).

Test metrics of our models come from the run records (``bench.studies.Runner``: an existing
main-table run is reused, a missing one is trained with the protocol). The DeepCTR-Torch peer is
trained by the same protocol inside its child: ``fit(..., epochs=1)`` per epoch, validation AUC with
``bench.metrics`` after each, early stopping with the config's patience, best epoch restored, the
test split scored once. Its throughput is epoch based (N_train / seconds of one ``fit`` epoch), so
the ratio ours / theirs uses OUR epoch-based figure too.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
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

log = logging.getLogger(__name__)

PEERS = ("deepctr-torch",)
PEER_VERSION = "0.3.0"
PEER_INSTALL = f'pip install deepctr-torch=={PEER_VERSION}   (or: pip install -e ".[peer]")'

#: our model -> the DeepCTR-Torch model run as its peer (None: no counterpart)
DEEPCTR_MODELS: dict[str, str | None] = {
    "lr": "WDL (linear part only)",
    "wide_deep": "WDL",
    "dcn": "DCN",
    "deepfm": "DeepFM",
    "xdeepfm": "xDeepFM",
    "din": "DIN",
    "dien": "DIEN",
    "mian": None,
}

#: the workarounds the DeepCTR-Torch 0.3.0 peer needs; written under the table
DEEPCTR_WORKAROUNDS = (
    "imported without running its package __init__, which starts a PyPI version check in a thread "
    "(and needs `requests`, not a declared dependency); the models and layers are imported directly",
    "fit/predict cast every input column to float32 (ids included): checked exact (every vocabulary "
    "< 2^24) before training",
    "fit/predict print the device and a summary line: stdout silenced; verbose=0 (no tqdm bar, no "
    "per-step training metrics)",
    "their loss is BCE with reduction='sum': compiled with a mean-reduced BCE callable instead, the "
    "protocol's loss (their DIEN auxiliary loss is added to it as in ours)",
    "DNN(activation='dice') builds Dice for 3-D inputs (dice_dim=3) and fails on the 2-D DNN input: "
    "DIN's and DIEN's DNN activations replaced by their own Dice(dim=2) after construction",
    "xDeepFM sizes its CIN by the number of embedding tables, not of fields; with behaviour fields "
    "sharing the item tables the CIN (and its output unit) is rebuilt for the real field count",
    "histories converted from our left padding to right padding plus a length column, and DIEN's "
    "negative sequences drawn, outside every timed region",
)


class PeerUnavailable(RuntimeError):
    """The peer library is not installed; the message says how to install it."""


@dataclass(frozen=True)
class BenchOptions:
    """What one benchmark invocation measures and where its data is.

    cache: the prepared dataset's cache folder (children load it directly).
    steps / warmup: timed / untimed full-batch training steps of the median-step figure.
    infer_passes: timed passes over the validation split (median).
    threads: torch intra-op threads in each child (None: torch's default).
    seed: model seed (initialisation, shuffling, DIEN negatives) of ours and of the peer.
    accuracy: also train the peer to early stopping and score its test split.
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


# --------------------------------------------------------------------------- helpers


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _child_setup(opts: BenchOptions) -> torch.device:
    from bench.perf import tune_allocator

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
    from bench.config import TrainConfig, resolve_config
    from bench.registry import build_model, count_params
    from bench.train import evaluate, predict, seed_everything, train_step

    dev = _child_setup(opts)
    ds = _load(opts)
    base_rss = rss_mb()
    cfg = resolve_config(opts.dataset, model_name)
    tcfg = TrainConfig(**cfg["train"])
    seed_everything(opts.seed)
    model = build_model(model_name, ds.schema, cfg["model"], item_table=ds.item_table).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    train, valid = ds.train.to(dev), ds.valid.to(dev)
    if len(train) == 0 or len(valid) == 0:
        raise ValueError(f"{ds.name}: empty train or validation split")
    gen = torch.Generator().manual_seed(opts.seed)
    clock = time.perf_counter

    # 1. one epoch, data vs compute
    model.train()
    data_s = compute_s = 0.0
    batches = train.batches(tcfg.batch_size, shuffle=True, generator=gen)
    while True:
        t0 = clock()
        batch = next(batches, None)
        _sync(dev)
        t1 = clock()
        if batch is None:
            break
        loss = train_step(model, optimizer, batch)
        finite = bool(torch.isfinite(loss))  # the trainer's per-step check (synchronises)
        t2 = clock()
        data_s += t1 - t0
        compute_s += t2 - t1
        if not finite:
            raise RuntimeError(f"{model_name}: non-finite loss during the timed epoch")
    # 2. one validation pass as the trainer does it
    t0 = clock()
    valid_metrics = evaluate(model, valid, tcfg.eval_batch_size)
    eval_s = clock() - t0
    # 3. inference throughput
    infer_s = []
    for _ in range(max(opts.infer_passes, 1)):
        t0 = clock()
        predict(model, valid, tcfg.eval_batch_size)
        _sync(dev)
        infer_s.append(clock() - t0)
    # 4. median training step over full batches
    model.train()
    per_step: list[float] = []
    full = min(tcfg.batch_size, len(train))
    need = max(opts.steps, 1) + max(opts.warmup, 0)
    seen = 0
    while seen < need:
        for batch in train.batches(tcfg.batch_size, shuffle=True, generator=gen):
            if len(batch) < full:
                continue
            _sync(dev)
            t0 = clock()
            loss = train_step(model, optimizer, batch)
            bool(torch.isfinite(loss))
            t1 = clock()
            if seen >= opts.warmup:
                per_step.append(t1 - t0)
            seen += 1
            if seen >= need:
                break
    step_s = statistics.median(per_step)
    n_train, n_valid = len(train), len(valid)
    return {
        "model": model_name,
        "n_params": count_params(model),
        "batch_size": tcfg.batch_size,
        "eval_batch_size": tcfg.eval_batch_size,
        "train_samples_per_s": full / step_s,
        "step_ms": 1e3 * step_s,
        "epoch_train_samples_per_s": n_train / (data_s + compute_s),
        "infer_samples_per_s": n_valid / statistics.median(infer_s),
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


# --------------------------------------------------------------------------- DeepCTR-Torch peer


def peer_installed(peer: str = "deepctr-torch") -> bool:
    """True when the peer library can be imported (nothing is imported here)."""
    import importlib.util

    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {', '.join(PEERS)}")
    return importlib.util.find_spec("deepctr_torch") is not None


def import_deepctr():
    """``(deepctr_torch.models, deepctr_torch.inputs, deepctr_torch.layers, version)`` without
    executing the package's ``__init__`` (a PyPI version check in a thread; it also needs
    ``requests``). Raises PeerUnavailable naming the install command when it is absent."""
    import importlib
    import importlib.metadata
    import importlib.util

    if "deepctr_torch" not in sys.modules:
        spec = importlib.util.find_spec("deepctr_torch")
        if spec is None:
            raise PeerUnavailable(f"--peer deepctr-torch needs DeepCTR-Torch: {PEER_INSTALL}")
        pkg = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
        sys.modules["deepctr_torch"] = pkg
    try:
        version = importlib.metadata.version("deepctr-torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    models = importlib.import_module("deepctr_torch.models")
    inputs = importlib.import_module("deepctr_torch.inputs")
    layers = importlib.import_module("deepctr_torch.layers")
    return models, inputs, layers, version


def right_pad(hist: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Left-padded histories [N, T, ...] (real behaviours in the LAST ``lengths`` slots) ->
    right-padded (real behaviours first, same order, zeros after). Vectorised gather."""
    N, T = hist.shape[:2]
    src = (np.arange(T)[None, :] + (T - lengths)[:, None]) % T  # slot j <- slot j + T - L
    out = np.take_along_axis(hist, src.reshape(N, T, *([1] * (hist.ndim - 2))), axis=1)
    keep = np.arange(T)[None, :] < lengths[:, None]
    return out * keep.reshape(N, T, *([1] * (hist.ndim - 2))).astype(out.dtype)


def _names(schema) -> tuple[list[str], list[str], list[str]]:
    """DeepCTR feature names of the item, user and context fields (prefixed: field names of
    different groups may coincide)."""
    return ([f"item_{f.name}" for f in schema.item_fields], [f"user_{f.name}" for f in schema.user_fields],
            [f"ctx_{f.name}" for f in schema.context_fields])


def deepctr_columns(schema, inputs, embed_dim: int, negatives: bool):
    """Feature columns from our FeatureSchema: SparseFeat per item/user/context field, and a
    VarLenSparseFeat ``hist_<item field>`` per item field sharing that field's embedding (mean
    combiner, length column ``hist_len``); with ``negatives`` also ``neg_hist_<item field>``."""
    SparseFeat, VarLenSparseFeat = inputs.SparseFeat, inputs.VarLenSparseFeat
    items, users, ctx = _names(schema)
    fields = list(schema.item_fields) + list(schema.user_fields) + list(schema.context_fields)
    sparse = [SparseFeat(n, f.vocab_size, embedding_dim=embed_dim, embedding_name=n)
              for n, f in zip(items + users + ctx, fields)]
    varlen = []
    for prefix in ("hist_",) + (("neg_hist_",) if negatives else ()):
        varlen += [VarLenSparseFeat(SparseFeat(prefix + n, f.vocab_size, embedding_dim=embed_dim, embedding_name=n),
                                    maxlen=schema.max_len, combiner="mean", length_name="hist_len")
                   for n, f in zip(items, schema.item_fields)]
    return sparse, varlen, items


def deepctr_inputs(split, schema, item_table: np.ndarray | None, neg_seed: int | None) -> dict[str, np.ndarray]:
    """One split as DeepCTR's input dict {feature name: int64 array}: [N] per field, [N, T] per
    history field (right-padded), ``hist_len`` [N]; with ``neg_seed`` also ``neg_hist_*``: item ids
    drawn uniformly from [2, V_item_id) (numpy generator seeded by ``neg_seed``), their item fields
    from ``item_table``, zero beyond each row's length."""
    items, users, ctx = _names(schema)
    lengths = split.hist_mask.sum(1).numpy().astype(np.int64)
    hist = right_pad(split.hist.numpy(), lengths)
    x: dict[str, np.ndarray] = {}
    for j, n in enumerate(items):
        x[n] = split.item[:, j].numpy()
        x["hist_" + n] = np.ascontiguousarray(hist[:, :, j])
    for j, n in enumerate(users):
        x[n] = split.user[:, j].numpy()
    for j, n in enumerate(ctx):
        x[n] = split.context[:, j].numpy()
    x["hist_len"] = lengths
    if neg_seed is not None:
        N, T = hist.shape[:2]
        rng = np.random.default_rng(neg_seed)
        neg_ids = rng.integers(2, item_table.shape[0], size=(N, T))
        neg = item_table[neg_ids] * (np.arange(T)[None, :] < lengths[:, None])[..., None]
        for j, n in enumerate(items):
            x["neg_hist_" + n] = np.ascontiguousarray(neg[:, :, j])
    return x


def build_deepctr(name: str, schema, cfg: dict[str, Any], device: str, seed: int, api) -> torch.nn.Module:
    """The DeepCTR-Torch peer of our ``name`` with our hyper-parameters: embedding ``embed_dim``,
    DNN ``mlp`` (ReLU; Dice for DIN/DIEN as ours), cross ``cross_layers``, CIN ``cin``, DIN
    attention ``att_mlp``; no L2, no dropout, embedding/DNN init N(0, 0.01^2) (our embedding
    init; DeepCTR's default is 1e-4)."""
    models, inputs, layers, _ = api
    embed = int(cfg.get("embed_dim", 16))
    mlp = tuple(cfg.get("mlp", (200, 80)))
    sparse, varlen, items = deepctr_columns(schema, inputs, embed, negatives=(name == "dien"))
    common = dict(init_std=0.01, seed=seed, device=device, l2_reg_embedding=0.0)
    dice = False
    if name == "lr":
        model = models.WDL(sparse + varlen, [], dnn_hidden_units=(), l2_reg_linear=0.0, **common)
    elif name == "wide_deep":
        model = models.WDL(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, l2_reg_linear=0.0, **common)
    elif name == "dcn":
        model = models.DCN([], sparse + varlen, cross_num=int(cfg.get("cross_layers", 3)),
                           cross_parameterization="vector", dnn_hidden_units=mlp, l2_reg_linear=0.0,
                           l2_reg_cross=0.0, **common)
    elif name == "deepfm":
        model = models.DeepFM(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, l2_reg_linear=0.0, **common)
    elif name == "xdeepfm":
        cin = tuple(cfg.get("cin", (100, 100)))
        split_half = bool(cfg.get("cin_split_half", False))
        model = models.xDeepFM(sparse + varlen, sparse + varlen, dnn_hidden_units=mlp, cin_layer_size=cin,
                               cin_split_half=split_half, cin_activation="linear", l2_reg_linear=0.0,
                               l2_reg_cin=0.0, **common)
        m = len(sparse) + len(varlen)  # fields fed to the CIN (pooled behaviours included)
        if model.cin.field_nums[0] != m:  # workaround: CIN sized by embedding tables
            model.cin = layers.CIN(m, cin, "linear", split_half, 0.0, seed, device=device)
            model.cin_linear = torch.nn.Linear(model.featuremap_num, 1, bias=False).to(device)
    elif name == "din":
        model = models.DIN(sparse + varlen[: len(items)], items, dnn_hidden_units=mlp,
                           att_hidden_size=tuple(cfg.get("att_mlp", (80, 40))),
                           att_activation="Dice" if cfg.get("att_activation", "dice") == "dice" else cfg["att_activation"],
                           att_weight_normalization=bool(cfg.get("softmax", False)), **common)
        dice = cfg.get("mlp_activation", "dice") == "dice"
    elif name == "dien":
        model = models.DIEN(sparse + varlen, items, gru_type="AUGRU", use_negsampling=True,
                            alpha=float(cfg.get("aux_weight", 1.0)), dnn_hidden_units=mlp,
                            att_hidden_units=(80, 40), **common)
        dice = cfg.get("mlp_activation", "dice") == "dice"
    else:
        raise ValueError(f"no DeepCTR-Torch peer for {name!r}")
    if dice:  # workaround: DNN(activation="dice") builds 3-D Dice layers for a 2-D input
        from deepctr_torch.layers.activation import Dice

        model.dnn.activation_layers = torch.nn.ModuleList(
            [Dice(h, dim=2, device=device) for h in mlp]).to(device)
    return model


def _mean_bce(y_pred: torch.Tensor, y_true: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The protocol's loss for DeepCTR's ``compile``: mean BCE on their sigmoid outputs (their
    fit passes ``reduction='sum'``, ignored on purpose)."""
    return torch.nn.functional.binary_cross_entropy(y_pred, y_true)


def measure_peer(opts: BenchOptions, model_name: str) -> dict[str, Any]:
    """The DeepCTR-Torch peer of ``model_name`` (run in a child process): parameters, epoch-based
    training samples/s, inference samples/s, evaluation time, peak RSS; with ``opts.accuracy`` its
    test metrics after the protocol's early stopping."""
    from bench.config import TrainConfig, resolve_config
    from bench.metrics import auc, gauc, logloss

    dev = _child_setup(opts)
    api = import_deepctr()
    version = api[3]
    ds = _load(opts)
    base_rss = rss_mb()
    cfg = resolve_config(opts.dataset, model_name)
    tcfg = TrainConfig(**cfg["train"])
    schema = ds.schema
    biggest = max(f.vocab_size for f in (*schema.item_fields, *schema.user_fields, *schema.context_fields))
    if biggest >= 2**24:
        raise ValueError(f"a vocabulary of {biggest} ids is not exact in DeepCTR's float32 input cast")
    table = ds.item_table.numpy()
    neg = model_name == "dien"
    x = {s: deepctr_inputs(ds.split(s), schema, table, (opts.seed * 1000 + k) if neg else None)
         for k, s in enumerate(("train", "valid", "test"))}
    y = {s: ds.split(s).label.numpy().astype(np.float32) for s in ("train", "valid", "test")}
    users = {s: ds.split(s).user_index.numpy() for s in ("valid", "test")}
    model = build_deepctr(model_name, schema, cfg["model"], str(dev), opts.seed, api)
    model.compile(torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay),
                  loss=_mean_bce, metrics=[])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clock = time.perf_counter

    def fit_epoch() -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = clock()
            model.fit(x["train"], y["train"], batch_size=tcfg.batch_size, epochs=1, verbose=0, shuffle=True)
            _sync(dev)
            return clock() - t0

    def scores(split: str) -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):
            return model.predict(x[split], batch_size=tcfg.eval_batch_size).reshape(-1)

    def metrics(split: str, p: np.ndarray) -> dict[str, float]:
        return {"auc": auc(y[split], p), "logloss": logloss(y[split], p), "gauc": gauc(y[split], p, users[split])}

    epoch_s = fit_epoch()
    t0 = clock()
    valid1 = metrics("valid", scores("valid"))
    eval_s = clock() - t0
    infer_s = []
    for _ in range(max(opts.infer_passes, 1)):
        t0 = clock()
        scores("valid")
        _sync(dev)
        infer_s.append(clock() - t0)
    out: dict[str, Any] = {
        "model": model_name,
        "peer_model": f"DeepCTR-Torch {version} {DEEPCTR_MODELS[model_name]}",
        "peer_version": version,
        "peer_n_params": n_params,
        "peer_train_samples_per_s": len(y["train"]) / epoch_s,
        "peer_epoch_s": epoch_s,
        "peer_eval_s": eval_s,
        "peer_infer_samples_per_s": len(y["valid"]) / statistics.median(infer_s),
        "peer_valid_auc_epoch1": valid1["auc"],
        "peer_peak_rss_mb": rss_mb(),
        "peer_base_rss_mb": base_rss,
        "peer_peak_gpu_mb": _gpu_peak_mb(dev),
        "peer_threads": torch.get_num_threads(),
    }
    if not opts.accuracy:
        return out
    best_auc, best_epoch, best_state, bad = valid1["auc"], 1, copy.deepcopy(model.state_dict()), 0
    epochs_run = 1
    for epoch in range(2, tcfg.max_epochs + 1):
        epochs_run = epoch
        fit_epoch()
        v = metrics("valid", scores("valid"))["auc"]
        if v > best_auc:
            best_auc, best_epoch, best_state, bad = v, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= tcfg.patience:
                break
    model.load_state_dict(best_state)
    test = metrics("test", scores("test"))
    out.update({
        "peer_test_auc": test["auc"], "peer_test_logloss": test["logloss"], "peer_test_gauc": test["gauc"],
        "peer_valid_auc": best_auc, "peer_best_epoch": best_epoch, "peer_epochs_run": epochs_run,
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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
)


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:,.{digits}f}"


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
        runner: a ``bench.studies.Runner`` giving our test metrics (existing run records reused,
            missing runs trained); None (or ``opts.accuracy`` False) leaves them empty.
    Returns (table, written paths). Raises PeerUnavailable when ``peer`` is not installed.
    """
    from bench import train as train_mod
    from bench.perf import allocator_note, tune_allocator
    from bench.train import RunSpec

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
    load_end = os.getloadavg()
    if opts.accuracy and runner is not None:
        for row in rows:
            say(f"{opts.dataset}: test metrics of {row['model']} (run record, trained if missing)")
            record, _ = runner.run(RunSpec(opts.dataset, row["model"], opts.seed))
            row.update({"test_auc": record["test"]["auc"], "test_logloss": record["test"]["logloss"],
                        "test_gauc": record["test"]["gauc"], "best_epoch": record["best_epoch"],
                        "run_id": record["run_id"]})
    for row in rows:
        peer_rate = row.get("peer_train_samples_per_s")
        row["ratio"] = row["epoch_train_samples_per_s"] / peer_rate if peer_rate else float("nan")
        peer_inf = row.get("peer_infer_samples_per_s")
        row["infer_ratio"] = row["infer_samples_per_s"] / peer_inf if peer_inf else float("nan")
    g = gauc_benchmark()
    tune_allocator()
    threads = sorted({r["threads"] for r in rows})
    first = rows[0] if rows else {}
    notes = [
        f"Machine: {_n_cpus()} CPUs available ({os.cpu_count()} online), {cpu_model()}; "
        f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end of the measurements; "
        f"device {opts.device}; torch {torch.__version__} with {', '.join(map(str, threads))} intra-op thread(s) "
        f"per child; Python {platform.python_version()}; {allocator_note()}.",
        f"Dataset {ds.name} ({ds.protocol}), fingerprint {ds.fingerprint[:16]}; train {len(ds.train):,}, "
        f"valid {len(ds.valid):,}, test {len(ds.test):,} samples; batch {first.get('batch_size', '?')}, "
        f"eval batch {first.get('eval_batch_size', '?')} (dataset config); seed {opts.seed}; "
        f"measured {started.isoformat(timespec='seconds')} to "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}; code {train_mod.git_commit()}.",
        "Each model in a fresh spawned process. Train samples/s (median step): batch / median time of "
        f"{opts.steps} full-batch training steps (forward, loss, backward, Adam, non-finite check) after "
        f"{opts.warmup} warm-up steps, real shuffled batches of the train split. Train samples/s (epoch): "
        "N_train / (data + compute) seconds of the first epoch of a freshly seeded model; data = batch "
        "gathering from the split tensors, compute = the training steps; eval = one validation pass "
        "(scores + AUC, logloss, gAUC). Infer samples/s: N_valid / median seconds of "
        f"{opts.infer_passes} scoring passes over the validation split. Peak RSS: ru_maxrss of the "
        "child: interpreter, libraries, the prepared dataset and the model (base_rss_mb in the CSV: the "
        "child's peak after its imports and loading the dataset, before building the model).",
        ("Test AUC: our run records (the main table's runs when they exist; else trained now by the "
         "protocol: early stopping on validation AUC, patience and max epochs from the config, best "
         "epoch restored, test scored once)." if opts.accuracy and runner is not None else
         "Test metrics not computed (--no-accuracy): speed and memory only."),
        f"bench.metrics.gauc on {g['n']:,} predictions from {g['users']:,} users: "
        f"{g['min_s']:.3f} s (min of 3; median {g['median_s']:.3f} s).",
    ]
    if peer is not None:
        version = next((r.get("peer_version") for r in rows if r.get("peer_version")), PEER_VERSION)
        notes += [
            f"Peer: DeepCTR-Torch {version} (WDL, DCN, DeepFM, xDeepFM, DIN, DIEN; LR = WDL without DNN; "
            "no MIAN) fed from the same prepared arrays: SparseFeat per item/user/context field, "
            "VarLenSparseFeat hist_<item field> sharing the item field's embedding (mean-pooled for "
            "the non-sequence models, as ours), right-padded with a length column; DIEN with "
            "gru_type=AUGRU, use_negsampling=True, negatives drawn once per sample from the item table "
            "(seeded), its attention MLP (80, 40); same embedding 16, DNN, cross layers, CIN, DIN "
            "attention (80, 40), batch, Adam lr as ours; no L2 and no dropout (ours have none); "
            "init std 0.01.",
            "DeepCTR train samples/s = N_train / seconds of one fit(..., epochs=1) of a freshly seeded "
            "model (their DataLoader and per-step host work included). Ratio = OUR epoch-based "
            "train samples/s / theirs (infer_ratio in the CSV: the same for scoring). DeepCTR test "
            "AUC: fit one epoch at a time, validation AUC with bench.metrics after each, patience and "
            "max epochs from the config, best epoch's weights restored, test scored once with their "
            "predict and bench.metrics.",
            "Workarounds for DeepCTR-Torch: " + "; ".join(DEEPCTR_WORKAROUNDS) + ".",
        ]
        failed = [f"{r['model']}: {r['peer_status']}" for r in rows if r.get("peer_status", "ok") != "ok"]
        if failed:
            notes.append("Peer failures: " + "; ".join(failed))
    table = efficiency_table(rows, notes, opts.dataset, peer)
    paths = write_table(table, Path(out_dir) / "efficiency") if out_dir is not None else []
    return table, paths


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
