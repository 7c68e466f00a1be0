"""Tiny raw files in the real formats, written by the data tests themselves (no downloads).

Each writer returns what the tests need to check the result independently (the raw rows).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.sources import amazon, movielens

GENRES = movielens.GENRES_100K
DAY = 86_400


def ml100k_frames(n_users: int = 12, n_items: int = 20, per_user: int = 14, seed: int = 0):
    """Ratings, users and items of a small synthetic MovieLens 100K (with same-second ties)."""
    rng = np.random.default_rng(seed)
    rows = []
    base = 880_000_000
    for u in range(1, n_users + 1):
        movies = rng.choice(np.arange(1, n_items + 1), per_user, replace=False)
        # timestamps on a coarse grid so that same-second ties occur within a user
        ts = base + rng.integers(0, 40, per_user) * 3_000 + rng.integers(0, 2, per_user) * 30
        for m, t in zip(movies, ts):
            rows.append((u, int(m), int(rng.integers(1, 6)), int(t)))
    # cold start: a user and a movie that appear only at the very end (test period)
    late = base + 50 * 3_000
    n_users, n_items = n_users + 1, n_items + 1
    rows += [(n_users, 1, 5, late + 1), (n_users, 2, 2, late + 2), (n_users, n_items, 4, late + 3),
             (1, n_items, 1, late + 4)]
    ratings = pd.DataFrame(rows, columns=["user_id", "movie_id", "rating", "timestamp"])
    occupations = ["student", "engineer", "other", "writer"]
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1),
        "age": rng.integers(10, 70, n_users),
        "gender": rng.choice(["M", "F"], n_users),
        "occupation": rng.choice(occupations, n_users),
        "zip_code": rng.choice(["12345", "T8H1N", "98101", "55414", "V3N4P"], n_users),
    })
    flags = (rng.random((n_items, len(GENRES))) < 0.15).astype(int)
    flags[0] = 0  # a movie without any genre flag
    years = rng.integers(1950, 1999, n_items)
    dates = [f"01-Jan-{y}" for y in years]
    dates[1] = ""  # a missing release date
    items = pd.DataFrame({"movie_id": np.arange(1, n_items + 1), "release_date": dates})
    for k, g in enumerate(GENRES):
        items[g] = flags[:, k]
    return ratings, users, items


def ml100k_bytes(ratings, users, items) -> dict[str, bytes]:
    """u.data / u.user / u.item contents in GroupLens' format."""
    data = "".join(f"{r.user_id}\t{r.movie_id}\t{r.rating}\t{r.timestamp}\n" for r in ratings.itertuples())
    user = "".join(f"{u.user_id}|{u.age}|{u.gender}|{u.occupation}|{u.zip_code}\n" for u in users.itertuples())
    item = "".join(
        f"{row.movie_id}|Movie {row.movie_id}|{row.release_date}||http://x|"
        + "|".join(str(int(row[g])) for g in GENRES) + "\n"
        for _, row in items.iterrows()
    )
    return {"u.data": data.encode(), "u.user": user.encode(), "u.item": item.encode("latin-1")}


def write_ml100k_files(folder: Path, frames) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, b in ml100k_bytes(*frames).items():
        (folder / name).write_bytes(b)
    return folder


def ml100k_zip_bytes(frames) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, b in ml100k_bytes(*frames).items():
            z.writestr(f"ml-100k/{name}", b)
    return buf.getvalue()


def ml100k_spec(frames) -> movielens.MovieLensSpec:
    ratings, users, items = frames
    flags = items[list(GENRES)].to_numpy()
    return movielens.MovieLensSpec(
        len(ratings), len(users), len(items), movielens.ratings_checksum(ratings),
        users_sha256=movielens.users_checksum(users),
        items_sha256=movielens.items_checksum(items.movie_id.to_numpy(), items.release_date, flags))


def prepare_tiny_ml100k(root: Path, n_users: int = 30, n_items: int = 40, per_user: int = 20) -> Path:
    """A tiny movielens-100k prepared from synthetic raw files written under ``root/raw`` (its
    spec pinned only while preparing); returns the data dir ``root/data``."""
    import pytest

    from bench import data
    root = Path(root)
    frames = ml100k_frames(n_users=n_users, n_items=n_items, per_user=per_user)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(movielens.SPECS, "movielens-100k", ml100k_spec(frames))
        data.prepare("movielens-100k", root / "data", write_ml100k_files(root / "raw", frames))
    return root / "data"


def widedeep_parquet_bytes(frames) -> dict[str, bytes]:
    """The three wheel members (parquet, brotli) with the wheel's column names."""
    ratings, users, items = frames
    items = items.copy()
    items.insert(1, "movie_title", [f"Movie {i}" for i in items.movie_id])
    items["release_date"] = items.release_date.replace("", None)
    out = {}
    for member, df in zip(movielens.WIDEDEEP_MEMBERS, (ratings, users, items)):
        buf = io.BytesIO()
        df.to_parquet(buf, compression="brotli", index=False)
        out[member] = buf.getvalue()
    return out


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- Amazon


def beauty_rows(n_users: int = 30, n_items: int = 40, seed: int = 0):
    """Per-user item sequences and per-step gaps (seconds, whole days, many 0 = same day)."""
    rng = np.random.default_rng(seed)
    seqs, gaps = [], []
    for _ in range(n_users):
        n = int(rng.integers(5, 12))
        seqs.append([int(i) for i in rng.choice(np.arange(1, n_items + 1), n, replace=False)])
        g = rng.choice([0, 0, 1, 3, 10, 40, 200], n) * DAY
        g[0] = 0
        gaps.append([int(x) for x in g])
    cats = {i: [100 + i % 3, 200 + i % 5] for i in range(1, n_items + 1) if i != 7}  # item 7: no entry
    cats[8] = []  # item 8: empty attribute list
    return seqs, gaps, cats


def beauty_bytes(seqs, gaps, cats, stem: str = "Beauty") -> dict[str, bytes]:
    """The three files of an S3-Rec set named ``stem`` (``Beauty``, ``Sports_and_Outdoors``, ...)
    under their local names, from per-user sequences, gaps and item -> attribute ids."""
    text = "".join(f"{u} " + " ".join(map(str, s)) + "\n" for u, s in enumerate(seqs, 1))
    times = "".join(f"{u} " + " ".join(map(str, s)) + "\t" + " ".join(map(str, g)) + "\n"
                    for u, (s, g) in enumerate(zip(seqs, gaps), 1))
    attrs = json.dumps({str(k): v for k, v in cats.items()})
    return {f"{stem}.txt": text.encode(), f"{stem}_time_intervals.txt": times.encode(),
            f"{stem}_item2attributes.json": attrs.encode()}


def write_beauty(folder: Path, files: dict[str, bytes], monkeypatch, name: str = "amazon-beauty") -> Path:
    """Write the tiny files of the S3-Rec set ``name`` and pin their sha256 in place of the real ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for fname, b in files.items():
        (folder / fname).write_bytes(b)
    pin_beauty(files, monkeypatch, name)
    return folder


def pin_beauty(files: dict[str, bytes], monkeypatch, name: str = "amazon-beauty") -> None:
    """Pin the sha256 of ``files`` (local name -> bytes) for the S3-Rec set ``name``; the
    repositories, commits and upstream paths stay the real ones."""
    pinned = {
        role: (fname, amazon.PinnedFile(src.repo, src.commit, src.path, sha(files[fname])))
        for role, (fname, src) in amazon.S3REC_FILES[name].items()
    }
    monkeypatch.setitem(amazon.S3REC_FILES, name, pinned)


def write_mcauley(folder: Path, cat: str, reviews: list[dict], meta: list[dict]) -> Path:
    """reviews_<cat>_5.json.gz (strict JSON lines) and meta_<cat>.json.gz (Python literals)."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"reviews_{cat}_5.json.gz", "wt", encoding="utf-8") as f:
        for r in reviews:
            f.write(json.dumps(r) + "\n")
    with gzip.open(folder / f"meta_{cat}.json.gz", "wt", encoding="utf-8") as f:
        for m in meta:
            f.write(repr(m) + "\n")
    return folder


class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for shutil.copyfileobj and ``with``."""


def serve(mapping: dict[str, bytes], log: list[str] | None = None):
    """An urlopen replacement serving ``mapping`` (url -> bytes); other URLs are unreachable."""
    import urllib.error

    def urlopen(url, timeout=None):
        if log is not None:
            log.append(url)
        if url not in mapping:
            raise urllib.error.URLError("Name or service not known")
        return FakeResponse(mapping[url])

    return urlopen
