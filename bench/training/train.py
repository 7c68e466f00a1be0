"""One training run = (dataset, model, variant, resolved config, seed) -> run record (PROTOCOL 3).

Adam on mean-reduced BCE with logits (+ a model's auxiliary loss), early stopping on validation
AUC with patience, best-epoch weights restored, the test split scored once after selection (and
once more with the weights of the epoch of best validation logloss, when that is another epoch).
Batches are slices of the in-memory split tensors under a per-epoch permutation drawn from a
generator seeded by the run seed.

One epoch loop, :class:`Trainer`, drives every model through an adapter (:class:`EpochAdapter`:
"fit one epoch", "score a split"): ours through :class:`StepLoop` (Adam steps over the batches),
the DeepCTR-Torch peer of the efficiency benchmark through ``bench.perf.peer.DeepCTRAdapter``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from bench.training.config import TrainConfig
from bench.data import check_ids
from bench.nn.contract import Batch, ModelOutput, Split
from bench.nn.embedding import embedding_penalty
from bench.metrics import split_metrics
from bench.training.runtime import tune_allocator
from bench.training.registry import build_model, count_params
from bench.training.runs import REPO_ROOT, run_id, run_key

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names epoch and step."""


@dataclass(frozen=True)
class RunSpec:
    """What to run: the CLI and the studies build lists of these."""

    dataset: str
    model: str
    seed: int
    variant: str = "default"
    variant_overrides: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Fix Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def loss_fn(out: ModelOutput, label: torch.Tensor) -> torch.Tensor:
    """Mean BCE on logits plus the model's (already weighted) auxiliary loss, if any."""
    loss = F.binary_cross_entropy_with_logits(out.logits, label)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    return loss


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
               embedding_regularizer: float = 0.0) -> torch.Tensor:
    """One optimiser step on ``batch``: forward, :func:`loss_fn` (plus ``embedding_regularizer``
    times :func:`bench.nn.embedding.embedding_penalty` when it is > 0), backward, update.

    Returns the detached loss, penalty included (a 0-dim tensor on the model's device; no host
    synchronisation).
    """
    out = model(batch)
    loss = loss_fn(out, batch.label)
    if embedding_regularizer:
        loss = loss + embedding_regularizer * embedding_penalty(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) with ``tcfg``'s lr and L2 weight decay, torch's fused kernel (one
    pass over each parameter instead of one kernel per update term; the same algorithm, other
    float rounding than the per-op path)."""
    return torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, fused=True)


#: on an accelerator the non-finite check reads the losses back every this many steps (one
#: synchronisation per window instead of one per step); on the CPU it is every step.
NONFINITE_WINDOW = 64


def nonfinite_window(device: torch.device) -> int:
    """Steps between two non-finite-loss checks on ``device`` (1 on the CPU)."""
    return 1 if device.type == "cpu" else NONFINITE_WINDOW


@torch.inference_mode()
def collect_output(model: torch.nn.Module, split: Split, batch_size: int, name: str = "logits",
                   by_length: bool | None = None) -> np.ndarray:
    """Concatenate output attribute ``name`` (the logits [B], or e.g. MIAN's ``gim_weights``
    [B, 7]) over ``split`` in eval mode -> [N, ...] float64 in split order ([0] for an empty
    split).

    With ``by_length`` (the default for the logits) the split is scored in batches of similar
    history length, each trimmed to its longest real history (:meth:`Batch.length_sorted_batches`),
    and the outputs are put back in split order: the same scores as ``by_length=False``
    (split-order batches, all T slots) up to float rounding (tested per model), without the
    padding. Other outputs default to ``by_length=False``: a per-slot output ([B, T] attention)
    would come back trimmed; pass ``by_length=True`` only for an output whose shape does not
    depend on T (MIAN's ``gim_weights``).
    Raises ValueError when the model does not produce ``name``, or (``by_length``) when its shape
    varies between batches."""
    if by_length is None:
        by_length = name == "logits"
    was_training = model.training
    model.eval()
    parts, where = [], []
    batches = split.length_sorted_batches(batch_size) if by_length else ((None, b) for b in split.batches(batch_size))
    try:
        for pos, b in batches:
            value = getattr(model(b), name, None)
            if value is None:
                raise ValueError(f"{type(model).__name__} output has no {name!r} (is the module switched off?)")
            parts.append(value.double().cpu())
            if pos is not None:
                where.append(pos.cpu())
    finally:
        model.train(was_training)
    if not parts:
        return np.zeros(0)
    if len({p.shape[1:] for p in parts}) > 1:
        raise ValueError(f"{type(model).__name__} output {name!r} changes shape with the batch's history "
                         f"length; collect it with by_length=False")
    values = torch.cat(parts)
    if where:
        out = torch.empty_like(values)
        out[torch.cat(where)] = values
        values = out
    return values.numpy()


def predict(model: torch.nn.Module, split: Split, batch_size: int) -> np.ndarray:
    """Logits [N] (float64) of ``model`` over ``split`` in eval mode, in split order."""
    return collect_output(model, split, batch_size, "logits")


def score_split(model: torch.nn.Module, split: Split, batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    """(AUC, logloss and gAUC, logits [N] float64 in split order) of ``model`` on a whole split:
    :func:`predict`, then :func:`bench.metrics.split_metrics` on the concatenated logits. The one
    scoring path of training, testing and the test scores kept beside each run record."""
    logits = predict(model, split, batch_size)
    return split_metrics(split.label.cpu().numpy(), logits, split.user_index.cpu().numpy()), logits


def evaluate(model: torch.nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    """AUC, logloss and gAUC of ``model`` on a whole split (metrics on concatenated logits)."""
    return score_split(model, split, batch_size)[0]


class EpochAdapter(Protocol):
    """What :class:`Trainer` needs of a model: ``model`` (its weights are selected and restored),
    ``steps`` (optimiser steps so far, for the history), and the three methods below. An adapter
    that also has ``score_logits(split) -> (metrics, logits [N])`` (:class:`StepLoop`) gets its
    test logits kept (:attr:`Trainer.test_logits`)."""

    model: torch.nn.Module
    steps: int

    def fit_epoch(self, epoch: int) -> Iterator[None]:
        """Train one epoch; the returned iterator yields wherever a mid-epoch validation is due
        (the Trainer validates at each yield, then once more at the epoch's end)."""

    def score(self, split: str) -> dict[str, float]:
        """``{"auc", "logloss", "gauc"}`` of the current weights on split ``"valid"`` or ``"test"``."""

    def take_train_loss(self) -> float:
        """Mean training loss since the previous call (then reset)."""


class Trainer:
    """Epochs of an :class:`EpochAdapter` with early stopping on validation AUC (PROTOCOL 3).

    After each epoch the validation split is scored; an epoch whose AUC beats every earlier one
    (strictly) is the best and its weights are copied; training stops after ``patience`` epochs
    in a row without a new best, or after ``max_epochs``. :meth:`fit` restores the best weights;
    :meth:`test` scores the test split with them. Beside it, without changing the stopping or
    that selection, the epoch end with the lowest validation logloss (strictly below every
    earlier one) has its weights copied to the CPU (one more state dict), and
    :meth:`test_by_logloss` scores the test split with them (selection on validation logloss;
    the first test scoring reused when it is the same epoch). ``history`` holds one entry per
    validation: epoch, step, epoch_end, valid metrics, train_loss (mean since the previous one);
    ``on_eval`` is called with each. ``progress``: the description of a tqdm bar over epochs
    (None: no bar). ``eval_seconds``: time spent scoring, both test scorings included.
    ``test_logits``: the test logits [N] of :meth:`test` when the adapter gives them, else None.
    """

    def __init__(self, adapter: EpochAdapter, max_epochs: int, patience: int,
                 on_eval: Callable[[dict[str, Any]], None] | None = None, progress: str | None = None):
        self.adapter, self.max_epochs, self.patience, self.on_eval = adapter, max_epochs, patience, on_eval
        self.history: list[dict[str, Any]] = []
        self.epochs_run, self.eval_seconds = 0, 0.0
        self.best_auc, self.best_epoch, self._best_state, self._bad_epochs = -1.0, 0, None, 0
        self.best_logloss, self.best_logloss_epoch, self._best_logloss_state = math.inf, 0, None
        self._test_metrics: dict[str, float] | None = None
        self.test_logits: np.ndarray | None = None
        self.stopped = max_epochs < 1
        self._bar = tqdm(total=max_epochs, desc=progress, unit="epoch", leave=False,
                         disable=True if progress is None else None)

    def epoch(self) -> dict[str, Any]:
        """Train the next epoch and update the early stopping; returns its epoch-end entry."""
        if self.stopped:
            raise RuntimeError("training has stopped: no further epoch")
        epoch = self.epochs_run = self.epochs_run + 1
        for _ in self.adapter.fit_epoch(epoch):
            self._validate(epoch, epoch_end=False)
        entry = self._validate(epoch, epoch_end=True)
        self._bar.update(1)
        self._bar.set_postfix(valid_auc=f"{entry['valid']['auc']:.4f}")
        auc, ll = entry["valid"]["auc"], entry["valid"]["logloss"]
        if ll < self.best_logloss:  # selection on logloss: a CPU copy, nothing else changes
            self.best_logloss, self.best_logloss_epoch = ll, epoch
            self._best_logloss_state = {k: v.detach().to("cpu", copy=True)
                                        for k, v in self.adapter.model.state_dict().items()}
        if auc > self.best_auc:
            self.best_auc, self.best_epoch, self._bad_epochs = auc, epoch, 0
            self._best_state = copy.deepcopy(self.adapter.model.state_dict())
            self.stopped = epoch >= self.max_epochs
        else:
            self._bad_epochs += 1
            self.stopped = self._bad_epochs >= self.patience or epoch >= self.max_epochs
        return entry

    def fit(self) -> "Trainer":
        """Epochs until stopped; then the best epoch's weights restored, the model in eval mode."""
        while not self.stopped:
            self.epoch()
        self._bar.close()
        if self._best_state is not None:
            self.adapter.model.load_state_dict(self._best_state)
        self.adapter.model.eval()
        return self

    def test(self) -> dict[str, float]:
        """Metrics of the current (after :meth:`fit`: the best) weights on the test split; their
        logits kept in :attr:`test_logits` when the adapter has ``score_logits``."""
        t0 = time.perf_counter()
        scorer = getattr(self.adapter, "score_logits", None)
        if scorer is not None:
            metrics, self.test_logits = scorer("test")
        else:
            metrics, self.test_logits = self.adapter.score("test"), None
        self.eval_seconds += time.perf_counter() - t0
        self._test_metrics = metrics
        return metrics

    def test_by_logloss(self) -> dict[str, Any] | None:
        """``{"epoch", "auc", "logloss", "gauc"}``: the test metrics of the epoch with the best
        validation logloss (after :meth:`fit` and :meth:`test`). The same epoch as the AUC
        selection reuses :meth:`test`'s metrics; another epoch loads its weights, scores the test
        split and puts the AUC-selected weights back. None when no epoch had a finite logloss.
        Raises RuntimeError before :meth:`test`."""
        if self._test_metrics is None:
            raise RuntimeError("test_by_logloss needs test() first")
        if self.best_logloss_epoch == 0:
            return None
        if self.best_logloss_epoch == self.best_epoch:
            return {"epoch": self.best_logloss_epoch, **self._test_metrics}
        model = self.adapter.model
        selected = self._best_state if self._best_state is not None else copy.deepcopy(model.state_dict())
        t0 = time.perf_counter()
        model.load_state_dict(self._best_logloss_state)
        try:
            metrics = self.adapter.score("test")
        finally:
            model.load_state_dict(selected)
            model.eval()
        self.eval_seconds += time.perf_counter() - t0
        return {"epoch": self.best_logloss_epoch, **metrics}

    @property
    def valid_by_logloss(self) -> dict[str, float] | None:
        """Validation metrics at the end of the epoch with the best validation logloss (None: none)."""
        return next((h["valid"] for h in self.history if h["epoch"] == self.best_logloss_epoch and h["epoch_end"]),
                    None)

    @property
    def best_valid(self) -> dict[str, float]:
        """Validation metrics at the end of the best epoch."""
        return next(h["valid"] for h in self.history if h["epoch"] == self.best_epoch and h["epoch_end"])

    def _validate(self, epoch: int, epoch_end: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        metrics = self.adapter.score("valid")
        self.eval_seconds += time.perf_counter() - t0
        entry = {"epoch": epoch, "step": self.adapter.steps, "epoch_end": epoch_end, "valid": metrics,
                 "train_loss": self.adapter.take_train_loss()}
        self.history.append(entry)
        log.info("epoch %d step %d valid %s train_loss %.5f", epoch, entry["step"], metrics, entry["train_loss"])
        if self.on_eval is not None:
            self.on_eval(entry)
        return entry


class StepLoop:
    """Our models as an :class:`EpochAdapter`: :func:`train_step` (Adam with ``tcfg``'s lr and
    weight decay) over ``splits["train"]`` in batches of ``tcfg.batch_size``, shuffled every epoch
    by a generator seeded with ``seed``; a mid-epoch validation every ``tcfg.eval_every_steps``
    steps (0: none); :func:`evaluate` at ``tcfg.eval_batch_size`` for the scores.

    Raises TrainingError on the first non-finite loss, naming ``run`` (e.g. "din (default, seed
    0) on movielens-100k"), epoch and step; on an accelerator the losses are read back every
    ``NONFINITE_WINDOW`` steps, before each validation and at epoch ends.
    """

    def __init__(self, model: torch.nn.Module, splits: dict[str, Split], tcfg: TrainConfig, seed: int,
                 device: torch.device, run: str):
        self.model, self.tcfg, self.run = model, tcfg, run
        self.optimizer = make_optimizer(model, tcfg)
        self.generator = torch.Generator().manual_seed(seed)
        self.splits = {name: s.to(device) for name, s in splits.items()}
        self.steps = 0
        self._loss_sum, self._loss_count = torch.zeros((), device=device), 0
        self._window = nonfinite_window(device)
        self._pending: list[torch.Tensor] = []  # losses of the steps not yet checked (accelerators only)

    def fit_epoch(self, epoch: int) -> Iterator[None]:
        self.model.train()
        every = self.tcfg.eval_every_steps
        for batch in self.splits["train"].batches(self.tcfg.batch_size, shuffle=True, generator=self.generator):
            loss = train_step(self.model, self.optimizer, batch, self.tcfg.embedding_regularizer)
            self.steps += 1
            self._pending.append(loss)
            if len(self._pending) >= self._window:
                self._check_finite(epoch)
            self._loss_sum += loss
            self._loss_count += 1
            if every and self.steps % every == 0:
                self._check_finite(epoch)
                yield
        self._check_finite(epoch)

    def score(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.splits[split], self.tcfg.eval_batch_size)

    def score_logits(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        """(metrics, logits [N] float64) of the current weights on ``split`` (:func:`score_split`)."""
        return score_split(self.model, self.splits[split], self.tcfg.eval_batch_size)

    def take_train_loss(self) -> float:
        mean = float(self._loss_sum) / max(self._loss_count, 1)
        self._loss_sum, self._loss_count = torch.zeros((), device=self._loss_sum.device), 0
        return mean

    def _check_finite(self, epoch: int) -> None:
        """Raise on the first non-finite loss among the unchecked steps (one host read)."""
        if not self._pending:
            return
        if len(self._pending) == 1:  # the CPU path: one scalar check per step
            ok = bool(torch.isfinite(self._pending[0]))
            losses = self._pending[0].reshape(1)
        else:
            losses = torch.stack(self._pending)
            ok = bool(torch.isfinite(losses).all())
        first = self.steps - len(self._pending)
        self._pending.clear()
        if not ok:
            k = int((~torch.isfinite(losses)).nonzero()[0, 0])
            raise TrainingError(f"{self.run}: non-finite loss {losses[k].item()} at epoch {epoch}, step {first + k + 1}")

def library_versions() -> dict[str, str]:
    import pandas
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "sklearn": sklearn.__version__,
    }


_SIMD_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni"}


def machine_info() -> dict[str, str]:
    """What the float results of a run depend on besides the seed, the code and ``library_versions``:
    the CPU model, the instruction set torch's kernels dispatch to (``ATEN_CPU_CAPABILITY`` can lower
    it) and the architecture. Informational: not part of the run id (PROTOCOL section 3)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = sorted(f for f in flags if f in _SIMD_FLAGS or f.startswith(("avx512", "amx")))
    return {"cpu": cpu, "isa": torch.backends.cpu.get_cpu_capability(), "arch": platform.machine(),
            "simd": " ".join(simd)}


def git_commit() -> str:
    """HEAD's commit, suffixed ``-dirty`` when tracked code differs from it; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "bench", "baselines", "mian", "cli.py"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head + ("-dirty" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train_run(
    ds: Any,
    model_name: str,
    config: dict[str, dict[str, Any]],
    seed: int,
    variant: str = "default",
    device: str = "cpu",
    log_dir: Path | None = None,
    progress: bool = True,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    on_test_scores: Callable[[np.ndarray], None] | None = None,
    score_test: bool = True,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train ``model_name`` on the prepared dataset ``ds``; return its run record and the model
    with the best-epoch weights restored (in eval mode).

    Args:
        ds: a ``bench.data.PreparedDataset`` (name, protocol, fingerprint, schema, train, valid,
            test, item_table).
        config: resolved config {"train": TrainConfig fields, "model": model Config fields}.
        seed: model seed (init, shuffling, dropout, DIEN negatives).
        log_dir: where ``<run_id>.log`` is written (starts with the resolved config).
        on_eval: called with each validation's history entry.
        on_test_scores: called once with the test logits [N] (float64, split order) of the
            selected (best validation AUC) model, the scores the record's test metrics come from.
        score_test: False for a tuning trial (bench.training.tuning): the test split is never
            looked at (not checked, not moved to the device, not scored); the record's ``test``
            metrics are NaN ("not scored"), ``test_scored`` is False, there is no
            ``test_by_logloss`` and ``on_test_scores`` is not called.
    The record also holds ``test_by_logloss`` ({epoch, auc, logloss, gauc}: the test metrics with
    selection on validation logloss instead) and ``valid_by_logloss`` (that epoch's validation
    metrics); neither changes the stopping, the selected model or any other field.
    Raises DataError (before training) when an id of a split or of the item table is outside its
    field's vocabulary (:func:`bench.data.check_ids`, once per split).
    Raises TrainingError on the first non-finite loss, naming epoch and step (on an accelerator
    the losses are checked every ``NONFINITE_WINDOW`` steps and at epoch ends, so the error may
    come a few steps later, still naming the first bad step).
    """
    tune_allocator()
    tcfg = TrainConfig(**config["train"])
    key = run_key(protocol=ds.protocol, dataset=ds.name, fingerprint=ds.fingerprint, model=model_name,
                  variant=variant, seed=seed, config=config)
    rid = run_id(key)
    with _run_log(log_dir, rid):
        log.info("run %s: %s", rid, json.dumps({k: v for k, v in key.items()}, sort_keys=True))
        t_start = time.perf_counter()
        names = ("train", "valid", "test") if score_test else ("train", "valid")
        for name in names:  # once per split, not per step
            check_ids(ds.schema, getattr(ds, name), f"{ds.name} {name} split",
                      item_table=ds.item_table if name == "train" else None)
        seed_everything(seed)
        dev = torch.device(device)
        model = build_model(model_name, ds.schema, config["model"], item_table=ds.item_table).to(dev)
        loop = StepLoop(model, {name: getattr(ds, name) for name in names}, tcfg, seed, dev,
                        run=f"{model_name} ({variant}, seed {seed}) on {ds.name}")
        trainer = Trainer(loop, tcfg.max_epochs, tcfg.patience, on_eval=on_eval,
                          progress=f"{model_name}/{variant}/s{seed}" if progress else None).fit()
        t_train = time.perf_counter() - t_start - trainer.eval_seconds
        if not score_test:
            log.info("best epoch %d valid %s (a tuning trial: the test split is not scored)", trainer.best_epoch,
                     trainer.best_valid)
            record = _record(key, rid, trainer, dict(NOT_SCORED), None, t_train, ds, dev)
            record["test_scored"] = False
            return record, model
        test_metrics = trainer.test()
        log.info("best epoch %d valid %s test %s", trainer.best_epoch, trainer.best_valid, test_metrics)
        by_logloss = trainer.test_by_logloss()
        if by_logloss is not None:
            log.info("best validation logloss: epoch %d valid %s test %s", by_logloss["epoch"],
                     trainer.valid_by_logloss, by_logloss)
        if on_test_scores is not None and trainer.test_logits is not None:
            on_test_scores(trainer.test_logits)
        return _record(key, rid, trainer, test_metrics, by_logloss, t_train, ds, dev), model


#: the ``test`` metrics of a run record whose test split was not scored (a tuning trial)
NOT_SCORED = {"auc": float("nan"), "logloss": float("nan"), "gauc": float("nan")}


@contextlib.contextmanager
def _run_log(log_dir: Path | None, rid: str) -> Iterator[None]:
    """This module's INFO lines, also into ``<log_dir>/<rid>.log`` when ``log_dir`` is given."""
    handler = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(log_dir) / f"{rid}.log", mode="w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(processName)s] %(message)s"))
        log.addHandler(handler)
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(old_level)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _record(key: dict[str, Any], rid: str, trainer: Trainer, test_metrics: dict[str, float],
            by_logloss: dict[str, Any] | None, t_train: float, ds: Any, dev: torch.device) -> dict[str, Any]:
    """The run record (PROTOCOL 3): the key's fields, then the results, then provenance."""
    record = dict(key)
    record.update(
        {
            "run_id": rid,
            "test": test_metrics,
            "valid": trainer.best_valid,
            "valid_history": trainer.history,
            "best_epoch": trainer.best_epoch,
            **({"test_by_logloss": by_logloss, "valid_by_logloss": trainer.valid_by_logloss} if by_logloss else {}),
            "epochs_run": trainer.epochs_run,
            "steps": trainer.adapter.steps,
            "wall_seconds": {"train": round(t_train, 3), "eval": round(trainer.eval_seconds, 3)},
            "n_params": count_params(trainer.adapter.model),
            "versions": library_versions(),
            "machine": machine_info(),
            "git_commit": git_commit(),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            # informational (the fingerprint in the key already differs with the data)
            "data_params": dict(getattr(ds, "params", None) or {}),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return record
