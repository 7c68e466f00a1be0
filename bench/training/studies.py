"""Studies are lists of runs: build the specs, run what is missing, return the records.

A finished run is loaded from its record, never recomputed unless ``force``; an interrupted study
started again runs only the missing runs (each record is saved as soon as its run ends).
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from bench.training import train as train_mod
from bench.training.config import data_params, resolve_config
from bench.training.runs import (DEFAULT_RESULTS_DIR, LockTimeout, RunStore, StoreError, lock_timeout, run_id, run_key,
                        sealed)
from bench.training.train import RunSpec

log = logging.getLogger(__name__)


def _damaged(path: Path, exc: BaseException) -> None:
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    log.warning("checkpoint %s is damaged (%s); treating it as missing", path, why if len(why) <= 100 else why[:97] + "...")


@dataclass
class Runner:
    """Runs specs against prepared datasets, loading finished runs from ``store``.

    workers: processes that train the missing runs of one ``run_all`` in parallel (this one and
    ``workers - 1`` spawned helpers, sharing the work through the store's lock files); threads:
    torch intra-op threads of each helper (None: torch's default).

    checkpoint_dir: where best-epoch weights are kept (``<run_id>.pt``; default
    ``<data_dir>/checkpoints``), so that figures needing a trained model (the GIM heatmap) can
    reload it instead of retraining.

    lock_timeout: seconds a study waits on a run locked by a process that shows no sign of life
    (the owner refreshes its lock at every evaluation) before it stops with :class:`LockTimeout`
    (default ``$MIAN_LOCK_TIMEOUT`` or 1800); while it waits it logs the lock, its owner and how
    to clear it at once and every ``lock_log_seconds``.
    """

    store: RunStore = field(default_factory=RunStore)
    data_dir: Path | None = None
    raw_dir: Path | None = None
    device: str = "cpu"
    force: bool = False
    progress: bool = True
    log_dir: Path | None = None
    poll_seconds: float = 2.0
    workers: int = 1
    threads: int | None = None
    lock_timeout: float = field(default_factory=lock_timeout)
    lock_log_seconds: float = 300.0
    _datasets: dict[str, Any] = field(default_factory=dict)

    def dataset(self, name: str, params=None):
        """The prepared dataset ``name`` with protocol parameters ``params`` (a
        :class:`bench.data.samples.ProtocolParams`; None = the defaults), loaded once per runner."""
        from bench.data import PARAMS, latest_name, load_prepared

        key = name if params is None or params == PARAMS else f"{name}@{latest_name(params)}"
        if key not in self._datasets:
            self._datasets[key] = load_prepared(name, data_dir=self.data_dir, raw_dir=self.raw_dir, params=params)
        return self._datasets[key]

    def dataset_for(self, spec: RunSpec):
        """The prepared dataset ``spec`` trains on: its dataset with the data-protocol parameters
        of its ``--set`` overrides (``data.max_len``)."""
        return self.dataset(spec.dataset, data_params(spec.overrides))

    @property
    def checkpoint_dir(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir) / "checkpoints"
        from bench.data import default_data_dir

        return default_data_dir() / "checkpoints"

    def resolve(self, spec: RunSpec) -> tuple[str, dict[str, Any]]:
        """(run id, resolved config) of ``spec``."""
        ds = self.dataset_for(spec)
        config = resolve_config(spec.dataset, spec.model, spec.variant_overrides, spec.overrides, skip_foreign=True)
        key = run_key(
            protocol=ds.protocol,
            dataset=ds.name,
            fingerprint=ds.fingerprint,
            model=spec.model,
            variant=spec.variant,
            seed=spec.seed,
            config=config,
        )
        return run_id(key), config

    def run(self, spec: RunSpec, keep_model: bool = False) -> tuple[dict[str, Any], torch.nn.Module | None]:
        """The record of ``spec`` (loaded, or trained and saved) and, if trained now or
        ``keep_model`` and a checkpoint exists, the trained model."""
        rid, config = self.resolve(spec)
        if not self.force:
            record = self.store.load(rid)  # a record failing its check raises RecordError
            if record is not None:
                if self.device == "cpu" and record.get("threads") not in (None, torch.get_num_threads()):
                    log.info("run %s: using its record, made with %s thread(s) (now %d; DIN/DIEN/MIAN metrics can "
                             "differ in the last digits with the thread count; --force to retrain)",
                             rid, record.get("threads"), torch.get_num_threads())
                model = self.load_model(record) if keep_model else None
                return record, model
        record, model = self._train(spec, rid, config)
        record = sealed(record)
        try:
            self.store.save(record)
        except OSError as exc:
            t = record["test"]
            raise StoreError(
                f"could not write the run record {self.store.path(rid)} ({exc.strerror or exc}); the run trained "
                f"(test AUC {t['auc']:.4f}, logloss {t['logloss']:.4f}, gAUC {t['gauc']:.4f}) but is not saved: "
                f"make {self.store.root} writable and run the command again") from None
        return record, model

    def _train(self, spec: RunSpec, rid: str, config: dict[str, Any]) -> tuple[dict[str, Any], torch.nn.Module]:
        """Train ``spec`` and keep its best-epoch weights as ``<rid>.pt`` (the record is not saved)."""
        record, model = train_mod.train_run(self.dataset_for(spec), spec.model, config, spec.seed,
                                            variant=spec.variant, device=self.device, log_dir=self.log_dir,
                                            progress=self.progress, on_eval=lambda _: self.store.refresh(rid))
        self.save_checkpoint(rid, model, record)
        return record, model

    def retrain_model(self, spec: RunSpec, record: dict[str, Any]) -> tuple[torch.nn.Module, list[str]]:
        """Train ``spec`` again to get its model when ``record`` has no checkpoint (e.g. a fresh
        clone). Keeps the committed record as it is (its commit, date and timings) and saves the
        checkpoint with the retrained model's own metrics, so that a later :meth:`checkpoint_differences`
        still tells it apart from the record.

        Returns (model, differences): ``differences`` is :func:`model_differences` of the record
        and the retrain, empty when the retrain is exactly the recorded model (same validation
        history, best epoch, validation and test metrics); another CPU or thread count can give
        another model (float reductions differ in the last bits, and attention models then follow
        another trajectory)."""
        rid, config = self.resolve(spec)
        new, model = self._train(spec, rid, config)
        diffs = model_differences(record, new)
        if diffs:
            log.warning("run %s retrained here differs from its record (%s; record made with %s thread(s) on %s, "
                        "now %s on %s)", rid, "; ".join(diffs), record.get("threads"), record.get("device"),
                        new.get("threads"), new.get("device"))
        return model, diffs

    def save_checkpoint(self, rid: str, model: torch.nn.Module, record: dict[str, Any] | None = None) -> None:
        """Write ``<checkpoint_dir>/<rid>.pt`` atomically: the model's state dict and the
        :data:`MODEL_IDENTITY` fields of the training's ``record`` (what the weights scored)."""
        from bench.io import atomic_write_bytes
        import io

        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(),
                    "trained": _identity(record) if record is not None else None}, buf)
        atomic_write_bytes(self.checkpoint_dir / f"{rid}.pt", buf.getvalue())

    def _load_checkpoint(self, rid: str) -> dict[str, Any] | None:
        path = self.checkpoint_dir / f"{rid}.pt"
        if not path.exists():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            _damaged(path, exc)
            return None
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            return obj
        return {"format": None, "state_dict": obj, "trained": None}  # older checkpoints: the bare state dict

    def load_model(self, record: dict[str, Any]) -> torch.nn.Module | None:
        """The trained model of ``record`` from its checkpoint, or None when there is none or it
        is damaged (truncated, not a state dict of this model: logged, naming the file)."""
        from bench.training.registry import build_model

        ckpt = self._load_checkpoint(record["run_id"])
        if ckpt is None:
            return None
        from bench.data.samples import ProtocolParams

        ds = self.dataset(record["dataset"], ProtocolParams(**record.get("data_params", {})))
        model = build_model(record["model"], ds.schema, record["config"]["model"], item_table=ds.item_table)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, KeyError, ValueError) as exc:
            _damaged(self.checkpoint_dir / f"{record['run_id']}.pt", exc)
            return None
        return model.to(self.device).eval()

    def checkpoint_differences(self, record: dict[str, Any]) -> list[str] | None:
        """How the model in ``record``'s checkpoint differs from the record (:func:`model_differences`;
        empty when it is the recorded model), or None when there is no checkpoint. A checkpoint
        written before checkpoints carried their metrics is taken to be the recorded model."""
        ckpt = self._load_checkpoint(record["run_id"])
        if ckpt is None:
            return None
        if ckpt["trained"] is None:
            return []
        return model_differences(record, ckpt["trained"])

    def run_all(self, specs: Sequence[RunSpec], desc: str = "runs") -> list[dict[str, Any]]:
        """Records of all ``specs`` in order, running only the missing ones.

        Several processes may work on the same study at once (e.g. one per core with
        ``--threads 1``): each run is claimed with a lock file before it is trained, a run claimed
        by another worker is skipped and its record picked up when that worker saves it.
        """
        return self._run_all(specs, desc, since=time.time() if self.force else None)

    def _run_all(self, specs: Sequence[RunSpec], desc: str, since: float | None) -> list[dict[str, Any]]:
        """``run_all``; with ``since`` (``force``), a record counts as done only when it was written
        after that time (by this study's workers), so forced runs are still trained once."""
        rids = [self.resolve(spec)[0] for spec in specs]
        records: list[dict[str, Any] | None] = [self._done(r, since) for r in rids]
        pending = [i for i, rec in enumerate(records) if rec is None]
        log.info("%s: %d runs: %d done, %d to run", desc, len(specs), len(specs) - len(pending), len(pending))
        helpers = self._start_helpers(specs, since, min(self.workers, len(pending)) - 1)
        bar = tqdm(total=len(pending), desc=desc, unit="run", disable=not self.progress or None)
        try:
            self._work(specs, rids, records, pending, bar, since)
        finally:
            bar.close()
            for proc in helpers:  # they stop by themselves once every record exists
                proc.join(self.poll_seconds + 30 if not pending else 5)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
        failed = [p.exitcode for p in helpers if p.exitcode != 0]
        if failed:
            log.warning("%s: %d helper worker(s) ended with exit codes %s; their runs were finished here",
                        desc, len(failed), failed)
        return records  # type: ignore[return-value]

    def _done(self, rid: str, since: float | None) -> dict[str, Any] | None:
        rec = self.store.load(rid, refuse=since is None)  # --force retrains a record failing its check
        if rec is not None and since is not None:
            try:
                if self.store.path(rid).stat().st_mtime < since:
                    return None
            except FileNotFoundError:
                return None
        return rec

    def _start_helpers(self, specs: Sequence[RunSpec], since: float | None, n: int) -> list:
        if n <= 0:
            return []
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        helper = dataclasses.replace(self, progress=False, workers=1, force=since is not None, _datasets={})
        procs = []
        for k in range(n):
            proc = ctx.Process(target=_helper_main, args=(helper, list(specs), since, logging.getLogger().level),
                               name=f"mian-worker-{k + 1}", daemon=True)
            proc.start()
            procs.append(proc)
        log.info("started %d helper worker process(es) (%s threads each)", n, self.threads or "default")
        return procs

    def _work(self, specs, rids, records, pending, bar, since) -> None:
        next_log = 0.0  # when to log the locks waited on next
        while pending:
            progressed = False
            for i in list(pending):
                spec, rid = specs[i], rids[i]
                rec = self._done(rid, since)
                if rec is None:
                    if not self.store.claim(rid):
                        continue  # claimed by another worker
                    rec = self._done(rid, since)  # saved by a worker between the check and the claim
                    if rec is not None:
                        self.store.release(rid)
                if rec is not None:  # finished meanwhile by another worker
                    records[i] = rec
                    pending.remove(i)
                    bar.update(1)
                    progressed = True
                    continue
                try:
                    bar.set_postfix_str(f"{spec.dataset}/{spec.model}/{spec.variant}/seed{spec.seed}")
                    records[i], _ = self.run(spec)
                finally:
                    self.store.release(rid)
                pending.remove(i)
                bar.update(1)
                progressed = True
                t = records[i]["test"]
                log.info(
                    "%s %s %s seed %d: test AUC %.4f logloss %.4f gAUC %.4f (%.0f s)",
                    spec.dataset, spec.model, spec.variant, spec.seed, t["auc"], t["logloss"], t["gauc"],
                    sum(records[i]["wall_seconds"].values()),
                )
            if progressed:
                next_log = 0.0
            elif pending:
                self._wait_on_locks([rids[i] for i in pending], next_log)
                if time.monotonic() >= next_log:
                    next_log = time.monotonic() + self.lock_log_seconds
                time.sleep(self.poll_seconds)

    def _wait_on_locks(self, rids: list[str], next_log: float) -> None:
        """Log the locks of ``rids`` (every one is held by another process) when ``next_log`` is
        due; raise :class:`LockTimeout` for one whose owner gave no sign of life for
        ``lock_timeout`` seconds."""
        for rid in rids:
            silent = self.store.lock_silence(rid)
            if silent is not None and silent > self.lock_timeout:
                path = self.store.lock_path(rid)
                raise LockTimeout(
                    f"run {rid} is locked by {self.store.describe_lock(rid)} ({path}), which has not refreshed it for "
                    f"{silent:.0f} s (MIAN_LOCK_TIMEOUT = {self.lock_timeout:.0f} s); if no study is running there, "
                    f"delete the lock (rm {path}) and run the command again")
        if time.monotonic() < next_log:
            return
        for rid in rids[:3]:
            silent = self.store.lock_silence(rid)
            if silent is None:
                continue
            path = self.store.lock_path(rid)
            log.info("waiting for run %s: its lock %s is held by %s (refreshed %.0f s ago; giving up after %.0f s "
                     "without a refresh, MIAN_LOCK_TIMEOUT); if no study is running there, delete the lock (rm %s)",
                     rid, path, self.store.describe_lock(rid), silent, self.lock_timeout, path)
        if len(rids) > 3:
            log.info("... and %d more run(s) locked by other workers", len(rids) - 3)


#: format tag of the checkpoints written by :meth:`Runner.save_checkpoint`
CHECKPOINT_FORMAT = "mian-checkpoint-v1"
#: the fields of a run record that identify the trained model (what its weights scored)
MODEL_IDENTITY = ("best_epoch", "epochs_run", "steps", "valid_history", "valid", "test")


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """The :data:`MODEL_IDENTITY` fields of ``record`` as plain JSON values."""
    import json

    return json.loads(json.dumps({k: record.get(k) for k in MODEL_IDENTITY}))


def _same(x: Any, y: Any) -> bool:
    """Exact equality of JSON values (NaN equals NaN; floats compared bit for bit via repr)."""
    import json

    return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)


_METRIC_NAMES = {"auc": "AUC", "logloss": "logloss", "gauc": "gAUC"}


def _pair(a: float, b: float) -> str:
    """``a vs b`` with just enough digits (4 at least) that the two differ."""
    for digits in range(4, 18):
        sa, sb = f"{a:.{digits}f}", f"{b:.{digits}f}"
        if sa != sb:
            return f"{sa} vs {sb}"
    return f"{a!r} vs {b!r}"


def model_differences(record: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What differs between the trained models of two run records of the same run (``other``
    against ``record``), compared exactly: best epoch, epochs run, steps, validation and test
    metrics of the best epoch, the validation history. Empty when they are the same model.

    Example item: ``"test AUC 0.7125 vs 0.7107"`` (``other``'s value first)."""
    a, b = _identity(record), _identity(other)
    out = []
    for split in ("test", "valid"):
        for m in ("auc", "logloss", "gauc"):
            x, y = (a.get(split) or {}).get(m), (b.get(split) or {}).get(m)
            if not _same(x, y):
                name = f"{'test' if split == 'test' else 'best-epoch validation'} {_METRIC_NAMES[m]}"
                out.append(f"{name} {_pair(y, x)}" if isinstance(x, float) and isinstance(y, float) else f"{name} {y} vs {x}")
    for key, name in (("best_epoch", "best epoch"), ("epochs_run", "epochs run"), ("steps", "steps")):
        if not _same(a.get(key), b.get(key)):
            out.append(f"{name} {b.get(key)} vs {a.get(key)}")
    if not _same(a.get("valid_history"), b.get("valid_history")):
        ha, hb = a.get("valid_history") or [], b.get("valid_history") or []
        first = next((i for i, (x, y) in enumerate(zip(ha, hb)) if not _same(x, y)), min(len(ha), len(hb)))
        out.append(f"validation history from evaluation {first + 1} on ({len(hb)} vs {len(ha)} evaluations)")
    return out


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """End this helper process as soon as the process that spawned it is gone (killed with SIGKILL
    or SIGTERM, whose default action skips multiprocessing's clean-up of daemon children): an
    orphan would go on training the study's runs after the study was stopped. Its lock is then
    one of a dead process, which the next study takes over."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _helper_main(runner: Runner, specs: list[RunSpec], since: float | None, level: int) -> None:
    """Entry point of a spawned helper worker of :meth:`Runner.run_all`: ``runner`` is a copy of
    the main process's (no progress bar, one worker)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(processName)s: %(message)s", datefmt="%H:%M:%S")
    _exit_with_parent()
    if runner.threads:
        torch.set_num_threads(runner.threads)
    try:
        runner._run_all(specs, "helper", since)
    except StoreError as exc:  # the main process meets (and reports) the same record or lock
        logging.getLogger(__name__).error("%s", exc)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the main process reports it
        raise SystemExit(130) from None


def main_specs(dataset: str, models: Sequence[str], seeds: Sequence[int], overrides: dict[str, Any] | None = None) -> list[RunSpec]:
    """Table 2: every model x every seed on one dataset (seed-major so that an early stop still
    leaves complete seeds)."""
    return [RunSpec(dataset, m, s, overrides=dict(overrides or {})) for s in seeds for m in models]


def results_dir_for(dataset: str, root: Path | None = None) -> Path:
    return (root or DEFAULT_RESULTS_DIR) / dataset


# --------------------------------------------------------------------------- the paper's studies

# Table 3 (MIAN.md 6.3): variant name -> (label, MIAN config overrides)
ABLATION_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("MIAN", {}),
    "no_iuim": ("w/o IUIM", {"use_iuim": False}),
    "no_icim": ("w/o ICIM", {"use_icim": False}),
    "no_ibim": ("w/o IBIM", {"use_ibim": False}),
    "no_gim": ("w/o GIM", {"use_gim": False}),
    "no_iuim_icim": ("w/o IUIM&ICIM", {"use_iuim": False, "use_icim": False}),
}

# Table 4 (MIAN.md 6.4) plus the shared-score reading of Eq. (8) (MIAN.md 7.2)
TRANSFORMER_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("MIAN (Pre-LN Transformer)", {}),
    "post_ln": ("w/ original (Post-LN) Transformer", {"transformer": "post_ln"}),
    "no_transformer": ("w/o Transformer (attention on raw behaviours)", {"transformer": "none"}),
    "shared_score": ("Pre-LN, shared IBIM score (Eq. 8 W shared over slots)", {"ibim_score": "shared"}),
}

# Figure 5 compares these three
CONVERGENCE_VARIANTS = ("default", "post_ln", "no_transformer")


def variant_specs(
    dataset: str,
    variants: dict[str, tuple[str, dict[str, Any]]],
    seeds: Sequence[int],
    overrides: dict[str, Any] | None = None,
    model: str = "mian",
) -> list[RunSpec]:
    """MIAN variants x seeds (seed-major). The "default" variant is the main table's MIAN run."""
    return [
        RunSpec(dataset, model, s, variant=v, variant_overrides=dict(o), overrides=dict(overrides or {}))
        for s in seeds
        for v, (_, o) in variants.items()
    ]


def protocol_records(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The records made with the protocol's own config: for each record, its config must equal
    the dataset config resolved for its model and study variant with no ``--set`` overrides, it
    must be made with the default data-protocol parameters (``data_params``, absent in older
    records), and its dataset fingerprint must be the one most records of that dataset share. Returns the kept
    records and one note per kind of record left out (for the report)."""
    from collections import Counter

    import dataclasses

    from bench.data.samples import ProtocolParams

    variants = {**ABLATION_VARIANTS, **TRANSFORMER_VARIANTS}
    default_data = dataclasses.asdict(ProtocolParams())
    kept, dropped = [], Counter()
    cache: dict[tuple[str, str, str], Any] = {}
    for r in records:
        if r["model"] == "mian" and r["variant"] not in variants or r["model"] != "mian" and r["variant"] != "default":
            dropped["unknown study variant"] += 1
            continue
        key = (r["dataset"], r["model"], r["variant"])
        if key not in cache:
            try:
                overrides = variants[r["variant"]][1] if r["model"] == "mian" else {}
                cache[key] = resolve_config(r["dataset"], r["model"], overrides, {})
            except Exception:  # noqa: BLE001 - a model or dataset this version no longer knows
                cache[key] = None
        if cache[key] != r["config"]:
            dropped["made with --set overrides or an older config"] += 1
            continue
        if r.get("data_params", default_data) != default_data:
            dropped["made with other data-protocol parameters (--set data.max_len)"] += 1
            continue
        kept.append(r)
    by_ds = Counter((r["dataset"], r["fingerprint"]) for r in kept)
    main_fp = {}
    for (ds, fp), n in sorted(by_ds.items(), key=lambda kv: -kv[1]):
        main_fp.setdefault(ds, fp)
    out = [r for r in kept if r["fingerprint"] == main_fp[r["dataset"]]]
    if len(out) < len(kept):
        dropped["made on another version of the prepared data (fingerprint)"] += len(kept) - len(out)
    notes = [f"{n} run record(s) left out: {why}." for why, n in dropped.items()]
    return out, notes
