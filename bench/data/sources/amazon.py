"""Amazon reviews: Beauty, Sports, Toys (S3-Rec copies), Books, Electronics -> :class:`SampleTable` (PROTOCOL 2.2-2.3).

Protocol ``amazon-ctr-v1`` (DIN/DIEN): for each user and each review position t >= 1 a positive
(item_t, y = 1) and one negative (an item the user never reviewed, uniform over all items of the
dataset, fixed data seed, y = 0), sharing the behaviour sequence and context. Leave-last-out split:
t = n-1 test, t = n-2 validation, the rest train. Item fields (item_id, category), user field
(user_id), context (gap, position; plus weekday where absolute dates exist: Books, Electronics).

Protocol ``amazon-ctr-v2``: v1 with the few negatives redrawn whose sample would be an exact
copy of another sample (same user, day, context and negative item: possible when two reviews of a
user share a day and their negatives collide); under v1, one train and one validation sample of
Beauty are copies of test samples.

Behaviour sequence: the protocol's items[0..t-1] restricted, by the global rule of PROTOCOL
section 1, to reviews made on an EARLIER DAY than review t (same-day reviews are ties, not
history). For the S3-Rec sets the review days are rebuilt from the per-step gaps of the time file
(cumulative sum; whole days).

Sources: the S3-Rec sets (``amazon-beauty``, ``amazon-sports``, ``amazon-toys``: one code path,
:data:`S3REC_SETS`) from ``--raw-dir`` or commit-pinned raw.githubusercontent.com files of the
same two repositories (sha256 checked either way); Books/Electronics from McAuley's
``reviews_<Cat>_5.json.gz`` and ``meta_<Cat>.json.gz`` (meta lines are Python dict literals) in
``--raw-dir``.
"""
from __future__ import annotations

import ast
import gzip
import itertools
import json
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.sources.common import (
    SECONDS_PER_DAY,
    DataError,
    DownloadUnavailable,
    RawFiles,
    bucketize,
    check_sha256,
    download,
    parse_int_lines,
    read_bytes,
    weekday_utc,
)
from bench.data.samples import ProtocolParams, SampleTable
from bench.data.store import narrow_int

log = logging.getLogger(__name__)

PROTOCOL_V1 = "amazon-ctr-v1"  # the negatives as drawn (1 train and 1 valid sample of Beauty copy test samples)
PROTOCOL_V2 = "amazon-ctr-v2"  # v1 with colliding negatives redrawn: the splits share no sample
PROTOCOLS = (PROTOCOL_V1, PROTOCOL_V2)
#: The protocol the Amazon datasets are prepared with: ``amazon-ctr-v2`` (the default: v1 with the
#: negatives redrawn that made one train and one validation sample of Beauty copies of test
#: samples, so the splits share no sample) or ``amazon-ctr-v1`` (the negatives as drawn; the Amazon
#: run records made before issue 13 are of it). docs/DATA.md, "Amazon".
PROTOCOL = PROTOCOL_V2
#: the datasets this reader serves: name -> protocol (written into every run record)
DATASETS: dict[str, str] = {name: PROTOCOL for name in (
    "amazon-beauty", "amazon-sports", "amazon-toys", "amazon-books", "amazon-electronics")}
#: protocols under which a sample found in two splits is a DataError (older ones: a warning)
DISJOINT_PROTOCOLS = frozenset({PROTOCOL_V2})
MISSING = -1  # raw code of a missing category (its own vocabulary entry)
GAP_DAY_EDGES = (1, 2, 8, 31, 181)  # 0, 1, 2-7, 8-30, 31-180, >180 days
POSITION_EDGES = (2, 3, 5, 9, 17)  # t = 1, 2, 3-4, 5-8, 9-16, 17+
MAX_NEGATIVE_ROUNDS = 100
DOWNLOAD_TIMEOUT_S = 60.0

ITEM_FIELDS = ("item_id", "category")
USER_FIELDS = ("user_id",)


@dataclass(frozen=True)
class PinnedFile:
    """A raw file published in a git repository at a fixed commit, with its sha256."""

    repo: str
    commit: str
    path: str
    sha256: str

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"


_S3REC = ("aHuiWang/CIKM2020-S3Rec", "49a890dcb516c9ed3126564495234ea74d5cd566")
_TIMEWEAVER = ("AraVio/TimeWeaver", "38b4ff7243b527a4b8843090ce080ca533a9e3c6")


def s3rec_files(stem: str, sequences: str, attributes: str, intervals: str) -> dict[str, tuple[str, PinnedFile]]:
    """role -> (local file name, pinned source) of the S3-Rec category ``stem`` (``Beauty``,
    ``Sports_and_Outdoors``, ...), given the sha256 of its three files.

    ``sequences``: S3-Rec ``data/<stem>.txt``; ``attributes``: S3-Rec ``data/<stem>_item2attributes.json``;
    ``intervals``: TimeWeaver ``data/<stem>.txt`` (the same lines plus per-step gaps), kept locally
    as ``<stem>_time_intervals.txt`` since its upstream name is the sequences file's.
    """
    return {
        "sequences": (f"{stem}.txt", PinnedFile(*_S3REC, f"data/{stem}.txt", sequences)),
        "attributes": (f"{stem}_item2attributes.json",
                       PinnedFile(*_S3REC, f"data/{stem}_item2attributes.json", attributes)),
        "intervals": (f"{stem}_time_intervals.txt", PinnedFile(*_TIMEWEAVER, f"data/{stem}.txt", intervals)),
    }


#: the Amazon categories of S3-Rec's data folder served here: dataset -> S3-Rec's file stem
S3REC_SETS: dict[str, str] = {"amazon-beauty": "Beauty", "amazon-sports": "Sports_and_Outdoors",
                              "amazon-toys": "Toys_and_Games"}
#: dataset -> sha256 of S3-Rec's sequences and attributes files and of TimeWeaver's gap file
#: (Beauty: SOURCES.md; Sports and Toys: issue 16)
_S3REC_SHA256: dict[str, tuple[str, str, str]] = {
    "amazon-beauty": ("226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
                      "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
                      "ace27f3acb2528e9b7cfb8e5c459070f5888cfc3edab4cd219e595c5be1c87b8"),
    "amazon-sports": ("2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
                      "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b",
                      "ddb1aa29e0934a3e7230022b8361785e7518e760180c492579c3c506b6bb5bfb"),
    "amazon-toys": ("176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f",
                    "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0",
                    "43325e20ba6257feda220e3577cd619ff3d15fac1a6798fc3b3cc31e3d85f3be"),
}
#: dataset -> role -> (local file name, source); read at call time so tests can substitute tiny copies
S3REC_FILES: dict[str, dict[str, tuple[str, PinnedFile]]] = {
    name: s3rec_files(stem, *_S3REC_SHA256[name]) for name, stem in S3REC_SETS.items()}
MCAULEY_CATEGORIES = {"amazon-books": "Books", "amazon-electronics": "Electronics"}


@dataclass(frozen=True)
class Reviews:
    """Reviews of one Amazon set, grouped by user in review order.

    user, item, day: [R] int64 raw user key, raw item id, review day (days; only differences and
    order matter). unix_time: [R] seconds since the epoch, or None when absolute dates are unknown.
    item_ids, categories: [I] every item of the set and its raw category code (-1 missing).
    """

    user: np.ndarray
    item: np.ndarray
    day: np.ndarray
    unix_time: np.ndarray | None
    item_ids: np.ndarray
    categories: np.ndarray


# --------------------------------------------------------------------------- acquiring raw files

def mcauley_names(name: str) -> dict[str, str]:
    cat = MCAULEY_CATEGORIES[name]
    return {"reviews": f"reviews_{cat}_5.json.gz", "meta": f"meta_{cat}.json.gz"}


def acquire(name: str, raw_dir: Path | None, download_dir: Path) -> RawFiles:
    """The raw files of ``name`` from ``raw_dir``, else ``download_dir`` (downloading an S3-Rec
    set's files there: :func:`acquire_s3rec`).

    S3-Rec files are sha256-checked wherever they come from; McAuley's need ``raw_dir``. Raises
    :class:`DataError` naming the file and what was expected.
    """
    folder = Path(raw_dir if raw_dir is not None else download_dir)
    if name in MCAULEY_CATEGORIES:
        paths = {role: folder / f for role, f in mcauley_names(name).items()}
        missing = [p for p in paths.values() if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: file not found; {name} needs --raw-dir holding "
                            f"{' and '.join(mcauley_names(name).values())} (McAuley 5-core).")
        return RawFiles("mcauley-5core", paths)
    return acquire_s3rec(name, raw_dir, folder)


def acquire_s3rec(name: str, raw_dir: Path | None, folder: Path) -> RawFiles:
    """The three files of the S3-Rec set ``name`` (:data:`S3REC_FILES`) in ``folder``; when
    ``raw_dir`` is None the missing ones are downloaded there from their commit-pinned URLs.

    Every file's sha256 is checked against its pin, found or downloaded. Raises
    :class:`DataError`: a file missing from ``--raw-dir``, a wrong sha256, an unreachable host.
    """
    files = S3REC_FILES[name]
    stem = S3REC_SETS[name]
    local = ", ".join(f for f, _ in files.values())
    paths, downloaded = {}, False
    for role, (fname, src) in files.items():
        path = folder / fname
        if not path.is_file():
            if raw_dir is not None:
                raise DataError(f"{path}: file not found; expected the S3-Rec {stem} files {local} in --raw-dir.")
            try:
                download(src.url, path, timeout=DOWNLOAD_TIMEOUT_S, sha256=src.sha256)
            except DownloadUnavailable as e:
                raise DataError(f"{e} Pass --raw-dir with the files listed in docs/DATA.md ({local}).") from e
            downloaded = True
        else:
            check_sha256(path, src.sha256)
        paths[role] = path
    sums = {role: src.sha256 for role, (_, src) in files.items()}
    # the layout name is part of the cache key: Beauty's stays "s3rec-beauty"
    return RawFiles(f"s3rec-{name.removeprefix('amazon-')}", paths, downloaded=downloaded, sha256=sums)


# --------------------------------------------------------------------------- reading

def read_s3rec(raw: RawFiles) -> Reviews:
    """Sequences, per-step gaps and item attributes of an S3-Rec set (Beauty, Sports, Toys),
    vectorised parsing.

    ``raw.paths``: ``sequences`` (``user item_1 ... item_n`` per line), ``intervals`` (the same
    line, a TAB, n gaps in seconds, the first 0) and ``attributes`` (JSON item -> attribute ids).
    Returns :class:`Reviews` with R = total items of all lines: review day = cumulative gap in whole
    days; category = the item's last attribute id (-1: no entry or an empty list); no absolute
    time. Raises :class:`DataError` naming the file for a line layout, gap or JSON that differs.
    """
    seq_path, gap_path, attr_path = (raw.paths[r] for r in ("sequences", "intervals", "attributes"))
    values, counts = parse_int_lines(read_bytes(seq_path), seq_path)
    if len(counts) == 0 or (counts < 2).any():
        raise DataError(f"{seq_path}: expected lines 'user item_1 ... item_n' with n >= 1.")
    line_start = np.cumsum(counts) - counts
    is_item = np.ones(len(values), bool)
    is_item[line_start] = False
    if len(np.unique(values[line_start])) != len(counts):
        raise DataError(f"{seq_path}: a user has two lines; expected one line per user.")
    user = np.repeat(values[line_start], counts - 1)
    item = values[is_item]

    tvalues, tcounts = parse_int_lines(read_bytes(gap_path), gap_path, tab_split=True)
    if tcounts.shape[0] != len(counts) or not (tcounts[:, 0] == counts).all() \
            or not (tcounts[:, 1] == counts - 1).all():
        raise DataError(f"{gap_path}: expected one line per line of {seq_path.name} with the same "
                        "'user item_1 ... item_n', a TAB and n gaps.")
    token_seg = np.repeat(np.arange(tcounts.size), tcounts.ravel())
    after_tab = token_seg % 2 == 1
    if not (tvalues[~after_tab] == values).all():
        raise DataError(f"{gap_path}: its user/item lists differ from {seq_path}; expected the same lines.")
    gaps = tvalues[after_tab]
    first_in_gaps = np.cumsum(counts - 1) - (counts - 1)  # first gap of each line
    if (gaps < 0).any() or (gaps[first_in_gaps] != 0).any():
        raise DataError(f"{gap_path}: expected non-negative gaps in seconds, the first of each line 0.")
    # review day = cumulative gap within the user's line, in whole days
    cum = np.cumsum(gaps)
    cum = cum - np.repeat(cum[first_in_gaps] - gaps[first_in_gaps], counts - 1)
    day = cum // SECONDS_PER_DAY

    try:
        attrs = json.loads(read_bytes(attr_path))
        keys = np.fromiter(map(int, attrs.keys()), np.int64, len(attrs))
        lens = np.fromiter(map(len, attrs.values()), np.int64, len(attrs))
        flat = np.fromiter(itertools.chain.from_iterable(attrs.values()), np.int64, int(lens.sum()))
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{attr_path}: expected a JSON object item id -> list of attribute ids ({e}).") from e
    last = np.full(len(keys), MISSING, np.int64)  # category = last attribute id
    last[lens > 0] = flat[np.cumsum(lens)[lens > 0] - 1]
    item_ids = np.unique(item)
    cat_of = pd.Series(last, index=keys)
    categories = cat_of.reindex(item_ids).fillna(MISSING).astype(np.int64).to_numpy()
    return Reviews(user, item, day, None, item_ids, categories)


_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")
_FIRST_CATEGORY_PATH = r"""['"]categories['"]\s*:\s*\[\s*(\[.*?\])"""


def _last_entry(path_literal: str) -> str | None:
    try:
        entries = ast.literal_eval(path_literal)
    except (ValueError, SyntaxError):
        return None
    return str(entries[-1]) if isinstance(entries, list) and entries else None


def read_mcauley(raw: RawFiles, chunk_lines: int = 100_000) -> Reviews:
    """McAuley 5-core reviews (strict JSON lines) and metadata (Python dict literals), gzipped.

    Reviews are ordered by (reviewerID, unixReviewTime, asin); a repeated (user, item) review keeps
    its first occurrence. The category is the last entry of the item's first ``categories`` path.
    Both files are read in chunks of ``chunk_lines`` lines; of each review chunk only integer codes
    are kept (its distinct reviewerIDs and asins, and per review their positions among them: int32
    and the int64 time), so the reviews' strings never sit whole in memory; the codes are mapped to
    the ranks of the sorted distinct ids of the whole file at the end.
    """
    rpath, mpath = raw.paths["reviews"], raw.paths["meta"]
    cols = ["reviewerID", "asin", "unixReviewTime"]
    names = {"reviewerID": [], "asin": []}
    codes = {"reviewerID": [], "asin": []}
    times = []
    try:
        with pd.read_json(rpath, lines=True, chunksize=chunk_lines, compression="gzip",
                          dtype=False) as reader:
            for chunk in reader:
                missing = [c for c in cols if c not in chunk.columns]
                if missing:
                    raise DataError(f"{rpath}: reviews lack {missing}; expected fields {cols}.")
                if chunk[cols].isna().any().any():
                    raise DataError(f"{rpath}: expected reviews with {cols} on every line.")
                ts = pd.to_numeric(chunk.unixReviewTime, errors="coerce")
                if ts.isna().any():
                    raise DataError(f"{rpath}: unixReviewTime must be an integer on every line.")
                times.append(ts.to_numpy(np.int64))
                for c in names:
                    uniq, inv = np.unique(chunk[c].astype(str).to_numpy(), return_inverse=True)
                    names[c].append(uniq)
                    codes[c].append(inv.astype(np.int32))
                del chunk
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{rpath}: not gzipped JSON lines of reviews ({type(e).__name__}: {e}).") from e
    if not times or sum(len(t) for t in times) == 0:
        raise DataError(f"{rpath}: expected reviews with {cols} on every line.")
    n_reviews = sum(len(t) for t in times)

    def global_codes(c: str) -> tuple[np.ndarray, np.ndarray]:
        """The sorted distinct ids of column ``c`` and each review's rank among them."""
        every = np.unique(np.concatenate(names[c]))
        return every, np.concatenate([np.searchsorted(every, u)[inv] for u, inv in zip(names[c], codes[c])])

    user_names, user = global_codes("reviewerID")
    asins, item = global_codes("asin")
    unix_time = np.concatenate(times)
    del names, codes, times
    order = np.lexsort((item, unix_time, user))  # codes follow sorted ids: ties broken by asin
    user, item, unix_time = user[order], item[order], unix_time[order]

    wanted = pd.Index(asins)
    found_asin, found_cat = [], []
    try:
        with gzip.open(mpath, "rt", encoding="utf-8") as f:
            while lines := list(itertools.islice(f, chunk_lines)):
                s = pd.Series(lines)
                asin = s.str.extract(_ASIN, expand=False)
                keep = asin.isin(wanted)
                paths = s[keep].str.extract(_FIRST_CATEGORY_PATH, expand=False)
                found_asin.append(asin[keep].to_numpy())
                found_cat.append(paths.map(_last_entry, na_action="ignore").to_numpy())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{mpath}: not a readable gzipped metadata file ({type(e).__name__}: {e}).") from e
    if not found_asin or sum(len(a) for a in found_asin) == 0:
        raise DataError(f"{mpath}: no line has an 'asin' of the reviewed items; expected McAuley metadata.")
    meta = pd.Series(np.concatenate(found_cat), index=np.concatenate(found_asin))
    meta = meta[~meta.index.duplicated()]
    cat_names = meta.reindex(asins)
    known = cat_names.notna().to_numpy()
    categories = np.full(len(asins), MISSING, np.int64)
    categories[known] = np.unique(cat_names[known].astype(str).to_numpy(), return_inverse=True)[1]
    log.info("%s: %d reviews, %d users, %d items, %d without category",
             rpath.name, n_reviews, len(user_names), len(asins), int((~known).sum()))
    return Reviews(user.astype(np.int64), item.astype(np.int64), unix_time // SECONDS_PER_DAY,
                   unix_time, np.arange(len(asins), dtype=np.int64), categories)


# --------------------------------------------------------------------------- protocol

def sample_table(name: str, raw: RawFiles, params: ProtocolParams, protocol: str = PROTOCOL) -> SampleTable:
    """The Amazon protocol (PROTOCOL 2.2) on the raw files of an S3-Rec set (Beauty, Sports, Toys),
    Books or Electronics.

    ``protocol``: ``amazon-ctr-v1`` (negatives as drawn) or ``amazon-ctr-v2`` (v1 with the
    negatives that would make a sample a copy of another one redrawn: :func:`redraw_duplicate_negatives`).
    Raises :class:`DataError` for another protocol name.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)} for {name}.")
    reviews = read_s3rec(raw) if name in S3REC_SETS else read_mcauley(raw)
    return amazon_table(name, reviews, params.data_seed, disjoint=protocol == PROTOCOL_V2)


def sample_negatives(user: np.ndarray, reviewed_keys: np.ndarray, n_items: int,
                     rng: np.random.Generator) -> np.ndarray:
    """One item code per entry of ``user`` that the user never reviewed, uniform over [0, n_items).

    ``reviewed_keys`` are the sorted keys user * n_items + item of every review. Rejection by
    rounds: all draws at once, then only the rejected ones redrawn (at most
    ``MAX_NEGATIVE_ROUNDS`` rounds, else :class:`DataError`).
    """
    neg = rng.integers(0, n_items, len(user))
    todo = np.arange(len(user))
    for _ in range(MAX_NEGATIVE_ROUNDS):
        keys = user[todo] * n_items + neg[todo]
        pos = np.minimum(np.searchsorted(reviewed_keys, keys), len(reviewed_keys) - 1)
        todo = todo[reviewed_keys[pos] == keys]
        if todo.size == 0:
            return neg
        neg[todo] = rng.integers(0, n_items, todo.size)
    raise DataError(f"negative sampling: {todo.size} samples found no unreviewed item in "
                    f"{MAX_NEGATIVE_ROUNDS} rounds; expected users to leave most items unreviewed.")


def repeats_earlier(keys: np.ndarray, item: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """bool [M]: the rows whose (``keys`` [M, C] row, ``item`` [M]) equal those of a row of smaller
    ``rank`` [M] (distinct ranks): ``DataFrame(keys).assign(item=item)`` ordered by rank,
    ``duplicated(keep="first")``, without the frame's copies. One lexsort (rank last, so each
    group of equal rows is in rank order) and adjacent comparisons."""
    perm = np.lexsort((rank, item, *keys.T[::-1]))
    same = item[perm[1:]] == item[perm[:-1]]
    for c in range(keys.shape[1]):
        same &= keys[perm[1:], c] == keys[perm[:-1], c]
    dup = np.zeros(len(item), bool)
    dup[perm[1:][same]] = True
    return dup


def redraw_duplicate_negatives(keys: np.ndarray, split: np.ndarray, negative: np.ndarray, user: np.ndarray,
                               reviewed_keys: np.ndarray, n_items: int,
                               rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Negatives [M] (item codes) such that no two negative samples are equal; only colliding ones change.

    ``keys`` [M, C]: what else makes the negative sample (user code, sample day = the history,
    context fields; :func:`amazon_table` passes them coded exactly as two columns, the (user, day)
    group and the context); two negatives with equal keys and equal item are the same sample. Of such a
    group one row keeps its item: the one in the latest split (test, then valid, then train), the
    first in sample order within a split, so v1's test split is kept whenever it can be; the
    others get a new unreviewed item from ``rng`` (:func:`sample_negatives`), in rounds until no
    row repeats a kept one (at most ``MAX_NEGATIVE_ROUNDS``, else :class:`DataError`).
    Returns the negatives and how many rows were redrawn. Vectorised (one lexsort per round,
    :func:`repeats_earlier`).

    Only rows whose first two key columns are shared with another row can repeat one,
    so the rounds run on those rows alone (in their order: the same duplicates, the same draws from
    ``rng``, the same result as on all rows), which bounds the memory the hashing needs.
    """
    pair = np.lexsort((keys[:, 1], keys[:, 0]))
    same = (keys[pair[1:], 0] == keys[pair[:-1], 0]) & (keys[pair[1:], 1] == keys[pair[:-1], 1])
    shared = np.zeros(len(negative), bool)
    shared[pair[1:][same]] = True
    shared[pair[:-1][same]] = True
    del pair, same
    sub = np.flatnonzero(shared)
    if sub.size < len(negative):
        out = negative.copy()
        out[sub], n = redraw_duplicate_negatives(keys[sub], split[sub], negative[sub], user[sub], reviewed_keys,
                                                 n_items, rng) if sub.size else (negative[sub], 0)
        return out, n
    negative = negative.copy()
    redrawn = np.zeros(len(negative), bool)
    for _ in range(MAX_NEGATIVE_ROUNDS):
        # kept first: never-redrawn rows, then the latest split, then sample order
        order = np.lexsort((np.arange(len(negative)), -split.astype(np.int64), redrawn))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        dup = repeats_earlier(keys, negative, rank)
        if not dup.any():
            return negative, int(redrawn.sum())
        negative[dup] = sample_negatives(user[dup], reviewed_keys, n_items, rng)
        redrawn |= dup
    raise DataError(f"negative sampling ({PROTOCOL_V2}): {int(dup.sum())} negatives still repeat another sample "
                    f"after {MAX_NEGATIVE_ROUNDS} rounds; expected users to leave most items unreviewed.")


def amazon_table(name: str, r: Reviews, data_seed: int, disjoint: bool = False) -> SampleTable:
    """Samples, negatives, split and fields of PROTOCOL 2.2 from reviews (vectorised).

    ``disjoint`` (protocol ``amazon-ctr-v2``): after the v1 draw, the negatives that would make a
    sample an exact copy of another sample are redrawn from a second generator seeded by
    (``data_seed``, 2); every other sample is the same as under v1.
    """
    order = np.lexsort((np.arange(len(r.user)), r.day, r.user))  # keeps the given order on ties
    user, item, day = r.user[order], r.item[order], r.day[order]
    unix_time = r.unix_time[order] if r.unix_time is not None else None
    keep = ~pd.DataFrame({"u": user, "i": item}).duplicated().to_numpy()  # drop repeated (user, item)
    user, item, day = user[keep], item[keep], day[keep]
    unix_time = unix_time[keep] if unix_time is not None else None

    n_rev = len(user)
    new_user = np.concatenate(([True], user[1:] != user[:-1]))
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n_rev), 0))
    t = np.arange(n_rev) - user_start  # position of each review in its user's sequence
    n_of_user = np.diff(np.append(np.flatnonzero(new_user), n_rev))
    n = np.repeat(n_of_user, n_of_user)

    rows = np.flatnonzero(t >= 1)  # one positive + one negative per review at position t >= 1
    split = np.where(t[rows] == n[rows] - 1, 2, np.where(t[rows] == n[rows] - 2, 1, 0)).astype(np.int8)
    gap = bucketize(day[rows] - day[rows - 1], GAP_DAY_EDGES)
    context = [gap, bucketize(t[rows], POSITION_EDGES)]
    context_fields = ["gap", "position"]
    if unix_time is not None:
        context.append(weekday_utc(unix_time[rows]))
        context_fields.append("weekday")

    item_ids = r.item_ids  # negatives are drawn uniformly over every item of the set
    item_code = np.searchsorted(item_ids, item)
    user_ids, user_code = np.unique(user, return_inverse=True)
    reviewed = np.unique(user_code.astype(np.int64) * len(item_ids) + item_code)
    rng = np.random.default_rng(data_seed)
    neg_user = user_code[rows].astype(np.int64)
    neg_code = sample_negatives(neg_user, reviewed, len(item_ids), rng)
    if disjoint:  # what makes a negative sample besides its item: user, day (= the history), context
        r_user, r_day = user[rows], day[rows]
        group = np.cumsum(np.concatenate(([True], (r_user[1:] != r_user[:-1]) | (r_day[1:] != r_day[:-1]))))
        del r_user, r_day  # rows are in (user, day) order: one group id per (user, day), exactly
        ctx_code = np.zeros(len(rows), np.int64)
        for c in context:  # mixed radix over the small bucket codes: equal codes <=> equal contexts
            ctx_code = ctx_code * (int(c.max()) + 1) + c
        keys = np.column_stack([group, ctx_code])
        del group, ctx_code
        neg_code, n_redrawn = redraw_duplicate_negatives(keys, split, neg_code, neg_user, reviewed, len(item_ids),
                                                         np.random.default_rng([data_seed, 2]))
        log.info("%s (%s): %d negatives redrawn so that no sample repeats another", name, PROTOCOL_V2, n_redrawn)
    negative = item_ids[neg_code]

    def twice(a: np.ndarray) -> np.ndarray:  # positive then negative of each review, adjacent
        return np.repeat(a, 2, axis=0)

    cand = np.stack([item[rows], negative], 1).reshape(-1)
    # int32 where the codes fit (issue 16: the table is the largest thing prepare holds)
    event_user = narrow_int(user)
    user_key = twice(event_user[rows])
    label = np.tile(np.array([1.0, 0.0], np.float32), len(rows))
    log.info("%s: %d reviews, %d users, %d items -> %d samples", name, n_rev, len(user_ids),
             len(item_ids), len(cand))
    return SampleTable(
        name=name,
        item_fields=ITEM_FIELDS,
        user_fields=USER_FIELDS,
        context_fields=tuple(context_fields),
        item_attrs=np.stack([item_ids, r.categories], 1).astype(np.int64),
        event_user=event_user, event_item=narrow_int(item), event_time=narrow_int(day),
        user_key=user_key, item=narrow_int(cand), time=twice(narrow_int(day[rows])),
        user=user_key[:, None], context=twice(narrow_int(np.stack(context, 1))),
        label=label, split=twice(split),
    )
