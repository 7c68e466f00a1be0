"""File writes that a reader (or an interrupted writer) never sees half done, the clean-up of what
killed writers leave behind, and the up-front check that a command's output folders are writable.

Temporary names carry the writer's pid (``.<name>.<pid>~<random>.tmp``), so that
:func:`remove_stale_temps` can tell a file being written by a live process from one left by a
killed writer.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

#: a temporary file or folder whose writer pid is unknown (or alive but reused) is stale after this
STALE_SECONDS = 600.0
#: names of the temporary files and folders of this package: atomic writes ``.<name>.<pid>~x.tmp``,
#: downloads ``.<name>.<pid>~x.part``, pip downloads
#: ``.pip-<pid>~x``, cache folders ``.tmp-<cache>~<pid>~x`` (older releases: no pid)
_TEMP_NAME = re.compile(r"^\..+\.(tmp|part)$|^\.pip-|^\.tmp-")
_PID = re.compile(r"[.~-](\d+)~")


class PathError(Exception):
    """A folder a command must write is not a writable folder; the message names it and the
    option or environment variable that chose it."""


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for ``name``: ``.<name>.<pid>~``."""
    return f".{name}.{os.getpid()}~"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    On any error (e.g. ``OSError`` of a full disk) the temporary file is removed, ``path`` keeps its
    old content and the error is raised."""
    atomic_write_many({path: data})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_many(files: Mapping[Path, bytes]) -> None:
    """Write several files as one publication: every content goes to a temporary file first
    (written and fsynced), and only when all are complete are they renamed into place, one
    ``os.replace`` after another. An error before the renames leaves every old file as it was and
    no temporary file behind; an error or an interrupt during them (a target that cannot be
    replaced: :class:`PathError` naming it; Ctrl-C) puts back the files already replaced, from
    hard-linked backups taken just before. Only a kill (SIGKILL) between two renames can leave a
    mixed publication: the tables' stamps show it, and the next command removes the left-over
    temporaries.
    """
    temps: list[tuple[str, Path]] = []
    backups: dict[Path, str | None] = {}
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be read by others
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if len(temps) > 1:
            for _, path in temps:
                backups[path] = _backup(path)
        done: list[Path] = []
        for tmp, path in temps:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                _restore(done, backups)
                raise PathError(f"{path} cannot be written ({exc.strerror or exc}); the "
                                f"{len(temps)} files of this publication were left as they were.") from None
            except BaseException:  # Ctrl-C between two renames: all old again
                _restore(done, backups)
                raise
            done.append(path)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    finally:
        for backup in backups.values():
            if backup is not None:
                try:
                    os.unlink(backup)
                except FileNotFoundError:
                    pass


def _backup(path: Path) -> str | None:
    """A hard link to ``path``'s current content under a temporary name (None when there is none)."""
    if not path.exists():
        return None
    backup = str(path.parent / f"{temp_prefix(path.name)}bak.tmp")
    try:
        os.unlink(backup)
    except FileNotFoundError:
        pass
    try:
        os.link(path, backup)
    except OSError:  # a file system without hard links: a copy serves as well
        shutil.copy2(path, backup)
    return backup


def _restore(done: list[Path], backups: dict[Path, str | None]) -> None:
    """Put back the old content of the already replaced ``done`` files (or remove a new one)."""
    for path in reversed(done):
        backup = backups.get(path)
        try:
            if backup is None:
                path.unlink()
            else:
                os.replace(backup, path)
                backups[path] = None
        except OSError as exc:
            log.error("could not restore %s after a failed publication (%s)", path, exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- stale temporaries

def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the temporary file or folder ``path`` was left by a writer that is gone: its pid
    (from the name) is dead, or it has not changed for :data:`STALE_SECONDS`."""
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    pids = _PID.findall(path.name)
    if pids and not pid_alive(int(pids[-1])):
        return True
    return age > STALE_SECONDS


def remove_stale_temps(folders: Iterable[Path], recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders of killed writers (see the module docstring) in
    ``folders`` (and their sub-folders with ``recursive``); missing folders are skipped. Returns
    what was removed (each logged)."""
    removed = []
    now = time.time()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        try:
            entries = list(folder.rglob(".*") if recursive else folder.glob(".*"))
        except OSError:
            continue
        for p in entries:
            if not _TEMP_NAME.match(p.name) or not is_stale(p, now):
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove the stale temporary %s (%s)", p, exc)
                continue
            log.info("removed %s, left by an interrupted writer", p)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- writable folders

def check_writable(path: Path, source: str, option: str) -> None:
    """Raise :class:`PathError` unless ``path`` is a folder this process can write, or can be
    created (its nearest existing ancestor is a writable folder). Nothing is created.

    ``source`` names what chose the path (``--results-dir /x``, ``MIAN_DATA_DIR=/y``, ``the
    default ./results``), ``option`` how to choose another (``--results-dir``); the error names the
    path and both. Writability is probed by creating an anonymous temporary file there (unlike
    ``os.access`` this also sees read-only mounts and ACLs)."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    where = f"{path} (from {source})"
    if not existing.is_dir():
        what = "is a file" if existing.exists() else "is a broken link"
        if existing == path:
            raise PathError(f"{where} {what}, not a folder; choose a folder with {option}.")
        raise PathError(f"{where} cannot be created: {existing} {what}, not a folder; "
                        f"choose another folder with {option}.")
    try:
        probe(existing)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        at = "" if existing == path else f" (cannot create it in {existing})"
        raise PathError(f"{where} is not writable{at}: {reason}; choose a writable folder with "
                        f"{option}.") from None



def probe(folder: Path) -> None:
    """Create and at once remove an anonymous file in ``folder``; raises ``OSError`` when it cannot."""
    with tempfile.TemporaryFile(prefix=temp_prefix("probe"), dir=folder):
        pass
