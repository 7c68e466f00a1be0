"""Synthetic Amazon reviews in McAuley's raw 5-core format, at any size, for ``bench --scale``.

    write_mcauley_synthetic(folder, SyntheticSpec(n_reviews=1_000_000, seed=0))
    # -> folder/reviews_Books_5.json.gz (strict JSON lines) + folder/meta_Books.json.gz (Python dict literals)

The files are what :func:`bench.data.sources.amazon.read_mcauley` reads for ``amazon-books``, with
the fields of the real files (reviewerID, asin, reviewerName, helpful, reviewText, overall,
summary, unixReviewTime, reviewTime; meta: asin, title, price, imUrl, salesRank, categories) and
the shape of 5-core data:

- exactly ``n_reviews`` reviews, no (user, item) pair twice, every user and every item with at
  least ``min_count`` (5) reviews;
- user activity heavy-tailed: ``min_count`` plus a multinomial share of the rest with Pareto
  (shape ``user_tail``) weights, at most half the items per user;
- item popularity Zipf: weights ``rank^-zipf_s`` over a random ranking of the items, at most a
  quarter of the users per item;
- the pairs by the configuration model (every item repeated by its count, shuffled, dealt to the
  users by their counts), repeated pairs then removed by swapping items between random slots of
  the same block of users (both degree sequences unchanged);
- review days: each user starts on a uniform day of 1997-2013 and moves on by gaps that are 0
  (same day) with probability ``same_day`` and else geometric with mean ``gap_days``;
  ``unixReviewTime`` is midnight UTC of the day, as in the real files;
- lines in asin order (as McAuley's files), each item's reviews by (reviewer, time);
- meta: a line per reviewed item except a share ``missing_meta`` of them, plus ``meta_extra``
  times as many unreviewed items (the real meta files list every item of the category); the first
  ``categories`` path is [category, genre, leaf] with Zipf-popular leaves, some items have a second.

Vectorised and streamed: the per-review arrays are numpy (item int32, day int32, the int64
asin-order permutation: under 50 bytes per review at the peak), and the text is assembled ``chunk_lines`` lines at a time as
bytes from index arithmetic (no Python object per review) and gzip-compressed as it goes. Seeded:
the same spec gives the same bytes (gzip header without name or time, fixed level). Each file is
written to a temporary name and renamed when complete, so an interrupt leaves no half file.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

SECONDS_PER_DAY = 86_400
FIRST_DAY = 9_862  # 1997-01-01
LAST_START_DAY = 16_071  # 2014-01-01: the last day a user may start on
LAST_DAY = 16_274  # 2014-07-23, the end of McAuley's 2014 crawl
MAX_SWAP_ROUNDS = 200
#: the words review texts and summaries are cut from (JSON- and Python-literal-safe: no quote, no backslash)
_WORDS = (
    "this book was a pleasure to read and i would recommend it to anyone who likes a good story "
    "the characters are well drawn the plot moves quickly and the ending was not what i expected "
    "some chapters felt slow but the writing is clear and the research behind it shows on every page "
    "it arrived on time in good condition and the price was fair for what you get "
    "my daughter loved it and asked for the next one in the series right away "
    "not the best in the genre but a solid effort with a few memorable scenes and honest dialogue "
)


_SECOND_PATH = np.frombuffer(b", ['Kindle Store', 'Other']", np.uint8)


class SyntheticError(ValueError):
    """A spec that cannot give 5-core data (too few reviews for the counts asked), or a failed write."""


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the same spec gives the same bytes.

    n_reviews: reviews in the file (exactly). seed: numpy generator seed. category: McAuley's
    category name in the file names and the first path entry. reviews_per_user / reviews_per_item:
    the means that set the numbers of users (n_reviews / reviews_per_user) and items (Amazon Books
    5-core: about 14.7 and 24). min_count: the 5-core floor. zipf_s: item popularity exponent.
    user_tail: Pareto shape of the user activity weights. same_day / gap_days: review-day gaps.
    text_median / text_sigma: log-normal length (characters) of reviewText, capped at text_max.
    missing_meta: share of reviewed items without a meta line; meta_extra: unreviewed meta lines per
    reviewed item. chunk_lines: lines assembled and compressed at a time. gzip_level: zlib level.
    """

    n_reviews: int
    seed: int = 0
    category: str = "Books"
    reviews_per_user: float = 12.0
    reviews_per_item: float = 24.0
    min_count: int = 5
    zipf_s: float = 0.8
    user_tail: float = 1.6
    same_day: float = 0.35
    gap_days: float = 60.0
    text_median: int = 250
    text_sigma: float = 0.9
    text_max: int = 5_000
    missing_meta: float = 0.01
    meta_extra: float = 1.0
    chunk_lines: int = 20_000
    gzip_level: int = 1

    def counts(self) -> tuple[int, int]:
        """(users, items) of this spec. Raises :class:`SyntheticError` when 5-core data of this
        size is impossible (fewer than ``min_count`` reviews per user or item on average)."""
        n_users = int(self.n_reviews // self.reviews_per_user)
        n_items = int(self.n_reviews // self.reviews_per_item)
        floor = self.min_count
        if n_users < 2 * floor or n_items < 2 * floor or self.reviews_per_user < floor or self.reviews_per_item < floor:
            raise SyntheticError(
                f"{self.n_reviews} reviews give {n_users} users and {n_items} items; expected at least "
                f"{2 * floor} of each with >= {floor} reviews each (use at least "
                f"{int(2 * floor * max(self.reviews_per_user, self.reviews_per_item))} reviews).")
        return n_users, n_items


@dataclass(frozen=True)
class Written:
    """What :func:`write_mcauley_synthetic` wrote: paths, sizes, counts and seconds."""

    reviews_path: Path
    meta_path: Path
    n_reviews: int
    n_users: int
    n_items: int
    n_meta: int
    reviews_bytes: int
    meta_bytes: int
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reviews_path"], d["meta_path"] = str(self.reviews_path), str(self.meta_path)
        return d


# --------------------------------------------------------------------------- degrees and pairs

def degrees(total: int, weights: np.ndarray, floor: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Counts [n] (int64) with sum ``total``, each in [floor, cap]: ``floor`` each plus a
    multinomial share of the rest with probabilities proportional to ``weights`` [n]; counts above
    ``cap`` are cut and their surplus dealt again among the others (vectorised rounds). Raises
    :class:`SyntheticError` when ``floor * n > total`` or ``cap * n < total``."""
    n = len(weights)
    if floor * n > total or cap * n < total:
        raise SyntheticError(f"cannot deal {total} reviews to {n} with {floor} to {cap} each")
    counts = np.full(n, floor, np.int64)
    rest = total - floor * n
    open_ = np.ones(n, bool)
    while rest > 0:
        p = np.where(open_, weights, 0.0)
        counts += rng.multinomial(rest, p / p.sum())
        over = counts > cap
        rest = int((counts[over] - cap).sum())
        counts[over] = cap
        open_ &= counts < cap
    return counts


def assign_items(user_counts: np.ndarray, item_counts: np.ndarray, rng: np.random.Generator,
                 block_slots: int = 1 << 20) -> np.ndarray:
    """Item codes [R] (int32) for the review slots of users in order (user u owns the next
    ``user_counts[u]`` slots), item i used ``item_counts[i]`` times, no item twice for a user.

    Configuration model: the repeated item codes shuffled; then, within blocks of whole users of at
    least ``block_slots`` slots (and 64 times the largest user), each repeated (user, item) slot
    swaps its item with a random slot of the block, in rounds until none repeats. Swaps keep both
    degree sequences. Raises :class:`SyntheticError` after :data:`MAX_SWAP_ROUNDS` rounds."""
    items = np.repeat(np.arange(len(item_counts), dtype=np.int32), item_counts)
    rng.shuffle(items)
    ends = np.cumsum(user_counts)
    block = max(block_slots, 64 * int(user_counts.max()))
    n_items = np.int64(len(item_counts))
    start_user = 0
    while start_user < len(user_counts):
        start = int(ends[start_user - 1]) if start_user else 0
        stop_user = int(np.searchsorted(ends, start + block, side="left")) + 1
        stop_user = min(stop_user, len(user_counts))
        stop = int(ends[stop_user - 1])
        owner = np.repeat(np.arange(stop_user - start_user, dtype=np.int64), user_counts[start_user:stop_user])
        part = items[start:stop]  # a view: swaps write through
        for _ in range(MAX_SWAP_ROUNDS):
            keys = owner * n_items + part
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            dup = order[1:][sk[1:] == sk[:-1]]
            if dup.size == 0:
                break
            # the repeated slots and as many random ones deal their items again among themselves:
            # a permutation of values between positions, so every item keeps its count
            pos = np.unique(np.concatenate([dup, rng.integers(0, len(part), dup.size)]))
            part[pos] = part[pos][rng.permutation(len(pos))]
        else:
            raise SyntheticError(f"could not remove repeated (user, item) pairs in {MAX_SWAP_ROUNDS} rounds; "
                                 "expected a less skewed spec")
        start_user = stop_user
    return items


def review_days(user_counts: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Review days [R] (int32, days since 1970-01-01) in slot order, ascending within each user."""
    n = int(user_counts.sum())
    gap = np.where(rng.random(n) < spec.same_day, 0, rng.geometric(1.0 / spec.gap_days, n)).astype(np.int64)
    first = np.cumsum(user_counts) - user_counts
    gap[first] = rng.integers(FIRST_DAY, LAST_START_DAY, len(user_counts))  # each user's first day
    day = np.cumsum(gap)
    day -= np.repeat(day[first] - gap[first], user_counts)  # restart the running sum per user
    return np.minimum(day, LAST_DAY).astype(np.int32)


# --------------------------------------------------------------------------- byte assembly

@dataclass(frozen=True)
class _Slice:
    """Per line, ``length`` bytes of ``base`` from ``start`` (both [m])."""

    base: np.ndarray
    start: np.ndarray
    length: np.ndarray


def ascii_int(values: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digits of non-negative ``values`` [m]: (uint8 matrix [m, W] left-aligned, lengths
    [m]); with ``width`` zero-padded to exactly that width."""
    v = np.asarray(values, np.int64)
    if width is None:
        w = max(1, len(str(int(v.max())))) if v.size else 1
        n = np.ones(len(v), np.int64)
        for k in range(1, w):
            n += v >= 10 ** k
    else:
        w, n = width, np.full(len(v), width, np.int64)
    power = np.maximum(n[:, None] - 1 - np.arange(w), 0)
    digits = (v[:, None] // (10 ** power)) % 10 + 48
    return digits.astype(np.uint8), n


def _text(s: str) -> tuple[np.ndarray, np.ndarray]:
    """One constant as a [1, w] matrix part."""
    b = np.frombuffer(s.encode("ascii"), np.uint8)
    return b[None, :], None


def assemble(m: int, parts: Sequence) -> bytes:
    """``m`` lines, each the concatenation of ``parts``: a str (the same for every line), a
    (uint8 matrix [m or 1, W], lengths [m] or None) pair (row k's first lengths[k] bytes), or a
    :class:`_Slice`. Index arithmetic only: no Python loop over lines."""
    lens = []
    for part in parts:
        if isinstance(part, str):
            part = _text(part)
        if isinstance(part, _Slice):
            lens.append(np.asarray(part.length, np.int64))
        else:
            mat, n = part
            lens.append(np.full(m, mat.shape[1], np.int64) if n is None else np.asarray(n, np.int64))
    L = np.stack(lens, 1)
    line_len = L.sum(1)
    line_start = np.cumsum(line_len) - line_len
    starts = line_start[:, None] + np.cumsum(L, 1) - L
    out = np.empty(int(line_len.sum()), np.uint8)
    for k, part in enumerate(parts):
        s = starts[:, k]
        if isinstance(part, str):
            part = _text(part)
        if isinstance(part, _Slice):
            n = L[:, k]
            within = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
            out[np.repeat(s, n) + within] = part.base[np.repeat(part.start, n) + within]
            continue
        mat, n = part
        idx = s[:, None] + np.arange(mat.shape[1])
        if n is None:
            out[idx] = mat
        else:
            keep = np.arange(mat.shape[1]) < np.asarray(n)[:, None]
            out[idx[keep]] = np.broadcast_to(mat, idx.shape)[keep]
    return out.tobytes()


def _ids(prefix: str, values: np.ndarray, width: int) -> tuple[np.ndarray, None]:
    """``prefix`` + zero-padded decimal of ``values`` (fixed width) as a matrix part."""
    digits, _ = ascii_int(values, width)
    head = np.broadcast_to(np.frombuffer(prefix.encode("ascii"), np.uint8), (len(values), len(prefix)))
    return np.concatenate([head, digits], 1), None


def _review_time(day: np.ndarray) -> list:
    """McAuley's ``reviewTime`` text, ``MM D, YYYY`` (month zero-padded, day not), as parts."""
    d = day.astype("datetime64[D]")
    month_start = d.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    dom = (d - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    return [ascii_int(month, 2), " ", ascii_int(dom), ", ", ascii_int(year, 4)]


# --------------------------------------------------------------------------- the writer

def _gzip_lines(path: Path, level: int, chunks) -> int:
    """Write the byte chunks gzip-compressed (no name, mtime 0: the same bytes every time) to a
    temporary file beside ``path`` and rename it into place; returns the compressed size. Nothing
    is left at ``path`` (nor a temporary file) when a chunk or the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}~", suffix=".tmp", dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                          compresslevel=level) as gz:
            for chunk in chunks:
                gz.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def write_mcauley_synthetic(folder: Path, spec: SyntheticSpec) -> Written:
    """Write ``reviews_<category>_5.json.gz`` and ``meta_<category>.json.gz`` of ``spec`` into
    ``folder`` (module docstring: distributions, order, determinism, atomicity).

    Memory: under 50 bytes per review at the peak (the item and day arrays, the asin-order
    permutation, the day gaps while they are summed) plus one chunk of text. Raises :class:`SyntheticError` for an impossible spec.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    n_users, n_items = spec.counts()
    rng = np.random.default_rng(spec.seed)
    floor = spec.min_count
    user_w = np.minimum(rng.pareto(spec.user_tail, n_users) + 1.0, 1e6)
    user_counts = degrees(spec.n_reviews, user_w, floor, max(floor, n_items // 2), rng)
    rank = rng.permutation(n_items)
    item_w = (rank + 1.0) ** -spec.zipf_s
    item_counts = degrees(spec.n_reviews, item_w, floor, max(floor, n_users // 4), rng)
    item = assign_items(user_counts, item_counts, rng)
    day = review_days(user_counts, spec, rng)
    order = np.argsort(item, kind="stable")  # asin order; within an item by (user, time): slot order
    user_of_slot_start = np.cumsum(user_counts) - user_counts

    base = np.frombuffer((_WORDS * (1 + (spec.text_max + len(_WORDS)) // len(_WORDS))).encode("ascii"), np.uint8)
    room = len(base) - spec.text_max

    def review_chunks():
        text_rng = np.random.default_rng([spec.seed, 1])
        for lo in range(0, spec.n_reviews, spec.chunk_lines):
            slots = order[lo:lo + spec.chunk_lines]
            m = len(slots)
            user = np.searchsorted(user_of_slot_start, slots, side="right") - 1
            d = day[slots].astype(np.int64)
            text_len = np.minimum(np.exp(text_rng.normal(np.log(spec.text_median), spec.text_sigma, m)),
                                  spec.text_max).astype(np.int64) + 1
            summary_len = text_rng.integers(8, 40, m)
            total_votes = text_rng.geometric(0.5, m) - 1
            helpful = text_rng.integers(0, total_votes + 1)
            overall = text_rng.choice(np.array([1, 2, 3, 4, 5]), m, p=[0.05, 0.06, 0.1, 0.24, 0.55])
            yield assemble(m, [
                '{"reviewerID": "', _ids("A", user, 13), '", "asin": "', _ids("B", item[slots], 9),
                '", "reviewerName": "Reader", "helpful": [', ascii_int(helpful), ", ", ascii_int(total_votes),
                '], "reviewText": "', _Slice(base, text_rng.integers(0, room, m), text_len),
                '", "overall": ', ascii_int(overall), '.0, "summary": "',
                _Slice(base, text_rng.integers(0, room, m), summary_len),
                '", "unixReviewTime": ', ascii_int(d * SECONDS_PER_DAY), ', "reviewTime": "',
                *_review_time(d), '"}\n',
            ])

    reviews_path = folder / f"reviews_{spec.category}_5.json.gz"
    reviews_bytes = _gzip_lines(reviews_path, spec.gzip_level, review_chunks())
    del order, item, day

    meta_rng = np.random.default_rng([spec.seed, 2])
    n_total = n_items + int(round(spec.meta_extra * n_items))
    listed = np.ones(n_total, bool)
    listed[:n_items] = meta_rng.random(n_items) >= spec.missing_meta
    asins = np.flatnonzero(listed)
    n_leaf = int(np.clip(n_items // 100, 10, 2000))
    n_genre = max(3, n_leaf // 20)
    leaf_w = (np.arange(1, n_leaf + 1)) ** -1.0
    leaf = meta_rng.choice(n_leaf, n_total, p=leaf_w / leaf_w.sum())
    second = meta_rng.random(n_total) < 0.1
    price_cents = meta_rng.integers(99, 9_999, n_total)
    rank_of = meta_rng.permutation(n_total) + 1

    def meta_chunks():
        for lo in range(0, len(asins), spec.chunk_lines):
            a = asins[lo:lo + spec.chunk_lines]
            m = len(a)
            c = leaf[a]
            path2 = np.where(second[a], 1, 0)
            yield assemble(m, [
                "{'asin': '", _ids("B", a, 9), "', 'title': 'Title ", ascii_int(a), "', 'price': ",
                ascii_int(price_cents[a] // 100), ".", ascii_int(price_cents[a] % 100, 2),
                ", 'imUrl': 'http://ecx.images-amazon.com/images/I/", _ids("", a, 9), ".jpg', 'salesRank': {'",
                spec.category, "': ", ascii_int(rank_of[a]), "}, 'categories': [['", spec.category, "', 'Genre ",
                ascii_int(c % n_genre), "', 'Leaf ", ascii_int(c), "']",
                (_SECOND_PATH[None, :], path2 * len(_SECOND_PATH)),
                "]}\n",
            ])

    meta_path = folder / f"meta_{spec.category}.json.gz"
    meta_bytes = _gzip_lines(meta_path, spec.gzip_level, meta_chunks())
    return Written(reviews_path, meta_path, spec.n_reviews, n_users, n_items, len(asins), reviews_bytes,
                   meta_bytes, time.perf_counter() - t0)


def spec_json(spec: SyntheticSpec) -> str:
    """The spec as canonical JSON (what a table note and a kept folder's marker record)."""
    return json.dumps(asdict(spec), sort_keys=True)
