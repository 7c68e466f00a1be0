"""Studies are lists of runs: build the specs, run what is missing, return the records.

A finished run is loaded from its record, never recomputed unless ``force``. The missing runs train
on the executor of :mod:`bench.training.executor` (this process, local worker processes or a Ray cluster),
and this process writes each record as soon as its run ends, so an interrupted study started again
runs only the missing runs.

Every run trained here has its test scores (the selected model's test logits) written to
``results/scores/<run_id>.npy`` before its record; a loaded record whose scores file is missing or
fails its check gets them from its checkpoint (else a retrain), only when they reproduce the
record's test metrics (:meth:`Runner.backfill_scores`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.training import train as train_mod
from bench.training.config import data_params, resolve_config
from bench.training.executor import ExecutorError, first_line, make_executor
from bench.training.runs import (DEFAULT_RESULTS_DIR, RESULTS_VERSION, RunStore, StoreError, run_id, run_key, scores_problems,
                                 sealed)
from bench.training.train import RunSpec

log = logging.getLogger(__name__)


def _damaged(path: Path, exc: BaseException) -> None:
    why = first_line(exc)
    log.warning("checkpoint %s is damaged (%s); treating it as missing", path, why if len(why) <= 100 else why[:97] + "...")


@dataclass
class Runner:
    """Runs specs against prepared datasets, loading finished runs from ``store``.

    workers: local processes that train the missing runs of one ``run_all`` at once (1: this
    process alone); cluster: the address of a Ray cluster (or ``auto``) to train them on instead;
    threads: torch intra-op threads of each worker (None: torch's default). See :mod:`bench.training.executor`.

    checkpoint_dir: where best-epoch weights are kept (``<run_id>.pt``; default
    ``<data_dir>/checkpoints``), so that figures needing a trained model (the GIM heatmap) can
    reload it instead of retraining.

    backfill: :meth:`run_all` also retrains the runs whose record lacks a field of
    :data:`BACKFILL_FIELDS` and adds the fields to the record when the retrain is exactly the
    recorded model (:meth:`_backfilled`); the record is otherwise kept as it is.
    """

    store: RunStore = field(default_factory=RunStore)
    data_dir: Path | None = None
    raw_dir: Path | None = None
    device: str = "cpu"
    force: bool = False
    progress: bool = True
    log_dir: Path | None = None
    workers: int = 1
    threads: int | None = None
    cluster: str | None = None
    backfill: bool = False
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
        config = resolve_config(spec.dataset, spec.model, spec.variant_overrides, spec.overrides, skip_foreign=True,
                                curves=draws_curves(spec.model, spec.variant))
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
                self.backfill_scores([spec], [record])
                model = self.load_model(record) if keep_model else None
                return record, model
        record, model, logits = self._train(spec, rid, config)
        self._save_scores(spec, record, logits)
        return self._save(record), model

    def _save(self, record: dict[str, Any]) -> dict[str, Any]:
        """Seal and save ``record``; the sealed record. An unwritable store raises StoreError
        naming the file and the run's test metrics."""
        record = sealed(record)
        try:
            self.store.save(record)
        except OSError as exc:
            t = record["test"]
            raise StoreError(
                f"could not write the run record {self.store.path(record['run_id'])} ({exc.strerror or exc}); the run "
                f"trained (test AUC {t['auc']:.4f}, logloss {t['logloss']:.4f}, gAUC {t['gauc']:.4f}) but is not "
                f"saved: make {self.store.root} writable and run the command again") from None
        return record

    def _train_model(self, spec: RunSpec, config: dict[str, Any]
                     ) -> tuple[dict[str, Any], torch.nn.Module, np.ndarray | None]:
        """Train ``spec`` with its resolved ``config`` here: (record, not saved; best-epoch model;
        its test logits [N] float32, None when the training gave none)."""
        kept: list[np.ndarray] = []
        record, model = train_mod.train_run(self.dataset_for(spec), spec.model, config, spec.seed, variant=spec.variant,
                                            device=self.device, log_dir=self.log_dir, progress=self.progress,
                                            on_test_scores=kept.append)
        return record, model, (np.asarray(kept[-1], dtype=np.float32) if kept else None)

    def _train(self, spec: RunSpec, rid: str, config: dict[str, Any]
               ) -> tuple[dict[str, Any], torch.nn.Module, np.ndarray | None]:
        """Train ``spec`` here and keep its best-epoch weights as ``<rid>.pt`` (the record is not
        saved): (record, model, test logits)."""
        record, model, logits = self._train_model(spec, config)
        self.save_checkpoint(rid, model, record)
        return record, model, logits

    def _save_scores(self, spec: RunSpec, record: dict[str, Any], logits: np.ndarray | None) -> None:
        """Write the test logits of ``record``'s run under the store's ``scores/`` (and the test
        split's labels and users when that file is missing or damaged,
        :meth:`RunStore.save_test_keys`), called before the record is saved. With ``logits`` None
        (a training whose adapter gives no test logits: none of this harness's models) nothing is
        written, a warning says so, and the record is saved without scores (a later study command
        gives them from its checkpoint: :meth:`backfill_scores`). Raises StoreError when they cannot
        be written."""
        rid = record["run_id"]
        if logits is None:
            log.warning("run %s: the training gave no test scores; the record is saved without them", rid)
            return
        self._save_test_keys(self.dataset_for(spec))
        try:
            self.store.save_scores(rid, logits)
        except OSError as exc:
            raise self._unwritable(self.store.scores_path(rid), exc) from None

    def _save_test_keys(self, ds: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels [N], users [N]) of the test split of the prepared ``ds``, after making its keys
        file hold them (:meth:`RunStore.save_test_keys`); StoreError when it cannot be written."""
        labels, users = ds.test.label.cpu().numpy(), ds.test.user_index.cpu().numpy()
        try:
            self.store.save_test_keys(ds.name, ds.fingerprint, labels, users)
        except OSError as exc:
            raise self._unwritable(self.store.test_keys_path(ds.name, ds.fingerprint), exc) from None
        return labels, users

    def _unwritable(self, path: Path, exc: OSError) -> StoreError:
        return StoreError(f"could not write the test scores {path} ({exc.strerror or exc}); make "
                          f"{self.store.scores_dir} writable and run the command again")

    def backfill_scores(self, specs: Sequence[RunSpec], records: Sequence[dict[str, Any] | None]) -> dict[str, int]:
        """Make the kept test scores of the prepared data of ``specs`` usable. First the test-split
        keys file of each prepared dataset of ``specs`` is written when it is missing, unreadable
        or not that data's test split (:meth:`RunStore.save_test_keys`). Then each loaded
        ``records[i]`` (the run of ``specs[i]``; None: skipped) whose scores file is missing or
        fails its check against the prepared test split (:meth:`RunStore.checked_scores`:
        unreadable, truncated, non-finite, other metrics; a damaged file is logged) gets its test
        scores: the model of its checkpoint (:meth:`load_model`), else a retrain
        (:meth:`retrain_model`), scores the test split through :func:`bench.training.train.score_split`
        (training's own test scoring) and the scores are written (replacing the damaged file) only
        when their AUC, logloss and gAUC equal the record's test metrics
        (:func:`bench.training.runs.scores_problems`); otherwise a warning names the run and what
        differs, and nothing is written. A file that passes its check is never replaced. Returns the
        counts {"checkpoint", "retrain", "mismatch", "replaced"} ("replaced": the written ones that
        replaced a damaged file; logged when any). Raises StoreError when a file cannot be written."""
        counts = {"checkpoint": 0, "retrain": 0, "mismatch": 0, "replaced": 0}
        keys: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for spec in specs:
            ds = self.dataset_for(spec)
            if (ds.name, ds.fingerprint) not in keys:
                keys[(ds.name, ds.fingerprint)] = self._save_test_keys(ds)
        seen = set()
        for spec, record in zip(specs, records):
            if record is None or record["run_id"] in seen:
                continue
            rid = record["run_id"]
            seen.add(rid)
            ds = self.dataset_for(spec)
            labels, users = keys[(ds.name, ds.fingerprint)]
            _, why = self.store.checked_scores(record, (labels, users))
            if why is None:
                continue
            damaged = self.store.scores_path(rid).exists()
            if damaged:
                log.warning("%s; replacing it with the test scores of the run's model", why)
            source, model = "checkpoint", self.load_model(record)
            if model is None:
                log.info("run %s has no checkpoint: retraining it for its test scores (the record is kept)", rid)
                source, (model, _) = "retrain", self.retrain_model(spec, record)
            _, logits = train_mod.score_split(model, ds.test.to(self.device), record["config"]["train"]["eval_batch_size"])
            logits = logits.astype(np.float32)  # what the file keeps (the models' logits are float32)
            problems = scores_problems(record, logits, labels, users)
            if problems:
                counts["mismatch"] += 1
                log.warning("run %s: the test scores of its %s do not reproduce its record (%s); no scores file "
                            "written%s (the record has no test-sample significance until they do)", rid, source,
                            "; ".join(problems), ", the damaged one left as it is" if damaged else "")
                continue
            try:
                self.store.save_scores(rid, logits)
            except OSError as exc:
                raise self._unwritable(self.store.scores_path(rid), exc) from None
            counts[source] += 1
            counts["replaced"] += damaged
        if any(counts.values()):
            log.info("test scores written for %d run record(s): %d from checkpoints, %d from retrains; %d not written "
                     "(scores differ from the record); %d replaced a damaged file", counts["checkpoint"] + counts["retrain"],
                     counts["checkpoint"], counts["retrain"], counts["mismatch"], counts["replaced"])
        return counts

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
        new, model, _ = self._train(spec, rid, config)
        diffs = model_differences(record, new)
        if diffs:
            log.warning("run %s retrained here differs from its record (%s; record made with %s thread(s) on %s, "
                        "now %s on %s)", rid, "; ".join(diffs), record.get("threads"), record.get("device"),
                        new.get("threads"), new.get("device"))
        return model, diffs

    def save_checkpoint(self, rid: str, model: torch.nn.Module, record: dict[str, Any] | None = None) -> None:
        """Write ``<checkpoint_dir>/<rid>.pt`` atomically: the model's state dict and the
        :data:`MODEL_IDENTITY` fields of the training's ``record`` (what the weights scored)."""
        self._write_checkpoint(rid, checkpoint_bytes(model, record))

    def _write_checkpoint(self, rid: str, data: bytes) -> None:
        from bench.io import atomic_write_bytes

        atomic_write_bytes(self.checkpoint_dir / f"{rid}.pt", data)

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

    def checkpoint_differences(self, record: dict[str, Any], model: torch.nn.Module | None = None) -> list[str] | None:
        """How the model in ``record``'s checkpoint differs from the record (:func:`model_differences`;
        empty when it is the recorded model), or None when there is no checkpoint. A checkpoint
        written before checkpoints carried their metrics (a bare state dict) is scored on the
        validation split again and compared exactly with the record's best-epoch validation
        metrics: checkpoints are kept per run id, so a retrain of the same run into another
        results folder (another model on another machine) may have replaced the recorded one.
        ``model``: the checkpoint's model when the caller has loaded it already (not built again)."""
        ckpt = self._load_checkpoint(record["run_id"])
        if ckpt is None:
            return None
        if ckpt["trained"] is not None:
            return model_differences(record, ckpt["trained"])
        model = model if model is not None else self.load_model(record)
        if model is None:
            return None
        from bench.data.samples import ProtocolParams

        ds = self.dataset(record["dataset"], ProtocolParams(**record.get("data_params", {})))
        scored = train_mod.evaluate(model, ds.valid.to(self.device), record["config"]["train"]["eval_batch_size"])
        return [f"best-epoch validation {_METRIC_NAMES[m]} {_pair(scored[m], record['valid'][m])} (a checkpoint "
                "without stored metrics, scored again)" for m in ("auc", "logloss", "gauc")
                if not _same(scored[m], record["valid"][m])]

    def run_all(self, specs: Sequence[RunSpec], desc: str = "runs") -> list[dict[str, Any]]:
        """Records of all ``specs`` in order, training only the runs without a record (with
        ``force``: every run).

        This process alone decides what trains: it resolves every spec, loads the records that
        exist, submits each missing run once (however often its spec appears) to the executor of
        ``workers`` / ``cluster`` (:mod:`bench.training.executor`) and writes the run's checkpoint and record
        as soon as the run returns. Ctrl-C, SIGTERM or an error stops the workers and keeps every
        record written; the same command run again trains only what has no record.

        Raises RecordError for an existing record failing its check (before anything trains), a
        worker's own error (TrainingError, DataError, ...), StoreError when a record cannot be
        written, ExecutorError when a worker dies, Ray is missing or out of reach, or a worker's
        prepared data is not this process's.
        """
        resolved = [self.resolve(spec) for spec in specs]
        records: list[dict[str, Any] | None] = [self._existing(rid) for rid, _ in resolved]
        todo: dict[str, list[int]] = {}  # run id -> indices of the specs it answers
        for i, ((rid, _), rec) in enumerate(zip(resolved, records)):
            if rec is None:
                todo.setdefault(rid, []).append(i)
        pending = sum(len(ix) for ix in todo.values())
        log.info("%s: %d runs: %d done, %d to run", desc, len(specs), len(specs) - pending, pending)
        self.backfill_scores(specs, records)
        older: dict[str, dict[str, Any]] = {}  # run id -> its record, retrained for BACKFILL_FIELDS
        if self.backfill:
            for i, ((rid, _), rec) in enumerate(zip(resolved, records)):
                if rec is not None and any(k not in rec for k in BACKFILL_FIELDS):
                    older[rid] = rec
                    todo.setdefault(rid, []).append(i)
            if older:
                log.info("%s: %d record(s) predate %s: retraining them to add it (--backfill)", desc, len(older),
                         ", ".join(BACKFILL_FIELDS))
        if not todo:
            return records  # type: ignore[return-value]
        jobs = [Job(specs[ix[0]], rid, resolved[ix[0]][1]) for rid, ix in todo.items()]
        bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not self.progress or None)
        t0 = time.perf_counter()
        try:
            with make_executor(min(self.workers, len(jobs)), self.threads, self.cluster) as ex:
                fn = self._trained_run if ex.in_process else functools.partial(_train_in_worker, self._worker_copy())
                for k, trained in ex.completed(fn, jobs):
                    job = jobs[k]
                    record = (self._backfilled(job, trained, older[job.run_id]) if job.run_id in older
                              else self._keep(job, trained))
                    for i in todo[job.run_id]:
                        records[i] = record
                    bar.update(1)
                    spec, t = job.spec, record["test"]
                    log.info("%s %s %s seed %d: test AUC %.4f logloss %.4f gAUC %.4f (%.0f s)", spec.dataset,
                             spec.model, spec.variant, spec.seed, t["auc"], t["logloss"], t["gauc"],
                             sum(record["wall_seconds"].values()))
        finally:
            bar.close()
        log.info("%s: %d runs trained in %.1f min wall (%d worker(s))", desc, len(jobs),
                 (time.perf_counter() - t0) / 60, min(self.workers, len(jobs)))
        return records  # type: ignore[return-value]

    def _existing(self, rid: str) -> dict[str, Any] | None:
        """The record of ``rid`` to reuse: None when there is none or with ``force`` (which only
        logs a record failing its check; without ``force`` such a record raises RecordError)."""
        rec = self.store.load(rid, refuse=not self.force)
        return None if self.force else rec

    def _trained_run(self, job: "Job") -> "TrainedRun":
        """Train ``job`` here (in this process or a worker's): its record (not saved) and checkpoint
        bytes; for a job with ``score_test`` False (a tuning trial) the record alone, the test split
        never scored (:func:`bench.training.train.train_run`)."""
        if not job.score_test:
            record, _ = train_mod.train_run(self.dataset_for(job.spec), job.spec.model, job.config, job.spec.seed,
                                            variant=job.spec.variant, device=self.device, log_dir=self.log_dir,
                                            progress=self.progress, score_test=False)
            return TrainedRun(record, None, None)
        record, model, logits = self._train_model(job.spec, job.config)
        return TrainedRun(record, checkpoint_bytes(model, record), logits)

    def _worker_copy(self) -> "Runner":
        """What a worker process gets of this runner: no datasets (it loads its own), no progress bar."""
        return dataclasses.replace(self, progress=False, workers=1, cluster=None, _datasets={})

    def _keep(self, job: "Job", trained: "TrainedRun") -> dict[str, Any]:
        """Write the checkpoint, the test scores and the record of a run a worker trained (in that
        order); the sealed record."""
        rid = trained.record.get("run_id")
        if rid != job.run_id:
            raise ExecutorError(
                f"run {job.run_id} ({job.spec.dataset} {job.spec.model} {job.spec.variant} seed {job.spec.seed}) "
                f"trained as run {rid} on {trained.record.get('machine', {}).get('cpu', 'a worker')}: the worker's "
                "prepared data is not this one's (its fingerprint differs); give every worker the same --data-dir")
        if trained.checkpoint is not None:
            self._write_checkpoint(rid, trained.checkpoint)
        self._save_scores(job.spec, trained.record, trained.scores)
        return self._save(trained.record)


    def _backfilled(self, job: "Job", trained: "TrainedRun", record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with the :data:`BACKFILL_FIELDS` of ``trained`` (a retrain of its run) when the
        retrain is exactly the recorded model (:func:`model_differences` empty: same validation
        history, best epoch, validation and test metrics), saved and sealed again, with
        ``backfilled`` saying which fields, when and by which commit; its checkpoint and scores are
        written when missing. Otherwise the record is kept unchanged and a warning says what
        differs (another CPU or thread count can give another model)."""
        diffs = model_differences(record, trained.record)
        if diffs:
            log.warning("run %s: the retrain is not the recorded model (%s); its record is kept without %s",
                        job.run_id, "; ".join(diffs), ", ".join(BACKFILL_FIELDS))
            return record
        if trained.checkpoint is not None and not (self.checkpoint_dir / f"{job.run_id}.pt").exists():
            self._write_checkpoint(job.run_id, trained.checkpoint)
        if not self.store.has_scores(record):
            self._save_scores(job.spec, record, trained.scores)
        added = [k for k in BACKFILL_FIELDS if k not in record]
        new = {k: v for k, v in record.items() if k != "checksum"}
        new.update({k: trained.record[k] for k in added})
        new["backfilled"] = {"fields": added, "git_commit": trained.record.get("git_commit"),
                             "created_at": trained.record.get("created_at"),
                             "machine": trained.record.get("machine")}
        return self._save(new)


#: record fields a retrain can add to an older record of the same model (``--backfill``)
BACKFILL_FIELDS = ("test_by_logloss", "valid_by_logloss")


@dataclass(frozen=True)
class Job:
    """One run for a worker: its spec, run id and resolved config (from :meth:`Runner.resolve`), and
    whether it scores the test split."""

    spec: RunSpec
    run_id: str
    config: dict[str, Any]
    #: False for a tuning trial: trained and validated, the test split never scored
    score_test: bool = True


@dataclass(frozen=True)
class TrainedRun:
    """What a worker returns: the run record (not yet saved), the checkpoint file's bytes and the
    selected model's test logits [N] (float32; None when the training gave none)."""

    record: dict[str, Any]
    checkpoint: bytes | None
    scores: np.ndarray | None = None


#: per worker process: the runner copies it trained with (their datasets stay loaded between runs)
_WORKER_RUNNERS: dict[tuple, "Runner"] = {}


def _train_in_worker(template: Runner, job: Job) -> TrainedRun:
    """Entry point of a run in a worker process (local pool or Ray task): train ``job`` with a copy
    of the parent's runner, kept for the next runs of this process. On a node where the parent's
    log folder cannot be made, the run logs nowhere rather than fail."""
    key = (str(template.data_dir), str(template.raw_dir), template.device, str(template.log_dir))
    runner = _WORKER_RUNNERS.get(key)
    if runner is None:
        runner = _WORKER_RUNNERS[key] = template
        if runner.log_dir is not None:
            try:
                Path(runner.log_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("no run logs on this worker: cannot create %s (%s)", runner.log_dir, exc)
                runner.log_dir = None
    return runner._trained_run(job)


#: format tag of the checkpoints written by :meth:`Runner.save_checkpoint`
CHECKPOINT_FORMAT = "mian-checkpoint-v1"
#: the fields of a run record that identify the trained model (what its weights scored)
MODEL_IDENTITY = ("best_epoch", "epochs_run", "steps", "valid_history", "valid", "test")


def checkpoint_bytes(model: torch.nn.Module, record: dict[str, Any] | None = None) -> bytes:
    """The checkpoint file of ``model`` (``torch.save`` of its state dict, :data:`CHECKPOINT_FORMAT`
    and the :data:`MODEL_IDENTITY` fields of the training's ``record``)."""
    import io

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": model.state_dict(),
                "trained": _identity(record) if record is not None else None}, buf)
    return buf.getvalue()


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

# The readings of MIAN's unspecified details (MIAN.md 7.2, 7.4, 7.6; docs/MIAN.md "Readings"): each
# row changes one reading of the default. "shared_score" is the Transformer study's run (same name,
# same overrides: one run id).
READINGS_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("MIAN (GIM sum R_g, per-slot IBIM score, ReLU MLP)", {}),
    "gim_concat": ("GIM weighted concatenation [a_l r_l] (7.4b)", {"gim_mode": "concat"}),
    "gim_sum_concat": ("MLP on [R_g; r_g] (7.6)", {"gim_mode": "sum_concat"}),
    "gim_uniform": ("GIM weights fixed at 1/7 (control)", {"gim_mode": "uniform"}),
    "shared_score": ("IBIM score W shared over slots (7.2)", TRANSFORMER_VARIANTS["shared_score"][1]),
    "bilinear_score": ("IBIM score per slot + e_i^T M h_t", {"ibim_score": "bilinear"}),
    "mlp_prelu": ("MLP activation PReLU (7.6)", {"mlp_activation": "prelu"}),
    "mlp_dice": ("MLP activation Dice (7.6)", {"mlp_activation": "dice"}),
}

#: every study's MIAN variants: name -> (label, overrides); a name in two studies is one run
#: (the same overrides: tests/test_readings.py checks it), shown with each study's label
STUDY_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {**READINGS_VARIANTS, **TRANSFORMER_VARIANTS,
                                                         **ABLATION_VARIANTS}

# Figure 5 compares these three
CONVERGENCE_VARIANTS = ("default", "post_ln", "no_transformer")

#: joins a reading and a study variant in the name of a run of that variant on top of the reading
READING_SEP = "+"
#: the Transformer study's variants that are Table 4 rows (shared_score is a reading of Eq. 8 itself)
TABLE4_VARIANTS = ("default", "post_ln", "no_transformer")
#: a study switch that makes a reading's key irrelevant: with it the composed run is the plain variant's
_MOOT = {"gim_mode": ("use_gim", False), "ibim_score": ("use_ibim", False)}


def on_reading(reading: str, variants: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The study ``variants`` (ABLATION_VARIANTS or the Table 4 rows of TRANSFORMER_VARIANTS) on top of
    the reading ``reading`` (a :data:`READINGS_VARIANTS` name): ``default`` becomes the reading's own run
    (named ``reading``), each other variant ``<reading>+<variant>`` with the reading's overrides and
    then the variant's. A variant that makes the reading moot (``no_gim`` for a GIM reading,
    ``no_ibim`` for an IBIM-score reading) is the plain variant's run (same name, same config), so
    it is never trained twice. Raises KeyError naming the reading when it is unknown."""
    if reading not in READINGS_VARIANTS:
        raise KeyError(f"unknown reading {reading!r}; readings: {', '.join(READINGS_VARIANTS)}")
    r_label, r_over = READINGS_VARIANTS[reading]
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for v, (label, over) in variants.items():
        if v == "default" or reading == "default":
            name, merged = (reading, dict(r_over)) if v == "default" else (v, dict(over))
            out[name] = (label if reading == "default" else r_label, merged)
            continue
        moot = bool(r_over) and all(k in _MOOT and over.get(_MOOT[k][0]) == _MOOT[k][1] for k in r_over)
        out[v if moot else f"{reading}{READING_SEP}{v}"] = (label if moot else f"{label} [{r_label}]",
                                                            dict(over) if moot else {**r_over, **over})
    return out


def study_variant(name: str) -> tuple[str, dict[str, Any]] | None:
    """(label, MIAN overrides) of a study variant name: one of :data:`STUDY_VARIANTS`, or a
    ``<reading>+<variant>`` of :func:`on_reading` (ablation variants, Table 4 rows); None if unknown."""
    if name in STUDY_VARIANTS:
        return STUDY_VARIANTS[name]
    reading, sep, base = name.partition(READING_SEP)
    if not sep or reading not in READINGS_VARIANTS:
        return None
    pool = {**ABLATION_VARIANTS, **{v: TRANSFORMER_VARIANTS[v] for v in TABLE4_VARIANTS}}
    if base not in pool or base == "default":
        return None
    return on_reading(reading, {base: pool[base]}).get(name)


#: readings that are controls, not readings of the paper: never chosen (gim_uniform: GIM's weights fixed)
READING_CONTROLS = frozenset({"gim_uniform"})


def chosen_reading(records: Sequence[dict[str, Any]], dataset: str, seeds: int = 5) -> tuple[str | None, dict[str, float]]:
    """The reading of :data:`READINGS_VARIANTS` (not a control of :data:`READING_CONTROLS`) with
    the highest mean best-epoch VALIDATION AUC (never test) over the MIAN runs of ``dataset``,
    among the readings with all ``seeds`` seeds 0..seeds-1 (a tie keeps ``default``); (None, {})
    while any reading lacks a seed (the readings study is not complete).
    Returns (the reading, {reading: mean validation AUC})."""
    means: dict[str, float] = {}
    for v in READINGS_VARIANTS:
        if v in READING_CONTROLS:
            continue
        vals = {int(r["seed"]): float(r["valid"]["auc"]) for r in records
                if r["dataset"] == dataset and r["model"] == "mian" and r["variant"] == v}
        if set(range(seeds)) - set(vals):
            return None, {}
        means[v] = statistics.fmean(vals[s] for s in range(seeds))
    return max(means, key=lambda v: (means[v], v == "default")), means


def draws_curves(model: str, variant: str) -> bool:
    """Whether the run of ``model`` / ``variant`` draws convergence curves (Figure 5: the MIAN
    variants of :data:`CONVERGENCE_VARIANTS`), so validates every ``[curves] eval_every_steps``
    steps as well as at epoch ends. The one place that decides it: :meth:`Runner.resolve` and
    :func:`protocol_records` both ask here, so the main table's MIAN run, the ablation's full-MIAN
    row and the Transformer study's Pre-LN row are one run."""
    return model == "mian" and variant in CONVERGENCE_VARIANTS


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
    this code's ``RESULTS_VERSION`` and the dataset config resolved for its model and study variant with no ``--set`` overrides (and
    the validation cadence :func:`draws_curves` gives it), it
    must be made with the default data-protocol parameters (``data_params``, absent in older
    records), and its dataset fingerprint must be the one most records of that dataset share. Returns the kept
    records and one note per kind of record left out (for the report)."""
    from collections import Counter

    import dataclasses

    from bench.data.samples import ProtocolParams

    default_data = dataclasses.asdict(ProtocolParams())
    kept, dropped = [], Counter()
    cache: dict[tuple[str, str, str], Any] = {}
    for r in records:
        if r.get("results_version", 1) != RESULTS_VERSION:
            dropped[f"made by code of another RESULTS_VERSION ({r.get('results_version', 1)}; this code: "
                    f"{RESULTS_VERSION})"] += 1
            continue
        if str(r["variant"]).startswith("tune-"):  # bench.training.tuning: test never scored
            dropped["tuning trials (python cli.py tune; their test split is never scored)"] += 1
            continue
        if str(r["variant"]).startswith("tuned-"):  # bench.training.tuned: the tuned protocol's own tables and claims
            dropped["runs of the tuned protocol (--tuned; in results/<dataset>/tuned/ and the report's tuned column)"] += 1
            continue
        if r["model"] == "mian" and study_variant(r["variant"]) is None or r["model"] != "mian" and r["variant"] != "default":
            dropped["unknown study variant"] += 1
            continue
        key = (r["dataset"], r["model"], r["variant"])
        if key not in cache:
            try:
                overrides = study_variant(r["variant"])[1] if r["model"] == "mian" else {}
                cache[key] = resolve_config(r["dataset"], r["model"], overrides, {},
                                            curves=draws_curves(r["model"], r["variant"]))
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
