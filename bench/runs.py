"""Run records: one JSON file per run under ``results/runs/``, named by a hash of canonical JSON of
everything that determines the result (the reproduction protocol, section 3).

A record's id covers: protocol, dataset, dataset fingerprint, model, variant, seed, resolved config
and ``RESULTS_VERSION`` (bumped whenever a code change alters results). Writes are atomic; a
corrupt record is reported, moved aside and recomputed, never a crash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable

from bench.io import atomic_write_text

log = logging.getLogger(__name__)

RESULTS_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "results"

REQUIRED_KEYS = ("run_id", "protocol", "dataset", "model", "variant", "seed", "config", "test")


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


class RunStore:
    """Content-addressed run records in ``root`` (default ``results/runs``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else DEFAULT_RESULTS_DIR / "runs"

    def path(self, rid: str) -> Path:
        return self.root / f"{rid}.json"

    def load(self, rid: str, quarantine: bool = True) -> dict[str, Any] | None:
        """The record ``rid``, or None when missing or corrupt (a corrupt file is logged and, with
        ``quarantine``, renamed to ``<rid>.json.corrupt`` so that it is recomputed)."""
        path = self.path(rid)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing or record["run_id"] != rid:
                raise ValueError(f"missing keys {missing}" if missing else "run_id does not match file name")
            return record
        except (ValueError, UnicodeDecodeError) as exc:
            if quarantine:
                log.warning("run record %s is corrupt (%s); moving it aside and recomputing", path, exc)
                path.replace(path.with_suffix(".json.corrupt"))
            else:
                log.warning("run record %s is corrupt (%s); skipped", path, exc)
            return None

    def save(self, record: dict[str, Any]) -> Path:
        path = self.path(record["run_id"])
        atomic_write_text(path, json.dumps(record, sort_keys=True, indent=1) + "\n")
        return path

    def lock_path(self, rid: str) -> Path:
        return self.root / f"{rid}.lock"

    def claim(self, rid: str) -> bool:
        """Take the lock of run ``rid`` so that parallel workers of a study never train the same
        run twice. Returns False while another live process holds it; a lock left by a dead
        process of this host is taken over.

        The lock appears with its content in one step (written to a temporary file, then
        ``os.link``ed to ``<rid>.lock``, which fails if the lock exists), so another worker never
        sees an empty lock and mistakes it for a dead one."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(rid)
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        tmp = self.root / f".{rid}.lock.{os.getpid()}.tmp"
        tmp.write_text(owner)
        try:
            for _ in range(2):
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    if self._stale(path):
                        log.warning("taking over the stale lock %s", path)
                        path.unlink(missing_ok=True)
                        continue
                    return False
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def release(self, rid: str) -> None:
        """Remove the lock of ``rid`` if this process holds it."""
        path = self.lock_path(rid)
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)

    @staticmethod
    def _stale(path: Path) -> bool:
        try:
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            # unreadable: not one of ours (ours appear complete); stale once it is a minute old
            try:
                return time.time() - path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell; another machine sharing the folder
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def records(self, quarantine: bool = True) -> Iterable[dict[str, Any]]:
        """Every readable record (corrupt ones are skipped with a warning)."""
        if not self.root.exists():
            return
        for path in sorted(self.root.glob("*.json")):
            rec = self.load(path.stem, quarantine=quarantine)
            if rec is not None:
                yield rec
