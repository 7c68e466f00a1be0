"""Run records: one JSON file per run under ``results/runs/``, named by a hash of canonical JSON of
everything that determines the result (the reproduction protocol, section 3).

A record's id covers: protocol, dataset, dataset fingerprint, model, variant, seed, resolved config
and ``RESULTS_VERSION`` (bumped whenever a code change alters results). Each record carries
``checksum``, the sha256 of the canonical JSON of the record without that field; a record is
checked (JSON, the types of the keys the harness reads, run id, checksum) every time it is read,
and one that fails is refused with :class:`RecordError` naming the file: committed records are
never silently recomputed over. Writes are atomic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

from bench.io import atomic_write_text

log = logging.getLogger(__name__)

RESULTS_VERSION = 2  # 2: issue 13 speed paths (fused Adam, length-sorted scoring, batched CIN, DIEN real-pair aux loss), curve cadence on curve runs only
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"

REQUIRED_KEYS = ("run_id", "protocol", "dataset", "model", "variant", "seed", "config", "test")
#: the fields of a record that make up its run key (and so its id)
KEY_FIELDS = ("protocol", "dataset", "fingerprint", "model", "variant", "seed", "config", "results_version")
METRIC_KEYS = ("auc", "logloss", "gauc")


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
    return []


_MISSING = object()


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
