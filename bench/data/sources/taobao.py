"""Taobao ad display (Alimama, Tianchi dataset 56) -> :class:`SampleTable` (PROTOCOL 2.4, issue 16).

One dataset, ``taobao-ad`` (protocol ``taobao-ad-v1``), read from either of two published forms;
``--raw-dir`` names a folder holding exactly one of them (there is no download: users get the files
themselves, see :data:`WHERE_TO_GET`):

- **Tianchi's raw files** (``kind = "tianchi"``): ``raw_sample.csv`` (user, time_stamp, adgroup_id,
  pid, nonclk, clk: one impression per line, 26M lines), ``ad_feature.csv`` (adgroup_id, cate_id,
  campaign_id, customer, brand, price), ``user_profile.csv`` (userid and 8 profile fields) and
  ``behavior_log.csv`` (user, time_stamp, btag in pv/cart/fav/buy, cate, brand: 700M lines, read in
  chunks of :data:`CHUNK_ROWS`, keeping only users of raw_sample.csv and the events histories can
  use). A sample's behaviours are the user's log events strictly before the impression (same
  second excluded), the most recent ``max_len``. Split by the impression's calendar day in Beijing
  time (UTC+8, the data's own clock: BARS' "1494032110 stands for 2017-05-06 08:55:10"): 2017-05-06
  .. 05-11 train, 05-12 validation, 05-13 test (Tianchi's and BARS' train = 05-06 .. 05-12,
  test = 05-13, with the last training day held out for validation). Impressions outside those
  eight days are dropped with a warning.
- **BARS TaobaoAd_x1** (``kind = "taobaoad-x1"``): ``train.csv`` and ``test.csv`` of
  reczoo/Datasets ``Taobao/TaobaoAd_x1`` (DMR's preprocessing), each row an impression with its
  history published beside it: ``cate_his``, ``brand_his`` and ``btag_his`` (``^``-joined, oldest
  first, at most 50). The release has no time column and no validation split: validation = the last
  :data:`X1_VALID_SHARE` of ``train.csv``'s rows in file order (DMR's ``train_sorted.csv`` is in
  time order, so about its last day of seven); context is ``pid`` alone (no hour or weekday).

FuxiCTR's demo form (``click_sequence`` of ad ids, as in ``../shared/datasets/taobao-ad-sample/``) is
not accepted: its sequence holds clicked *ads* with no time, not the behaviour log; it is refused by
name (the tests derive files of the two forms above from its real rows instead).

Fields (both forms): candidate item (``adgroup_id``, ``category``, ``brand``, ``campaign``,
``customer``, ``price``, ``btag``), behaviours the same seven fields of which a log event carries
only ``category``, ``brand`` and ``btag`` (the other four are :data:`bench.data.samples.ABSENT`:
padding index 0, zero embedding), so the candidate's category and brand share their embedding tables
with the behaviours'; the candidate's ``btag`` is ``pv`` (code 1), as TaobaoAd_x1 publishes it (an
impression is a page view of the ad). User (``user_id`` and the 8 profile fields: a user without a
profile row has the missing value in each), context (``pid``, ``hour``, ``weekday`` in UTC+8; x1:
``pid``). ``price`` is bucketed by :data:`PRICE_EDGES` (yuan) in the Tianchi form and taken as
published (a categorical value) in x1. Missing values (empty cell, ``NULL``) are their own value
(:data:`MISSING`).

Every bad input is one :class:`DataError` naming the file and the column (missing column, a value
that is not an integer / a Unix time / a number, an empty file, a file that is not comma-separated).
No checksum is pinned (users hold their own copies; the cache key hashes their content); x1 files are
compared with the md5 sums published with the release and a warning names a file that differs.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from bench.data.samples import ABSENT, ProtocolParams, SampleTable
from bench.data.sources.common import SECONDS_PER_DAY, DataError, RawFiles, bucketize

log = logging.getLogger(__name__)

PROTOCOL = "taobao-ad-v1"
#: the datasets this reader serves: name -> protocol (written into every run record)
DATASETS: dict[str, str] = {"taobao-ad": PROTOCOL}

TIANCHI_FILES: dict[str, str] = {"samples": "raw_sample.csv", "ads": "ad_feature.csv",
                                 "users": "user_profile.csv", "behaviours": "behavior_log.csv"}
X1_FILES: dict[str, str] = {"train": "train.csv", "test": "test.csv"}
#: md5 of the published TaobaoAd_x1 files (reczoo/Datasets, Taobao/TaobaoAd_x1/README.md)
X1_MD5: dict[str, str] = {"train": "eaabfc8629f23519b04593e26c7522fc", "test": "f5ae6197e52385496d46e2867c1c8da1"}
WHERE_TO_GET = ("Tianchi's raw_sample.csv, ad_feature.csv, user_profile.csv and behavior_log.csv "
                "(https://tianchi.aliyun.com/dataset/56), or TaobaoAd_x1's train.csv and test.csv "
                "(https://huggingface.co/datasets/reczoo/TaobaoAd_x1); docs/DATA.md, section Taobao")

ITEM_FIELDS = ("adgroup_id", "category", "brand", "campaign", "customer", "price", "btag")
#: the item fields a behaviour-log event carries (the others are ABSENT in behaviours)
BEHAVIOUR_FIELDS = ("category", "brand", "btag")
PROFILE_FIELDS = ("cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                  "shopping_level", "occupation", "new_user_class_level")
USER_FIELDS = ("user_id", *PROFILE_FIELDS)
CONTEXT_FIELDS = ("pid", "hour", "weekday")
X1_CONTEXT_FIELDS = ("pid",)

#: behaviour types of behavior_log.csv -> raw code; an impression's (the candidate's) btag is pv
BTAG_CODES: dict[str, int] = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
CANDIDATE_BTAG = BTAG_CODES["pv"]
MISSING = -1  # raw code of a missing value (its own vocabulary entry)
PRICE_EDGES = (10, 20, 50, 100, 200, 500, 1000, 5000)  # yuan: <10, 10-20, ..., 1000-5000, >=5000
UTC_OFFSET_S = 8 * 3600  # Beijing time, the data's clock
FIRST_DAY, VALID_DAY, TEST_DAY = 17292, 17298, 17299  # 2017-05-06, 05-12, 05-13 (days since 1970-01-01)
X1_VALID_SHARE = 1 / 7  # the last seventh of train.csv (one day of seven) is validation
CHUNK_ROWS = 1_000_000  # rows per chunk when reading a CSV (about 300 MB of strings at a time)
#: read with pyarrow's streaming CSV reader first (about 10x faster), pandas where it refuses a file
FAST_READER = True

SAMPLE_COLUMNS = ("user", "time_stamp", "adgroup_id", "pid", "clk")
AD_COLUMNS = ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price")
PROFILE_COLUMNS = ("userid", *PROFILE_FIELDS)
BEHAVIOUR_COLUMNS = ("user", "time_stamp", "btag", "cate", "brand")
X1_AD_COLUMNS = ("adgroup_id", "cate_id", "brand", "campaign_id", "customer")
X1_COLUMNS = ("clk", "userid", *X1_AD_COLUMNS, "price", "pid", *PROFILE_FIELDS, "cate_his", "brand_his")


# --------------------------------------------------------------------------- acquiring raw files

def acquire(name: str, raw_dir: Path | None, download_dir: Path) -> RawFiles:
    """The Taobao files in ``raw_dir`` (else ``download_dir``, where a user may have put them).

    Returns ``RawFiles("tianchi", {samples, ads, users, behaviours})`` or
    ``RawFiles("taobaoad-x1", {train, test})`` (x1: sha256 computed here with the md5 that is
    compared with :data:`X1_MD5`). Raises :class:`DataError` naming the folder and the files expected
    when neither form is complete, when both are present, or for FuxiCTR's demo form.
    """
    folder = Path(raw_dir if raw_dir is not None else download_dir)
    tianchi = {role: folder / f for role, f in TIANCHI_FILES.items()}
    x1 = {role: folder / f for role, f in X1_FILES.items()}
    has_tianchi = [p.is_file() for p in tianchi.values()]
    has_x1 = [p.is_file() for p in x1.values()]
    if all(has_tianchi) and all(has_x1):
        raise DataError(f"{folder}: holds both Tianchi's raw files and TaobaoAd_x1's train.csv/test.csv; "
                        "expected one form per --raw-dir (move the other aside).")
    if all(has_tianchi):
        return RawFiles("tianchi", tianchi)
    if all(has_x1):
        sums = {}
        for role, path in x1.items():
            sha, md5 = _digests(path)
            sums[role] = sha
            if md5 != X1_MD5[role]:
                log.warning("%s: md5 %s differs from the published TaobaoAd_x1 %s (%s); "
                            "results are not comparable with BARS'.", path, md5, X1_FILES[role], X1_MD5[role])
        return RawFiles("taobaoad-x1", x1, sha256=sums)
    if any((folder / f).is_file() for f in ("train_sample.csv", "valid_sample.csv", "test_sample.csv")):
        raise DataError(f"{folder}: holds FuxiCTR's demo form (train_sample.csv, click_sequence of ad ids), "
                        "which taobao-ad does not read (its click_sequence has no times and no behaviour fields, so "
                        f"no history can be checked to be strictly earlier); expected {WHERE_TO_GET}.")
    if any(has_tianchi):
        missing = next(p for p, ok in zip(tianchi.values(), has_tianchi) if not ok)
        raise DataError(f"{missing}: file not found; taobao-ad needs all four of Tianchi's files "
                        f"({', '.join(TIANCHI_FILES.values())}) in --raw-dir; get them at "
                        "https://tianchi.aliyun.com/dataset/56.")
    if any(has_x1):
        missing = next(p for p, ok in zip(x1.values(), has_x1) if not ok)
        raise DataError(f"{missing}: file not found; taobao-ad needs TaobaoAd_x1's train.csv and test.csv "
                        "in --raw-dir; get them at https://huggingface.co/datasets/reczoo/TaobaoAd_x1.")
    where = "--raw-dir" if raw_dir is not None else f"{folder} (or pass --raw-dir)"
    raise DataError(f"{folder}: no Taobao files; taobao-ad has no download and expects in {where} {WHERE_TO_GET}.")


def _digests(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(sha256, md5) hex of a file, in one pass; :class:`DataError` when it cannot be read."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                sha.update(block)
                md5.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); expected a readable file.") from e
    return sha.hexdigest(), md5.hexdigest()


# --------------------------------------------------------------------------- CSV reading

def _header(path: Path) -> tuple[list[str], list[str]]:
    """The column names of a CSV's first line: (stripped, as written); a UTF-8 BOM removed."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); expected a readable file.") from e
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    if not text.strip():
        raise DataError(f"{path}: empty file (no header line); expected a comma-separated header and rows.")
    written = text.split(",")
    return [c.strip() for c in written], written


def _check_header(path: Path, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if not missing:
        return
    hint = ""
    if len(header) == 1 and any(d in header[0] for d in (";", "\t", "|", " ")):
        hint = f" (the header line {header[0]!r} is not comma-separated: expected ',' as the delimiter)"
    elif "click_sequence" in header:
        hint = " (this is FuxiCTR's demo form with click_sequence of ad ids, which taobao-ad does not read)"
    raise DataError(f"{path}: column {missing[0]!r} is missing{hint}; expected the columns "
                    f"{', '.join(required)}.")


class _Refused(Exception):
    """The fast reader met something it does not accept as it is (a value that is not a plain
    integer, a missing cell in a required column, a line of the wrong width): the file is read
    again by the exact reader, which accepts what is valid and names the line of what is not."""


@dataclass(frozen=True)
class Typed:
    """A column converted by the fast reader: ``values`` [n] (int64 or float64), ``null`` [n] bool
    where the cell was empty or NULL."""

    values: np.ndarray
    null: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


class Chunk(dict):
    """Column name -> :class:`Typed` or a ``pd.Series`` of strings, for ``n_rows`` lines."""

    def __init__(self, columns: dict, n_rows: int) -> None:
        super().__init__(columns)
        self.n_rows = n_rows

    def __len__(self) -> int:
        return self.n_rows


def read_chunks(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
                chunk_rows: int | None = None, types: dict[str, str] | None = None,
                engine: str = "exact") -> Iterator[tuple[int, Chunk | pd.DataFrame]]:
    """Chunks of a comma-separated file with a header: (line number of the chunk's first row, chunk).

    Only ``required`` (all must exist) and the ``optional`` columns present are kept; names are
    stripped of spaces (user_profile.csv's header ends with one). ``engine``: "exact" (pandas, every
    cell a string, '' where empty or where a short line lacks it) or "fast" (pyarrow's streaming
    reader, the columns of ``types`` converted to ``"int"`` / ``"float"`` :class:`Typed` columns or
    ``"cat"`` categorical strings (a handful of distinct values: pid, btag), the others strings; raises :class:`_Refused` for anything but a clean file, see
    :func:`_fast_then_exact`). Raises :class:`DataError` naming the file: empty, a required column
    missing (with a hint when the file is not comma-separated), no data row, or (exact) a line with
    more fields than the header.
    """
    header, written = _header(path)
    _check_header(path, header, required)
    keep = set(required) | set(optional)
    wanted = [c for c in header if c in keep]
    n_rows = 0
    rows = chunk_rows or CHUNK_ROWS
    if engine == "fast":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        raw_names = [w for w, c in zip(written, header) if c in keep]
        kinds = {w: (types or {}).get(c, "str") for w, c in zip(written, header) if c in keep}
        arrow_type = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "cat": pa.string()}
        try:
            reader = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=max(rows * 48, 4096)),
                convert_options=pacsv.ConvertOptions(
                    column_types={w: arrow_type[k] for w, k in kinds.items()}, include_columns=raw_names,
                    null_values=["", "NULL", "null", "NaN", "nan", "None"], strings_can_be_null=False,
                    quoted_strings_can_be_null=False))
            for batch in reader:
                cols = {}
                for w in raw_names:
                    col = batch.column(w)
                    if kinds[w] == "str":
                        cols[w.strip()] = col.to_pandas()
                    elif kinds[w] == "cat":  # few distinct values: string work on the categories only
                        enc = col.dictionary_encode()
                        cols[w.strip()] = pd.Series(pd.Categorical.from_codes(
                            enc.indices.to_numpy(zero_copy_only=False), enc.dictionary.to_pylist()))
                    else:
                        null = col.is_null().to_numpy(zero_copy_only=False)
                        fill = 0 if kinds[w] == "int" else float("nan")
                        cols[w.strip()] = Typed(col.fill_null(fill).to_numpy(zero_copy_only=False), null)
                yield n_rows + 2, Chunk(cols, batch.num_rows)
                n_rows += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _Refused(f"{path}: {e}") from e
    else:
        try:
            with warnings.catch_warnings():  # a line longer than the header is an error, never dropped data
                warnings.simplefilter("error", pd.errors.ParserWarning)
                with pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False, encoding="utf-8",
                                 encoding_errors="replace", chunksize=rows) as reader:
                    for chunk in reader:
                        chunk.columns = [str(c).strip() for c in chunk.columns]
                        chunk = chunk[wanted].fillna("")
                        yield n_rows + 2, chunk  # line 1 is the header
                        n_rows += len(chunk)
        except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError) as e:
            raise DataError(f"{path}: not a well-formed comma-separated file ({str(e).strip()}); expected "
                            f"{', '.join(required)} on every line.") from e
    if n_rows == 0:
        raise DataError(f"{path}: no data rows after the header; expected rows of {', '.join(required)}.")


def _fast_then_exact(read):
    """Run the reader ``read(..., engine=...)`` with the fast engine; when that refuses the file or
    finds anything wrong, run it again with the exact one, which accepts every valid file (ids written
    as ``12.0``, spaces around values) and raises the one :class:`DataError` naming the line and the
    column of what is not. :data:`FAST_READER` False: the exact engine only."""

    @functools.wraps(read)
    def wrapper(*args, **kwargs):
        if FAST_READER:
            try:
                return read(*args, engine="fast", **kwargs)
            except (_Refused, DataError) as e:
                log.info("fast CSV reader: %s; reading the file again with the exact reader", e)
        return read(*args, engine="exact", **kwargs)

    return wrapper


def _missing_cells(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):  # decided once per category
        return _missing_cells(pd.Series(s.cat.categories.astype(str)))[s.cat.codes.to_numpy()]
    t = s.str.strip()
    return (t == "").to_numpy() | t.str.upper().isin(("NULL", "NAN", "NONE")).to_numpy()


def int_column(s: pd.Series | Typed, path: Path, column: str, first_line: int, missing_ok: bool = False,
               what: str = "an integer") -> np.ndarray:
    """int64 [n] of a string (or fast-read) column; a missing cell (empty, NULL, NaN) is
    :data:`MISSING` when ``missing_ok``. Integers written as floats (``339907.0``, pandas' export of
    an id column with missing cells) are accepted. Raises :class:`DataError` naming the file, the
    line, the column and the value otherwise (:class:`_Refused` for a fast-read column)."""
    if isinstance(s, Typed):
        if s.null.any() and not missing_ok:
            raise _Refused(f"{path}: column {column!r} has a missing cell")
        return np.where(s.null, MISSING, s.values).astype(np.int64)
    missing = _missing_cells(s)
    num = pd.to_numeric(s.where(~missing), errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(num) & ~missing) | (np.isfinite(num) & (np.mod(num, 1) != 0)) | np.isinf(num)
    if not missing_ok:
        bad |= missing
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {first_line + k}, column {column!r} is {s.iloc[k]!r}; expected {what}"
                        f"{' or an empty cell' if missing_ok else ''}.")
    out = np.full(len(s), MISSING, np.int64)
    out[~missing] = num[~missing].astype(np.int64)
    return out


def float_column(s: pd.Series, path: Path, column: str, first_line: int) -> np.ndarray:
    """float64 [n], NaN where missing; :class:`DataError` for a value that is not a number >= 0."""
    if isinstance(s, Typed):
        if (s.values < 0).any() or np.isinf(s.values).any():
            raise _Refused(f"{path}: column {column!r} has a value that is not a number >= 0")
        return np.where(s.null, np.nan, s.values).astype(np.float64)
    missing = _missing_cells(s)
    num = pd.to_numeric(s.where(~missing), errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(num) & ~missing) | (num < 0) | np.isinf(num)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {first_line + k}, column {column!r} is {s.iloc[k]!r}; expected a number >= 0.")
    return num


def _value(col: pd.Series | Typed, path: Path, k: int) -> str:
    """The text of cell k of a string column, for an error message (a fast-read column: the file is
    read again by the exact reader, whose message names it)."""
    if isinstance(col, Typed):
        raise _Refused(f"{path}: a value out of range")
    return col.iloc[k]


def sorted_names(names) -> list[str]:
    """Distinct strings in numeric order when every one is a number (``'2' < '10'``), else in text order."""
    names = list(names)
    try:
        return sorted(names, key=lambda n: (float(n), n))
    except ValueError:
        return sorted(names)


class StringCodes:
    """Codes of a categorical string column read in chunks: :meth:`add` gives provisional codes
    (order of first appearance), :meth:`final` maps them to the rank of the value in
    :func:`sorted_names` order, so the codes do not depend on the chunking or the file order. A
    missing cell is :data:`MISSING`."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, s: pd.Series) -> np.ndarray:
        missing = _missing_cells(s)
        if isinstance(s.dtype, pd.CategoricalDtype):  # fast reader: factorize the categories only
            cat_local, uniques = pd.factorize(pd.Series(s.cat.categories.astype(str)).str.strip())
            local = cat_local[s.cat.codes.to_numpy()]
        else:
            local, uniques = pd.factorize(s.str.strip())
        for u in uniques:  # distinct values of the chunk only (a handful for pid)
            self.values.setdefault(u, len(self.values))
        to_global = np.array([self.values[u] for u in uniques], np.int64)
        return np.where(missing, MISSING, to_global[local] if len(uniques) else MISSING)

    def final(self, codes: np.ndarray) -> np.ndarray:
        names = sorted_names(self.values)
        rank = np.empty(max(len(names), 1), np.int64)
        rank[[self.values[n] for n in names]] = np.arange(len(names))
        return np.where(codes == MISSING, MISSING, rank[np.maximum(codes, 0)])


def local_day(ts: np.ndarray) -> np.ndarray:
    """Calendar day (days since 1970-01-01) of Unix times ``ts`` [n] in Beijing time (UTC+8)."""
    return (ts + UTC_OFFSET_S) // SECONDS_PER_DAY


# --------------------------------------------------------------------------- Tianchi's raw files

@_fast_then_exact
def read_samples(path: Path, engine: str = "exact") -> dict[str, np.ndarray]:
    """raw_sample.csv -> ``user``, ``time`` (Unix seconds), ``adgroup``, ``pid`` (rank of its text),
    ``clk`` (0/1): [N] int64 each, in file order. ``engine``: see :func:`read_chunks` (the decorator
    picks it). Raises :class:`DataError` naming the line and column of a bad value."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "time", "adgroup", "pid", "clk")}
    pid_codes = StringCodes()
    types = {"user": "int", "time_stamp": "int", "adgroup_id": "int", "clk": "int", "pid": "cat"}
    for line, c in read_chunks(path, SAMPLE_COLUMNS, types=types, engine=engine):
        parts["user"].append(int_column(c["user"], path, "user", line))
        parts["time"].append(int_column(c["time_stamp"], path, "time_stamp", line,
                                        what="a Unix time in whole seconds"))
        parts["adgroup"].append(int_column(c["adgroup_id"], path, "adgroup_id", line))
        parts["pid"].append(pid_codes.add(c["pid"]))
        clk = int_column(c["clk"], path, "clk", line, what="0 or 1")
        if ((clk != 0) & (clk != 1)).any():
            k = int(np.flatnonzero((clk != 0) & (clk != 1))[0])
            raise DataError(f"{path}: line {line + k}, column 'clk' is {_value(c['clk'], path, k)!r}; expected 0 or 1.")
        parts["clk"].append(clk)
    out: dict = {k: np.concatenate(v) for k, v in parts.items()}
    out["pid"] = pid_codes.final(out["pid"])
    return out


@_fast_then_exact
def read_ads(path: Path, engine: str = "exact") -> np.ndarray:
    """ad_feature.csv -> [A, 7] item attributes in :data:`ITEM_FIELDS` order (price bucketed by
    :data:`PRICE_EDGES`, btag = :data:`CANDIDATE_BTAG`). A missing brand (``NULL``) or price is
    :data:`MISSING`. Raises :class:`DataError` when an adgroup_id is listed twice."""
    rows = []
    types = {**{col: "int" for col in AD_COLUMNS}, "price": "float"}
    for line, c in read_chunks(path, AD_COLUMNS, types=types, engine=engine):
        price = float_column(c["price"], path, "price", line)
        bucket = np.where(np.isnan(price), MISSING, bucketize(np.nan_to_num(price), PRICE_EDGES))
        rows.append(np.stack([
            int_column(c["adgroup_id"], path, "adgroup_id", line),
            int_column(c["cate_id"], path, "cate_id", line, missing_ok=True),
            int_column(c["brand"], path, "brand", line, missing_ok=True),
            int_column(c["campaign_id"], path, "campaign_id", line, missing_ok=True),
            int_column(c["customer"], path, "customer", line, missing_ok=True),
            bucket, np.full(len(c), CANDIDATE_BTAG, np.int64)], 1))
    ads = np.concatenate(rows)
    ids, counts = np.unique(ads[:, 0], return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: column 'adgroup_id' lists {ids[counts > 1][0]} twice; expected one row per ad.")
    return ads


@_fast_then_exact
def read_profiles(path: Path, engine: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """user_profile.csv -> (userid [U] sorted, profile [U, 8] in :data:`PROFILE_FIELDS` order, missing =
    :data:`MISSING`). Raises :class:`DataError` when a userid is listed twice."""
    ids, fields = [], []
    for line, c in read_chunks(path, PROFILE_COLUMNS, types={col: "int" for col in PROFILE_COLUMNS}, engine=engine):
        ids.append(int_column(c["userid"], path, "userid", line))
        fields.append(np.stack([int_column(c[f], path, f, line, missing_ok=True) for f in PROFILE_FIELDS], 1))
    uid = np.concatenate(ids)
    u, counts = np.unique(uid, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: column 'userid' lists {u[counts > 1][0]} twice; expected one row per user.")
    order = np.argsort(uid, kind="stable")
    return uid[order], np.concatenate(fields)[order]


def _btag(s: pd.Series, path: Path, first_line: int) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):  # fast reader: map the few categories
        code = pd.Series(s.cat.categories.astype(str)).str.strip().str.lower().map(BTAG_CODES)
        if code.isna().any():
            raise _Refused(f"{path}: column 'btag' has a value other than {', '.join(BTAG_CODES)}")
        return code.to_numpy(np.int64)[s.cat.codes.to_numpy()]
    t = s.str.strip().str.lower()
    code = t.map(BTAG_CODES)
    if code.isna().any():
        k = int(np.flatnonzero(code.isna().to_numpy())[0])
        raise DataError(f"{path}: line {first_line + k}, column 'btag' is {s.iloc[k]!r}; expected one of "
                        f"{', '.join(BTAG_CODES)}.")
    return code.to_numpy(np.int64)


def trim_events(ev: dict[str, np.ndarray], users: np.ndarray, first_t: np.ndarray,
                max_len: int) -> dict[str, np.ndarray]:
    """The behaviour events sorted by (user, time, btag, cate, brand), keeping of each user's events
    before her first impression only the ``max_len`` most recent (no history can reach further).

    ev: user, time, btag, cate, brand [E]; users: sorted distinct users of raw_sample, first_t: [U]
    their first impression time. The order is total, so what is kept does not depend on how the
    log was chunked or ordered.
    """
    order = np.lexsort((ev["brand"], ev["cate"], ev["btag"], ev["time"], ev["user"]))
    ev = {k: v[order] for k, v in ev.items()}
    uidx = np.searchsorted(users, ev["user"])
    pre = ev["time"] < first_t[uidx]
    n_pre = np.bincount(uidx[pre], minlength=len(users))
    block_start = np.searchsorted(uidx, uidx, side="left")  # sorted by user: first event of the user
    rank = np.arange(len(uidx)) - block_start  # pre-first events come first within the user
    keep = ~pre | (rank >= n_pre[uidx] - max_len)
    return {k: v[keep] for k, v in ev.items()}


@_fast_then_exact
def read_behaviours(path: Path, users: np.ndarray, first_t: np.ndarray, last_t: np.ndarray,
                    max_len: int, chunk_rows: int | None = None, engine: str = "exact") -> dict[str, np.ndarray]:
    """behavior_log.csv, streamed in chunks: the events of ``users`` (sorted distinct users of
    raw_sample, with ``first_t`` / ``last_t`` [U] their first and last impression time) strictly
    before the user's last impression, trimmed by :func:`trim_events` whenever the kept events
    double. Every row is checked (user, time_stamp integers, btag one of :data:`BTAG_CODES`, cate an
    integer, brand an integer or missing). Returns user, time, btag, cate, brand [E] int64 sorted by
    (user, time, btag, cate, brand)."""
    keys = ("user", "time", "btag", "cate", "brand")
    kept: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    n_kept, n_read, next_trim = 0, 0, 4 * (chunk_rows or CHUNK_ROWS)
    types = {"user": "int", "time_stamp": "int", "cate": "int", "brand": "int", "btag": "cat"}
    for line, c in read_chunks(path, BEHAVIOUR_COLUMNS, chunk_rows=chunk_rows, types=types, engine=engine):
        user = int_column(c["user"], path, "user", line)
        time = int_column(c["time_stamp"], path, "time_stamp", line, what="a Unix time in whole seconds")
        btag = _btag(c["btag"], path, line)
        cate = int_column(c["cate"], path, "cate", line, missing_ok=True)
        brand = int_column(c["brand"], path, "brand", line, missing_ok=True)
        n_read += len(c)
        idx = np.minimum(np.searchsorted(users, user), len(users) - 1)
        keep = (users[idx] == user) & (time < last_t[idx])
        for k, v in zip(keys, (user, time, btag, cate, brand)):
            kept[k].append(v[keep])
        n_kept += int(keep.sum())
        if n_kept > next_trim:
            trimmed = trim_events({k: np.concatenate(v) for k, v in kept.items()}, users, first_t, max_len)
            kept = {k: [v] for k, v in trimmed.items()}
            n_kept = len(trimmed["user"])
            next_trim = max(next_trim, 2 * n_kept)
    events = trim_events({k: np.concatenate(v) for k, v in kept.items()}, users, first_t, max_len)
    log.info("%s: %d events read, %d kept for histories", path.name, n_read, len(events["user"]))
    return events


def tianchi_table(name: str, raw: RawFiles, params: ProtocolParams) -> SampleTable:
    """The samples, split and fields of ``taobao-ad`` from Tianchi's four raw files (module doc)."""
    paths = raw.paths
    s = read_samples(paths["samples"])
    day = local_day(s["time"])
    inside = (day >= FIRST_DAY) & (day <= TEST_DAY)
    if not inside.all():
        log.warning("%s: %d impressions outside 2017-05-06 .. 05-13 (UTC+8) dropped",
                    paths["samples"], int((~inside).sum()))
        s = {k: v[inside] for k, v in s.items()}
        day = day[inside]
    if len(day) == 0:
        raise DataError(f"{paths['samples']}: no impression between 2017-05-06 and 2017-05-13 (UTC+8); "
                        "expected Tianchi's raw_sample.csv (column time_stamp in Unix seconds).")
    order = np.lexsort((s["clk"], s["pid"], s["adgroup"], s["time"], s["user"]))
    s = {k: v[order] for k, v in s.items()}
    day = day[order]

    ads = read_ads(paths["ads"])
    known = np.isin(s["adgroup"], ads[:, 0])
    if not known.all():
        raise DataError(f"{paths['ads']}: column 'adgroup_id' has no row for ad {s['adgroup'][~known][0]} of "
                        f"{paths['samples'].name}; expected every ad of the impressions listed.")
    uid, profile = read_profiles(paths["users"])
    row = np.minimum(np.searchsorted(uid, s["user"]), len(uid) - 1)
    has_profile = uid[row] == s["user"]
    user_fields = np.where(has_profile[:, None], profile[row], MISSING)
    if not has_profile.all():
        log.info("%s: %d of %d impressions have no profile row (missing profile fields)",
                 paths["users"].name, int((~has_profile).sum()), len(has_profile))

    users, first_idx = np.unique(s["user"], return_index=True)  # s is sorted by (user, time)
    last_idx = np.append(first_idx[1:], len(s["user"])) - 1
    ev = read_behaviours(paths["behaviours"], users, s["time"][first_idx], s["time"][last_idx], params.max_len)
    n_ev = len(ev["user"])
    absent = np.full(n_ev, ABSENT, np.int64)
    event_attrs = np.stack([absent, ev["cate"], ev["brand"], absent, absent, absent, ev["btag"]], 1)

    local = s["time"] + UTC_OFFSET_S
    context = np.stack([s["pid"], local % SECONDS_PER_DAY // 3600, (local // SECONDS_PER_DAY + 3) % 7], 1)
    split = np.where(day == TEST_DAY, 2, np.where(day == VALID_DAY, 1, 0)).astype(np.int8)
    log.info("%s: %d impressions, %d users, %d ads, %d behaviour events", name, len(split), len(users),
             len(ads), n_ev)
    return SampleTable(
        name=name, item_fields=ITEM_FIELDS, user_fields=USER_FIELDS, context_fields=CONTEXT_FIELDS,
        item_attrs=ads, event_user=ev["user"], event_item=absent, event_time=ev["time"],
        user_key=s["user"], item=s["adgroup"], time=s["time"],
        user=np.column_stack([s["user"], user_fields]), context=context,
        label=s["clk"].astype(np.float32), split=split, event_attrs=event_attrs,
    )


# --------------------------------------------------------------------------- TaobaoAd_x1

def split_history(s: pd.Series, path: Path, column: str, first_line: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``^``-joined history column -> (lengths [n], values [sum(lengths)] int64, oldest first)."""
    t = s.str.strip()
    empty = (t == "").to_numpy()
    lengths = np.where(empty, 0, t.str.count(r"\^").to_numpy() + 1).astype(np.int64)
    tokens = t[~empty].str.split("^").explode()
    line_of = np.repeat(np.arange(len(t)), lengths)
    if len(tokens) == 0:
        return lengths, np.zeros(0, np.int64)
    missing = _missing_cells(tokens)
    num = pd.to_numeric(tokens.where(~missing), errors="coerce").to_numpy(np.float64)
    bad = np.isnan(num) | (np.mod(np.nan_to_num(num), 1) != 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {first_line + line_of[k]}, column {column!r} holds {tokens.iloc[k]!r}; "
                        "expected integers joined by '^'.")
    return lengths, num.astype(np.int64)


@_fast_then_exact
def read_x1_file(path: Path, engine: str = "exact") -> dict[str, np.ndarray]:
    """One TaobaoAd_x1 file -> per-sample arrays and its histories (:func:`x1_table`)."""
    keys = ("clk", "user", "ads", "profile", "hist_len", "cate", "brand", "btag", "cand_btag")
    parts: dict[str, list] = {k: [] for k in keys}
    pid_codes, price_codes = StringCodes(), StringCodes()
    pids, prices = [], []
    types = {**{col: "int" for col in ("clk", "userid", *X1_AD_COLUMNS, *PROFILE_FIELDS, "btag")},
             "pid": "cat", "price": "cat"}
    for line, c in read_chunks(path, X1_COLUMNS, optional=("btag_his", "btag"), types=types, engine=engine):
        clk = int_column(c["clk"], path, "clk", line, what="0 or 1")
        if ((clk != 0) & (clk != 1)).any():
            k = int(np.flatnonzero((clk != 0) & (clk != 1))[0])
            raise DataError(f"{path}: line {line + k}, column 'clk' is {_value(c['clk'], path, k)!r}; expected 0 or 1.")
        parts["clk"].append(clk)
        parts["user"].append(int_column(c["userid"], path, "userid", line))
        parts["ads"].append(np.stack([int_column(c[a], path, a, line, missing_ok=a != "adgroup_id")
                                      for a in X1_AD_COLUMNS], 1))
        parts["profile"].append(np.stack([int_column(c[f], path, f, line, missing_ok=True)
                                          for f in PROFILE_FIELDS], 1))
        pids.append(pid_codes.add(c["pid"]))
        prices.append(price_codes.add(c["price"]))
        n_cate, cate = split_history(c["cate_his"], path, "cate_his", line)
        n_brand, brand = split_history(c["brand_his"], path, "brand_his", line)
        if "btag_his" in c:
            n_btag, btag = split_history(c["btag_his"], path, "btag_his", line)
        else:
            n_btag, btag = n_cate, np.full(len(cate), ABSENT, np.int64)
        for col, n in (("brand_his", n_brand), ("btag_his", n_btag)):
            if (n != n_cate).any():
                k = int(np.flatnonzero(n != n_cate)[0])
                raise DataError(f"{path}: line {line + k}, column {col!r} has {n[k]} values and 'cate_his' "
                                f"{n_cate[k]}; expected one value per behaviour in each history column.")
        parts["hist_len"].append(n_cate)
        parts["cate"].append(cate)
        parts["brand"].append(brand)
        parts["btag"].append(btag)
        parts["cand_btag"].append(int_column(c["btag"], path, "btag", line) if "btag" in c
                                  else np.full(len(c), CANDIDATE_BTAG if "btag_his" in c else ABSENT, np.int64))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["has"] = tuple(col for col in ("btag_his", "btag") if col in c)
    out["pid_raw"], out["price_raw"] = np.concatenate(pids), np.concatenate(prices)
    out["pid_names"], out["price_names"] = pid_codes, price_codes
    return out


def _merge_codes(files: list[dict], key: str) -> list[np.ndarray]:
    """Codes of a categorical column over several files: the rank of the value among all files' values."""
    names = sorted_names(set().union(*(f[f"{key}_names"].values for f in files)))
    rank = {n: i for i, n in enumerate(names)}
    out = []
    for f in files:
        table = f[f"{key}_names"].values
        to_rank = np.empty(max(len(table), 1), np.int64)
        to_rank[list(table.values())] = [rank[n] for n in table]
        raw = f[f"{key}_raw"]
        out.append(np.where(raw == MISSING, MISSING, to_rank[np.maximum(raw, 0)]))
    return out


def x1_table(name: str, raw: RawFiles, params: ProtocolParams) -> SampleTable:
    """The samples, split and fields of ``taobao-ad`` from TaobaoAd_x1's train.csv and test.csv."""
    train, test = read_x1_file(raw.paths["train"]), read_x1_file(raw.paths["test"])
    if train["has"] != test["has"]:
        raise DataError(f"{raw.paths['test']}: has the optional columns {list(test['has'])}, train.csv "
                        f"{list(train['has'])}; expected the same columns in both files.")
    n_tr, n_te = len(train["clk"]), len(test["clk"])
    pid = np.concatenate(_merge_codes([train, test], "pid"))
    price = np.concatenate(_merge_codes([train, test], "price"))
    cat = {k: np.concatenate([train[k], test[k]]) for k in ("clk", "user", "ads", "profile", "hist_len",
                                                             "cate", "brand", "btag", "cand_btag")}
    n = n_tr + n_te
    n_valid = int(np.ceil(n_tr * X1_VALID_SHARE))
    split = np.zeros(n, np.int8)
    split[n_tr - n_valid:n_tr] = 1
    split[n_tr:] = 2

    # candidate items: one attribute row per adgroup_id, the same in every line
    item_rows = np.column_stack([cat["ads"], price, cat["cand_btag"]])  # in ITEM_FIELDS order
    distinct = np.unique(item_rows, axis=0)
    ids, counts = np.unique(distinct[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = ids[counts > 1][0]
        raise DataError(f"{raw.paths['train'].parent}: adgroup_id {bad} has two different rows of ad columns "
                        f"({', '.join(X1_AD_COLUMNS)}, price, btag) in train.csv/test.csv; expected one per ad.")

    # histories published per sample: one behaviour pool per sample (history_key), oldest first
    lens = cat["hist_len"]
    sample_of = np.repeat(np.arange(n, dtype=np.int64), lens)
    position = np.arange(len(sample_of)) - np.repeat(np.cumsum(lens) - lens, lens)
    absent = np.full(len(sample_of), ABSENT, np.int64)
    event_attrs = np.stack([absent, cat["cate"], cat["brand"], absent, absent, absent, cat["btag"]], 1)
    log.info("%s (TaobaoAd_x1): %d train (%d of them validation) + %d test rows, %d behaviours", name,
             n_tr, n_valid, n_te, len(sample_of))
    return SampleTable(
        name=name, item_fields=ITEM_FIELDS, user_fields=USER_FIELDS, context_fields=X1_CONTEXT_FIELDS,
        item_attrs=distinct, event_user=sample_of, event_item=absent, event_time=position,
        user_key=cat["user"], item=cat["ads"][:, 0], time=np.full(n, int(lens.max(initial=0)) + 1, np.int64),
        user=np.column_stack([cat["user"], cat["profile"]]), context=pid[:, None],
        label=cat["clk"].astype(np.float32), split=split, event_attrs=event_attrs,
        history_key=np.arange(n, dtype=np.int64),
    )


# --------------------------------------------------------------------------- protocol

def sample_table(name: str, raw: RawFiles, params: ProtocolParams, protocol: str = PROTOCOL) -> SampleTable:
    """``taobao-ad`` under ``taobao-ad-v1`` from either form (``raw.kind``); :class:`DataError` for
    another protocol or form."""
    if protocol != PROTOCOL:
        raise DataError(f"protocol {protocol!r}: expected {PROTOCOL} for {name}.")
    if raw.kind == "tianchi":
        return tianchi_table(name, raw, params)
    if raw.kind == "taobaoad-x1":
        return x1_table(name, raw, params)
    raise DataError(f"{name}: raw files of kind {raw.kind!r}; expected 'tianchi' or 'taobaoad-x1'.")
