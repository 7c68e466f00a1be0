"""One training run = (dataset, model, variant, resolved config, seed) -> run record (PROTOCOL 3).

Adam on mean-reduced BCE with logits (+ a model's auxiliary loss), early stopping on validation
AUC with patience, best-epoch weights restored, the test split scored once after selection.
Batches are slices of the in-memory split tensors under a per-epoch permutation drawn from a
generator seeded by the run seed.
"""
from __future__ import annotations

import copy
import json
import logging
import platform
import random
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from bench.training.config import TrainConfig
from bench.data import check_ids
from bench.nn.contract import BATCH_FIELDS, Batch, ModelOutput, Split
from bench.metrics import split_metrics
from bench.training.allocator import tune_allocator
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


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
    """One optimiser step on ``batch``: forward, :func:`loss_fn`, backward, update.

    Returns the detached loss (a 0-dim tensor on the model's device; no host synchronisation).
    """
    out = model(batch)
    loss = loss_fn(out, batch.label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def shuffled_batches(split: Split, batch_size: int, generator: torch.Generator):
    """The batches of ``split.batches(batch_size, shuffle=True, generator=generator)``, same
    permutation and same tensors, gathered with ``index_select`` (about 0.15 ms less host time
    per 256-sample MovieLens-100K batch than advanced indexing)."""
    n = len(split)
    perm = torch.randperm(n, generator=generator, device="cpu").to(split.label.device)
    tensors = [getattr(split, k) for k in BATCH_FIELDS]
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        yield Batch(*(torch.index_select(t, 0, idx) for t in tensors))


#: on an accelerator the non-finite check reads the losses back every this many steps (one
#: synchronisation per window instead of one per step); on the CPU it is every step.
NONFINITE_WINDOW = 64


def nonfinite_window(device: torch.device) -> int:
    """Steps between two non-finite-loss checks on ``device`` (1 on the CPU)."""
    return 1 if device.type == "cpu" else NONFINITE_WINDOW


@torch.inference_mode()
def predict(model: torch.nn.Module, split: Split, batch_size: int) -> np.ndarray:
    """Logits [N] (float64) of ``model`` over ``split`` in eval mode, in split order."""
    was_training = model.training
    model.eval()
    out = [model(b).logits.float() for b in split.batches(batch_size)]
    model.train(was_training)
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


@torch.inference_mode()
def collect_output(model: torch.nn.Module, split: Split, batch_size: int, name: str) -> np.ndarray:
    """Concatenate output attribute ``name`` (e.g. MIAN's ``gim_weights`` [B, 7]) over ``split``
    in eval mode -> [N, ...] float64. Raises ValueError when the model does not produce it."""
    was_training = model.training
    model.eval()
    parts = []
    for b in split.batches(batch_size):
        value = getattr(model(b), name, None)
        if value is None:
            raise ValueError(f"{type(model).__name__} output has no {name!r} (is the module switched off?)")
        parts.append(value.double().cpu())
    model.train(was_training)
    return torch.cat(parts).numpy()


def evaluate(model: torch.nn.Module, split: Split, batch_size: int) -> dict[str, float]:
    """AUC, logloss and gAUC of ``model`` on a whole split (metrics on concatenated logits)."""
    logits = predict(model, split, batch_size)
    return split_metrics(split.label.cpu().numpy(), logits, split.user_index.cpu().numpy())


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
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train ``model_name`` on the prepared dataset ``ds``; return its run record and the model
    with the best-epoch weights restored (in eval mode).

    Args:
        ds: a ``bench.data.PreparedDataset`` (name, protocol, fingerprint, schema, train, valid,
            test, item_table).
        config: resolved config {"train": TrainConfig fields, "model": model Config fields}.
        seed: model seed (init, shuffling, dropout, DIEN negatives).
        log_dir: where ``<run_id>.log`` is written (starts with the resolved config).
    Raises DataError (before training) when an id of a split or of the item table is outside its
    field's vocabulary (:func:`bench.data.check_ids`, once per split).
    Raises TrainingError on the first non-finite loss, naming epoch and step (on an accelerator
    the losses are checked every ``NONFINITE_WINDOW`` steps and at epoch ends, so the error may
    come a few steps later, still naming the first bad step).
    """
    tune_allocator()
    tcfg = TrainConfig(**config["train"])
    key = run_key(
        protocol=ds.protocol,
        dataset=ds.name,
        fingerprint=ds.fingerprint,
        model=model_name,
        variant=variant,
        seed=seed,
        config=config,
    )
    rid = run_id(key)
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
        log.info("run %s: %s", rid, json.dumps({k: v for k, v in key.items()}, sort_keys=True))
        return _train(ds, model_name, config, tcfg, seed, variant, device, rid, key, progress, on_eval)
    finally:
        log.setLevel(old_level)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _train(ds, model_name, config, tcfg, seed, variant, device, rid, key, progress, on_eval):
    t_start = time.perf_counter()
    for name in ("train", "valid", "test"):  # once per split, not per step
        check_ids(ds.schema, getattr(ds, name), f"{ds.name} {name} split",
                  item_table=ds.item_table if name == "train" else None)
    seed_everything(seed)
    dev = torch.device(device)
    model = build_model(model_name, ds.schema, config["model"], item_table=ds.item_table).to(dev)
    n_params = count_params(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    shuffle_gen = torch.Generator().manual_seed(seed)
    train, valid, test = (s.to(dev) for s in (ds.train, ds.valid, ds.test))

    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_state, bad_epochs = -1.0, 0, None, 0
    t_eval = 0.0
    step = 0
    loss_sum = torch.zeros((), device=dev)
    loss_count = 0
    epochs_run = 0

    def do_eval(epoch: int, epoch_end: bool) -> dict[str, Any]:
        nonlocal t_eval, loss_sum, loss_count
        t0 = time.perf_counter()
        metrics = evaluate(model, valid, tcfg.eval_batch_size)
        t_eval += time.perf_counter() - t0
        entry = {
            "epoch": epoch,
            "step": step,
            "epoch_end": epoch_end,
            "valid": metrics,
            "train_loss": float(loss_sum) / max(loss_count, 1),
        }
        loss_sum = torch.zeros((), device=dev)
        loss_count = 0
        history.append(entry)
        log.info("epoch %d step %d valid %s train_loss %.5f", epoch, step, metrics, entry["train_loss"])
        if on_eval is not None:
            on_eval(entry)
        return entry

    window = nonfinite_window(dev)
    pending: list[torch.Tensor] = []  # losses of the steps not yet checked (accelerators only)

    def check_finite(epoch: int) -> None:
        """Raise on the first non-finite loss among the unchecked steps (one host read)."""
        if not pending:
            return
        if len(pending) == 1:  # the CPU path: one scalar check per step
            ok = bool(torch.isfinite(pending[0]))
            losses = pending[0].reshape(1)
        else:
            losses = torch.stack(pending)
            ok = bool(torch.isfinite(losses).all())
        first = step - len(pending)
        pending.clear()
        if not ok:
            k = int((~torch.isfinite(losses)).nonzero()[0, 0])
            raise TrainingError(
                f"{model_name} ({variant}, seed {seed}) on {ds.name}: non-finite loss {losses[k].item()} "
                f"at epoch {epoch}, step {first + k + 1}"
            )

    model.train()
    bar = tqdm(total=tcfg.max_epochs, desc=f"{model_name}/{variant}/s{seed}", unit="epoch", leave=False, disable=not progress or None)
    for epoch in range(1, tcfg.max_epochs + 1):
        epochs_run = epoch
        for batch in shuffled_batches(train, tcfg.batch_size, shuffle_gen):
            loss_value = train_step(model, optimizer, batch)
            step += 1
            pending.append(loss_value)
            if len(pending) >= window:
                check_finite(epoch)
            loss_sum += loss_value
            loss_count += 1
            if tcfg.eval_every_steps and step % tcfg.eval_every_steps == 0:
                check_finite(epoch)
                do_eval(epoch, epoch_end=False)
        check_finite(epoch)
        entry = do_eval(epoch, epoch_end=True)
        bar.update(1)
        bar.set_postfix(valid_auc=f"{entry['valid']['auc']:.4f}")
        auc = entry["valid"]["auc"]
        if auc > best_auc:
            best_auc, best_epoch, bad_epochs = auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= tcfg.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    t_train = time.perf_counter() - t_start - t_eval
    t0 = time.perf_counter()
    test_metrics = evaluate(model, test, tcfg.eval_batch_size)
    t_eval += time.perf_counter() - t0
    best_valid = next(h["valid"] for h in history if h["epoch"] == best_epoch and h["epoch_end"])
    log.info("best epoch %d valid %s test %s", best_epoch, best_valid, test_metrics)
    record = dict(key)
    record.update(
        {
            "run_id": rid,
            "test": test_metrics,
            "valid": best_valid,
            "valid_history": history,
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "steps": step,
            "wall_seconds": {"train": round(t_train, 3), "eval": round(t_eval, 3)},
            "n_params": n_params,
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
    return record, model
