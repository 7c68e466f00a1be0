"""Shared pieces of the raw-data readers: the error type, checksums, downloads, text parsing.

Every bad input raises :class:`DataError` with one sentence naming the file (or option) and what
was expected; nothing here writes outside the destination it was given, and a download is written
to a temporary name and renamed only after it is complete and its sha256 matches.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

log = logging.getLogger(__name__)

#: The URL opener used by :func:`download` (tests replace it to serve local files).
urlopen: Callable = urllib.request.urlopen

SECONDS_PER_DAY = 86_400


class DataError(Exception):
    """A raw or prepared data input is missing, malformed or does not match its checksum.

    The message is one sentence naming the file, field or option and what was expected.
    """


class DownloadUnavailable(DataError):
    """The host of a download could not be reached (a fallback source may be tried)."""


@dataclass(frozen=True)
class RawFiles:
    """The raw input files of one dataset as found or downloaded.

    ``kind`` names the layout (e.g. ``grouplens-zip``, ``widedeep-parquet``); ``paths`` maps each
    role (``ratings``, ``users``, ...) to its file. The cache key hashes the content of these files.
    ``downloaded`` is True when this call fetched them (they are deleted again if they fail to load).
    ``sha256`` holds the digests already verified while acquiring (role -> hex), so they are not
    computed twice.
    """

    kind: str
    paths: dict[str, Path] = field(default_factory=dict)
    downloaded: bool = False
    sha256: dict[str, str] = field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; :class:`DataError` when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); expected a readable file.") from e
    return h.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise :class:`DataError` unless ``path`` has sha256 ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise DataError(
            f"{path}: sha256 is {got[:16]}..., expected {expected[:16]}... "
            "(wrong, truncated or modified file)."
        )


def read_bytes(path: Path) -> bytes:
    """The whole file; :class:`DataError` when missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found; expected it to exist.") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}).") from e


def first_existing(dirs: Iterable[Path], names: Iterable[str]) -> dict[str, Path] | None:
    """The first directory of ``dirs`` that holds every file in ``names`` (name -> path), else None."""
    names = list(names)
    for d in dirs:
        paths = {n: Path(d) / n for n in names}
        if all(p.is_file() for p in paths.values()):
            return paths
    return None


def download(url: str, dest: Path, timeout: float, sha256: str | None = None) -> Path:
    """Fetch ``url`` into ``dest`` atomically (temporary file, then rename).

    Raises :class:`DownloadUnavailable` when the host cannot be reached or the transfer breaks,
    :class:`DataError` when the finished file's sha256 differs from ``sha256``. On failure nothing
    is left at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}~", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s", url)
        try:
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadUnavailable(f"{url}: download failed ({reason}).") from e
        if sha256 is not None:
            got = sha256_file(tmp)
            if got != sha256:
                raise DataError(
                    f"{url}: downloaded file has sha256 {got[:16]}..., expected {sha256[:16]}..."
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


#: bytes of one block of :func:`parse_int_lines` (its per-byte work arrays, about 30 bytes per input byte in all, are of this size)
PARSE_BLOCK_BYTES = 1 << 20


def parse_int_lines(data: bytes, path: Path, tab_split: bool = False,
                    block_bytes: int = PARSE_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Parse whitespace-separated integers laid out one record per line, without a Python loop
    over lines or tokens.

    Returns ``values`` [M] int64 (every token, file order) and ``counts``: [L] tokens per non-blank
    line, or [L, 2] tokens before / after the single TAB of each line when ``tab_split``.
    ``data`` is parsed in blocks of about ``block_bytes`` cut at line ends, so the per-byte work
    arrays (a few bytes each per input byte) never span the whole input.
    Raises :class:`DataError` naming ``path`` on a non-integer token or a line without exactly one TAB
    (its line number in the file).
    """
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    values, counts, lines_before, lo = [], [], 0, 0
    while lo < len(data):
        hi = data.find(b"\n", min(lo + block_bytes, len(data)) - 1)
        hi = len(data) if hi < 0 else hi + 1
        block = data[lo:hi]
        v, c, n_lines = _parse_int_block(block, path, tab_split, lines_before)
        values.append(v)
        counts.append(c)
        lines_before += n_lines
        lo = hi
    if not values:
        return np.zeros(0, np.int64), np.zeros((0, 2) if tab_split else 0, np.int64)
    return np.concatenate(values), np.concatenate(counts)


def _parse_int_block(data: bytes, path: Path, tab_split: bool, lines_before: int
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`parse_int_lines` on one block of whole lines; also returns its number of lines."""
    if not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, np.uint8)
    newline = buf == 10
    tab = buf == 9
    sep = newline | tab | (buf == 32)
    token_start = ~sep & np.concatenate(([True], sep[:-1]))
    del sep
    n_lines = int(newline.sum())
    line = np.cumsum(newline, dtype=np.int32 if len(buf) < 2**31 else np.int64) - newline
    try:
        values = np.array(data.split(), dtype=np.int64)
    except (ValueError, OverflowError) as e:
        raise DataError(f"{path}: expected whitespace-separated integers ({e}).") from e
    if not tab_split:
        counts = np.bincount(line[token_start], minlength=n_lines)
        return values, counts[counts > 0], n_lines
    line_starts = np.concatenate(([0], np.flatnonzero(newline)[:-1] + 1))
    tabs_before = np.cumsum(tab, dtype=line.dtype) - tab
    after_tab = (tabs_before - tabs_before[line_starts][line]) > 0
    del tabs_before
    seg = line.astype(np.int64) * 2 + after_tab
    counts = np.bincount(seg[token_start], minlength=2 * n_lines).reshape(n_lines, 2)
    tabs = np.bincount(line[tab], minlength=n_lines)
    nonblank = counts.sum(1) > 0
    bad = np.flatnonzero(nonblank & (tabs != 1))
    if bad.size:
        raise DataError(f"{path}: line {lines_before + bad[0] + 1} has {tabs[bad[0]]} TABs, expected exactly one.")
    return values, counts[nonblank], n_lines


def bucketize(values: np.ndarray, edges: Iterable[float]) -> np.ndarray:
    """Bucket codes 0..len(edges): code k means edges[k-1] <= value < edges[k]."""
    return np.searchsorted(np.asarray(list(edges)), values, side="right").astype(np.int64)


def weekday_utc(ts: np.ndarray) -> np.ndarray:
    """Weekday 0 (Monday) .. 6 (Sunday) of Unix timestamps ``ts`` in seconds, UTC."""
    return (ts // SECONDS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
