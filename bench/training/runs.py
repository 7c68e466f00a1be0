"""Run records: one JSON file per run under ``results/runs/``, named by a hash of canonical JSON of
everything that determines the result (the reproduction protocol, section 3).

A record's id covers: protocol, dataset, dataset fingerprint, model, variant, seed, resolved config
and ``RESULTS_VERSION`` (bumped whenever a code change alters results). Each record carries
``checksum``, the sha256 of the canonical JSON of the record without that field; a record is
checked (JSON, the types of the keys the harness reads, run id, checksum) every time it is read,
and one that fails is refused with :class:`RecordError` naming the file: committed records are
never silently recomputed over. Writes are atomic.

Beside the records, ``results/scores/`` holds each run's test scores: ``<run_id>.npy``, the test
logits [N] (float32, test-split order) of the run's selected model, and per prepared dataset
``test-<dataset>-<fingerprint[:16]>.npz`` (the test split's labels and user keys), so that the
report can test a difference over test samples (:func:`bench.metrics.paired_bootstrap`) from
committed files alone. :meth:`RunStore.checked_scores` gives a run's scores only when they belong
to its record (:func:`scores_problems`: length, finite floats, metrics); a study command replaces a
scores file that fails it and rewrites a keys file that is not its prepared data's
(:meth:`bench.training.studies.Runner.backfill_scores`).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bench.io import atomic_write_bytes, atomic_write_text
from bench.metrics import split_metrics

log = logging.getLogger(__name__)

RESULTS_VERSION = 2  # 2: issue 13 speed paths (fused Adam, length-sorted scoring, batched CIN, DIEN real-pair aux loss), curve cadence on curve runs only
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"

REQUIRED_KEYS = ("run_id", "protocol", "dataset", "model", "variant", "seed", "config", "test")
#: the fields of a record that make up its run key (and so its id)
KEY_FIELDS = ("protocol", "dataset", "fingerprint", "model", "variant", "seed", "config", "results_version")
METRIC_KEYS = ("auc", "logloss", "gauc")
#: how far the metrics of a run's scores file may be from its record's test metrics
SCORES_TOLERANCE = 1e-9


class StoreError(Exception):
    """A run record problem that stops a command; the message names the file."""


class RecordError(StoreError):
    """A run record that cannot be trusted (bad JSON, wrong shape, checksum mismatch)."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_key(
    *,
    protocol: str,
    dataset: str,
    fingerprint: str,
    model: str,
    variant: str,
    seed: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Everything that determines a run's result."""
    return {
        "protocol": protocol,
        "dataset": dataset,
        "fingerprint": fingerprint,
        "model": model,
        "variant": variant,
        "seed": int(seed),
        "config": config,
        "results_version": RESULTS_VERSION,
    }


def run_id(key: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON (sorted keys) of ``key``."""
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()[:16]


def checksum(record: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``record`` without its ``checksum`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with its ``checksum`` (re)computed."""
    return {**record, "checksum": checksum(record)}


def record_problems(record: Any, rid: str | None = None) -> list[str]:
    """What is wrong with ``record`` (empty when nothing): the types of the keys the harness reads
    (run_id, protocol, dataset, fingerprint, model, variant: str; seed, best_epoch, epochs_run,
    steps, n_params: int; config {train, model}: dicts; test, valid: {auc, logloss, gauc} numbers,
    never infinite (NaN marks an undefined metric); valid_history: list of {epoch, step, epoch_end,
    valid, train_loss}; wall_seconds {train, eval}: numbers), that ``run_id`` is ``rid`` and the
    hash of the record's key fields, and the checksum."""
    if not isinstance(record, dict):
        return [f"expected a JSON object, found {type(record).__name__}"]
    out: list[str] = []

    def kind(key: str, want: tuple[type, ...], label: str, where: dict = record, name: str | None = None) -> bool:
        value = where.get(key, _MISSING)
        ok = value is not _MISSING and isinstance(value, want) and not (isinstance(value, bool) and bool not in want)
        if not ok:
            shown = "missing" if value is _MISSING else f"{type(value).__name__} {_short(value)}"
            out.append(f"{name or key}: expected {label}, found {shown}")
        return ok

    def metrics(where: dict, name: str) -> None:
        for m in METRIC_KEYS:
            if kind(m, (int, float), "a number", where, f"{name}.{m}") and math.isinf(where[m]):
                out.append(f"{name}.{m}: expected a finite number, found {where[m]}")

    for k in ("run_id", "protocol", "dataset", "fingerprint", "model", "variant"):
        kind(k, (str,), "a string")
    for k in ("seed", "results_version", "best_epoch", "epochs_run", "steps", "n_params"):
        kind(k, (int,), "an integer")
    if kind("config", (dict,), "an object"):
        for k in ("train", "model"):
            kind(k, (dict,), "an object", record["config"], f"config.{k}")
    for split in ("test", "valid"):
        if kind(split, (dict,), "an object {auc, logloss, gauc}"):
            metrics(record[split], split)
    if kind("wall_seconds", (dict,), "an object {train, eval}"):
        for k in ("train", "eval"):
            kind(k, (int, float), "a number", record["wall_seconds"], f"wall_seconds.{k}")
    if kind("valid_history", (list,), "a list"):
        for i, h in enumerate(record["valid_history"]):
            name = f"valid_history[{i}]"
            if not isinstance(h, dict):
                out.append(f"{name}: expected an object, found {type(h).__name__}")
                continue
            for k in ("epoch", "step"):
                kind(k, (int,), "an integer", h, f"{name}.{k}")
            kind("epoch_end", (bool,), "true or false", h, f"{name}.epoch_end")
            kind("train_loss", (int, float), "a number", h, f"{name}.train_loss")
            if kind("valid", (dict,), "an object", h, f"{name}.valid"):
                metrics(h["valid"], f"{name}.valid")
            if len(out) > 5:
                break
    has_ll = [k in record for k in ("test_by_logloss", "valid_by_logloss")]
    if any(has_ll):
        if kind("test_by_logloss", (dict,), "an object {epoch, auc, logloss, gauc}"):
            kind("epoch", (int,), "an integer", record["test_by_logloss"], "test_by_logloss.epoch")
            metrics(record["test_by_logloss"], "test_by_logloss")
        if kind("valid_by_logloss", (dict,), "an object {auc, logloss, gauc}"):
            metrics(record["valid_by_logloss"], "valid_by_logloss")
    if out:
        return out
    if rid is not None and record["run_id"] != rid:
        return [f"its run_id {record['run_id']!r} is not its file name's"]
    if run_id({k: record[k] for k in KEY_FIELDS}) != record["run_id"]:
        return ["its run_id is not the hash of its protocol, dataset, fingerprint, model, variant, seed and config "
                "(one of them was changed)"]
    if "checksum" not in record:
        return ["it has no checksum (not written by this harness, or by a version before checksums)"]
    if record["checksum"] != checksum(record):
        return ["its content does not match its checksum (the file was edited after it was written)"]
    return _logloss_selection_problems(record) if any(has_ll) else []


_MISSING = object()


def _logloss_selection_problems(record: dict[str, Any]) -> list[str]:
    """Whether ``test_by_logloss`` / ``valid_by_logloss`` are the selection on validation logloss
    of ``record``'s own validation history (types already checked)."""
    ends = [h for h in record["valid_history"] if h["epoch_end"]]
    finite = [h for h in ends if not math.isnan(h["valid"]["logloss"])]
    if not finite:
        return ["test_by_logloss: the validation history has no epoch end with a finite logloss"]
    best = min(finite, key=lambda h: h["valid"]["logloss"])  # the first of equal minima, as the Trainer
    epoch = record["test_by_logloss"]["epoch"]
    if epoch != best["epoch"]:
        return [f"test_by_logloss.epoch: expected {best['epoch']} (the epoch end of lowest validation logloss), "
                f"found {epoch}"]
    if canonical_json(record["valid_by_logloss"]) != canonical_json(best["valid"]):
        return [f"valid_by_logloss: expected the validation metrics of epoch {epoch}'s end"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 20 else text[:17] + "..."


def _advice(path: Path) -> str:
    try:
        shown = Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = path
    return f"restore it (git checkout -- {shown}) or delete it, or use --force to retrain it"


class RunStore:
    """Content-addressed run records in ``root`` (default ``results/runs``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else DEFAULT_RESULTS_DIR / "runs"

    def path(self, rid: str) -> Path:
        return self.root / f"{rid}.json"

    def load(self, rid: str, refuse: bool = True) -> dict[str, Any] | None:
        """The record ``rid``, or None when there is none.

        A record that fails :func:`record_problems` (or does not parse) raises :class:`RecordError`
        naming the file and what is wrong; with ``refuse=False`` it is logged and None is returned
        instead (``--force``, which retrains and replaces it)."""
        path = self.path(rid)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            problems = [f"cannot be read ({exc})"]
        else:
            try:
                record = json.loads(text)
            except ValueError as exc:
                problems = [f"is not valid JSON ({exc})"]
            else:
                problems = record_problems(record, rid)
                if not problems:
                    return record
        what = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        if refuse:
            raise RecordError(f"run record {path} fails its check: {what}. Refusing to use or replace it: "
                              f"{_advice(path)}.")
        log.warning("run record %s fails its check (%s); --force retrains and replaces it", path, what)
        return None

    def save(self, record: dict[str, Any]) -> Path:
        """Seal ``record`` (add its checksum) and write it atomically; raises :class:`RecordError`
        when it fails :func:`record_problems` (nothing is written)."""
        record = sealed(record)
        problems = record_problems(record)
        if problems:
            raise RecordError(f"run record {record.get('run_id')} is malformed, not saved: {'; '.join(problems[:3])}")
        path = self.path(record["run_id"])
        atomic_write_text(path, json.dumps(record, sort_keys=True, indent=1) + "\n")
        return path

    @property
    def scores_dir(self) -> Path:
        """``scores/`` beside the records' folder (``results/scores`` for ``results/runs``)."""
        return self.root.parent / "scores"

    def scores_path(self, rid: str) -> Path:
        return self.scores_dir / f"{rid}.npy"

    def has_scores(self, record: dict[str, Any], keys: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
        """Whether ``record``'s scores file passes its check (:meth:`checked_scores`), not only exists."""
        return self.checked_scores(record, keys)[0] is not None

    def save_scores(self, rid: str, logits: np.ndarray) -> Path:
        """Write the test logits [N] of run ``rid`` atomically as float32 ``.npy`` (no pickle)."""
        path = self.scores_path(rid)
        atomic_write_bytes(path, _npy_bytes(np.ascontiguousarray(np.asarray(logits).reshape(-1), dtype=np.float32)))
        return path

    def test_keys_path(self, dataset: str, fingerprint: str) -> Path:
        return self.scores_dir / f"test-{dataset}-{fingerprint[:16]}.npz"

    def save_test_keys(self, dataset: str, fingerprint: str, labels: np.ndarray, users: np.ndarray) -> Path:
        """Make the test-split keys file of the prepared ``dataset`` with ``fingerprint`` hold its
        test split's ``labels`` [N] (int8) and user keys ``users`` [N] (int64): kept when it does,
        else (missing, unreadable, other keys: logged, naming it) written atomically. Raises
        OSError when it cannot be written."""
        path = self.test_keys_path(dataset, fingerprint)
        labels = np.asarray(labels).reshape(-1).astype(np.int8)
        users = np.asarray(users).reshape(-1).astype(np.int64)
        if path.exists():
            kept, why = _read_test_keys(path)
            if kept is not None and np.array_equal(kept[0], labels) and np.array_equal(kept[1], users):
                return path
            log.warning("test-split keys %s %s; writing them again from the prepared data", path,
                        why or "hold other labels or users than the prepared data's test split")
        buf = io.BytesIO()
        np.savez(buf, label=labels, user=users)
        atomic_write_bytes(path, buf.getvalue())
        return path

    def load_test_keys(self, dataset: str, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels [N], users [N]) of the test split of ``dataset`` / ``fingerprint``; None when
        the file is missing or unreadable (logged, naming it)."""
        path = self.test_keys_path(dataset, fingerprint)
        if not path.exists():
            return None
        keys, why = _read_test_keys(path)
        if keys is None:
            log.warning("test-split keys %s %s; a study command over that dataset (train, reproduce, ablate) "
                        "writes it again", path, why)
        return keys

    def checked_scores(self, record: dict[str, Any], keys: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> tuple[np.ndarray | None, str | None]:
        """(test logits [N] float64, None) of ``record`` when its scores file exists, loads (no
        pickle) and passes :func:`scores_problems` against the test split's keys (``keys``, or
        :meth:`load_test_keys` of the record's dataset and fingerprint); else (None, why: one
        sentence naming the run and the file, no folder)."""
        rid = record["run_id"]
        path = self.scores_path(rid)
        if not path.exists():
            return None, f"run {rid} has no scores file ({path.name})"
        keys = keys if keys is not None else self.load_test_keys(record["dataset"], record["fingerprint"])
        if keys is None:
            kpath = self.test_keys_path(record["dataset"], record["fingerprint"])
            if kpath.exists():
                return None, f"run {rid}: its test-split keys file {kpath.name} cannot be read"
            return None, f"run {rid}: no test-split keys file {kpath.name}"
        try:
            scores = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            return None, f"run {rid}: its scores file {path.name} cannot be read ({exc})"
        problems = scores_problems(record, scores, *keys)
        if problems:
            return None, f"run {rid}: its scores file {path.name} does not reproduce its record ({'; '.join(problems)})"
        return scores.astype(np.float64).reshape(-1), None

    def records(self) -> Iterable[dict[str, Any]]:
        """Every record, in file-name order. Raises :class:`RecordError` naming every file that
        fails its check (none is used then)."""
        if not self.root.exists():
            return []
        good, bad = [], []
        for path in sorted(self.root.glob("*.json")):
            try:
                rec = self.load(path.stem)
            except RecordError as exc:
                bad.append((path, exc))
                continue
            if rec is not None:
                good.append(rec)
        if len(bad) == 1:
            raise bad[0][1]
        if bad:
            names = ", ".join(p.name for p, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise RecordError(f"{len(bad)} run records under {self.root} fail their check ({names}); "
                              f"the first: {bad[0][1]}")
        return good

def scores_problems(record: dict[str, Any], scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> list[str]:
    """Whether ``scores`` (test logits [N]) belong to ``record``: their length is that of the
    test split (``labels`` [N], ``users`` [N]), they are finite floats (checked before any
    metric) and the AUC, logloss and gAUC computed from them
    (:func:`bench.metrics.split_metrics`) equal the record's test metrics to
    :data:`SCORES_TOLERANCE`. Empty when they do; else what differs."""
    scores = np.asarray(scores).reshape(-1)
    if scores.size != np.asarray(labels).size:
        return [f"{scores.size} scores for a test split of {np.asarray(labels).size} samples"]
    if scores.dtype.kind != "f":
        return [f"scores of dtype {scores.dtype}, expected floats"]
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        return [f"{bad} non-finite scores (NaN or ±inf)"]
    got = split_metrics(labels, scores.astype(np.float64), users)
    out = []
    for m in METRIC_KEYS:
        want = record["test"][m]
        if not (math.isnan(got[m]) and math.isnan(want)) and not abs(got[m] - want) <= SCORES_TOLERANCE:
            out.append(f"test {m} {got[m]!r} from the scores, {want!r} in the record")
    return out


def _read_test_keys(path: Path) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """((labels [N], users [N]), None) of the test-split keys file ``path``, else (None, why)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            labels, users = z["label"], z["user"]
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:  # TypeError: not an .npz
        return None, f"cannot be read ({exc})"
    if labels.shape != users.shape or labels.ndim != 1:
        return None, f"cannot be read (label {labels.shape} and user {users.shape} arrays differ)"
    return (labels, users), None


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def seal(root: Path | None = None) -> list[Path]:
    """Add the checksum to every record under ``root`` (default ``results/runs``) that has none:
    a one-off migration of records written before checksums. Every other byte stays the same
    (records are rewritten in the format :meth:`RunStore.save` uses). A record that fails any
    other check is left alone and raises :class:`RecordError`. Returns the sealed files."""
    store = RunStore(root)
    todo = []
    for path in sorted(store.root.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and "checksum" in record:
            store.load(path.stem)  # must pass as it is
            continue
        problems = record_problems(sealed(record) if isinstance(record, dict) else record, path.stem)
        if problems:
            raise RecordError(f"run record {path}: {'; '.join(problems)}; not sealed")
        todo.append((path, record))
    for path, record in todo:
        store.save(record)
    return [p for p, _ in todo]
