"""Tiny Taobao ad folders of both accepted forms, derived from the real rows of the shared fixture.

``../shared/datasets/taobao-ad-sample/train_sample.csv`` (FuxiCTR's demo form: 100 real impressions
with their ad and profile columns, SOURCES.md) gives the real ads (ids, categories, brands with
missing values, campaigns, customers, prices), the real users' profiles (with missing fields) and the
two real pids. Impressions, clicks and the behaviour log are drawn around them with a fixed seed:
:func:`taobao_world`. :func:`write_tianchi` writes Tianchi's four raw files, :func:`write_x1` the
TaobaoAd_x1 train.csv / test.csv whose histories are computed from the same log by the rule of
docs/DATA.md (so the two forms hold the same samples).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import SHARED

SAMPLE_DIR = SHARED / "datasets" / "taobao-ad-sample"
DAY0 = 1_494_000_000  # 2017-05-06 00:00:00 UTC+8
DAY = 86_400
PROFILE = ["cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level",
           "occupation", "new_user_class_level"]
BTAGS = np.array(["pv", "cart", "fav", "buy"])
PRICE_EDGES = (10, 20, 50, 100, 200, 500, 1000, 5000)
TIE_CATE = 999_999  # a category logged only in the second of an impression (never history of it)
LATE_CATE = 888_888  # a category logged only after the last validation impression (test histories only)


def demo_rows() -> pd.DataFrame:
    """The 100 real rows of the shared fixture, as strings (empty cells '')."""
    return pd.read_csv(SAMPLE_DIR / "train_sample.csv", dtype=str, keep_default_na=False)


@dataclass
class World:
    samples: pd.DataFrame  # user, time_stamp, adgroup_id, pid, nonclk, clk (time order)
    ads: pd.DataFrame  # adgroup_id, cate_id, campaign_id, customer, brand ('' missing), price
    profiles: pd.DataFrame  # userid + PROFILE (one real user left out: no profile row)
    log: pd.DataFrame  # user, time_stamp, btag, cate, brand
    test_only_ad: str  # an ad shown on the test day only
    test_only_user: str  # a user with impressions on the test day only
    no_profile_user: str


def _id(x: str) -> str:
    return x[:-2] if x.endswith(".0") else x  # pandas wrote integer ids with missing cells as floats


def taobao_world(per_day: int = 60, events_per_user: int = 80, seed: int = 0) -> World:
    """``per_day`` impressions on each of the 8 days (so the last training day is exactly 1/7 of the
    training rows), about 25 % clicked; ``events_per_user`` behaviour events per user from 2017-04-22
    to 05-13, cate/brand mostly those of the ads, plus: an event in the very second of some
    impressions (category :data:`TIE_CATE`), events of a user never shown an ad, events after the
    last validation impression with category :data:`LATE_CATE`."""
    rng = np.random.default_rng(seed)
    demo = demo_rows()
    ads = demo[["adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"]].drop_duplicates("adgroup_id")
    ads = ads.assign(brand=ads.brand.map(_id)).reset_index(drop=True)
    users = demo[["userid", *PROFILE]].drop_duplicates("userid").reset_index(drop=True)
    users[PROFILE] = users[PROFILE].apply(lambda c: c.map(_id))
    pids = sorted(demo.pid.unique())
    test_only_ad, test_only_user = ads.adgroup_id.iloc[-1], users.userid.iloc[-1]
    regular_ads, regular_users = ads.adgroup_id.iloc[:-1].to_numpy(), users.userid.iloc[:-1].to_numpy()

    rows = []
    for d in range(8):
        n = per_day
        u = rng.choice(regular_users, n)
        a = rng.choice(regular_ads, n)
        if d == 7:  # the test day: an unseen ad and an unseen user
            a[:3] = test_only_ad
            u[3:6] = test_only_user
        t = DAY0 + d * DAY + np.sort(rng.integers(0, DAY, n))
        clk = (rng.random(n) < 0.25).astype(int)
        clk[:2] = [0, 1]  # both labels on every day
        rows.append(pd.DataFrame({"user": u, "time_stamp": t, "adgroup_id": a, "pid": rng.choice(pids, n),
                                  "nonclk": 1 - clk, "clk": clk}))
    samples = pd.concat(rows, ignore_index=True)

    cates, brands = ads.cate_id.to_numpy(), ads.brand.replace("", "0").to_numpy()
    ev = []
    for user in users.userid:
        n = events_per_user
        ev.append(pd.DataFrame({"user": user, "time_stamp": DAY0 - 14 * DAY + rng.integers(0, 22 * DAY, n),
                                "btag": rng.choice(BTAGS, n, p=[0.85, 0.05, 0.05, 0.05]),
                                "cate": rng.choice(cates, n), "brand": rng.choice(brands, n)}))
    shown = samples.iloc[::5]  # an event in the very second of every fifth impression
    ev.append(pd.DataFrame({"user": shown.user, "time_stamp": shown.time_stamp, "btag": "pv",
                            "cate": str(TIE_CATE), "brand": "1"}))
    same = samples.iloc[1::7]  # several events in one second (ties among behaviours), before it
    for b in BTAGS:
        ev.append(pd.DataFrame({"user": same.user, "time_stamp": same.time_stamp - 30, "btag": b,
                                "cate": rng.choice(cates, len(same)), "brand": "7"}))
    last_valid = samples.time_stamp[samples.time_stamp < DAY0 + 7 * DAY].max()
    ev.append(pd.DataFrame({"user": regular_users, "time_stamp": last_valid + 1, "btag": "buy",
                            "cate": str(LATE_CATE), "brand": "5"}))
    ev.append(pd.DataFrame({"user": "424242", "time_stamp": DAY0 + np.arange(5), "btag": "pv",
                            "cate": "1", "brand": "1"}))  # never shown an ad
    log = pd.concat(ev, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    no_profile = regular_users[0]
    profiles = users[users.userid != no_profile].rename(columns={})
    return World(samples, ads, profiles, log, test_only_ad, test_only_user, no_profile)


def write_tianchi(folder: Path, w: World) -> Path:
    """Tianchi's raw_sample.csv, ad_feature.csv (brand NULL where missing), user_profile.csv (its
    header ends with a space, as the real one) and behavior_log.csv in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    w.samples[["user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"]].to_csv(folder / "raw_sample.csv", index=False)
    w.ads.assign(brand=w.ads.brand.replace("", "NULL")).to_csv(folder / "ad_feature.csv", index=False)
    text = w.profiles.to_csv(index=False)
    (folder / "user_profile.csv").write_text(text.replace("new_user_class_level\n", "new_user_class_level \n", 1))
    w.log.to_csv(folder / "behavior_log.csv", index=False)
    return folder


def price_bucket(price: pd.Series) -> np.ndarray:
    return np.searchsorted(np.asarray(PRICE_EDGES), price.astype(float).to_numpy(), side="right")


def x1_frames(w: World, max_len: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TaobaoAd_x1's train.csv (05-06 .. 05-12, time order) and test.csv (05-13) rows of the world:
    each impression's last ``max_len`` behaviours strictly before it, oldest first, ties in
    (btag, cate, brand) order, btag as codes 1-4; price as its bucket (DMR publishes ids); profile
    cells empty for the user without a profile."""
    code = {b: i + 1 for i, b in enumerate(BTAGS)}
    log = w.log.assign(t=w.log.time_stamp.astype(np.int64), b=w.log.btag.map(code),
                       c=w.log.cate.astype(np.int64), r=w.log.brand.astype(np.int64))
    log = log.sort_values(["user", "t", "b", "c", "r"], kind="stable")
    by_user = {u: g for u, g in log.groupby("user")}
    hist = {"btag_his": [], "cate_his": [], "brand_his": []}
    for u, t in zip(w.samples.user, w.samples.time_stamp):  # a test oracle: plain loops are fine
        g = by_user.get(u)
        g = g[g.t < t].tail(max_len) if g is not None else log.iloc[:0]
        for col, src in (("btag_his", "b"), ("cate_his", "c"), ("brand_his", "r")):
            hist[col].append("^".join(map(str, g[src])))
    ads = w.ads.set_index("adgroup_id")
    prof = w.profiles.set_index("userid").reindex(w.samples.user).fillna("")
    frame = pd.DataFrame({
        "clk": w.samples.clk.to_numpy(), **hist, "userid": w.samples.user.to_numpy(),
        **{f: prof[f].to_numpy() for f in PROFILE},
        "adgroup_id": w.samples.adgroup_id.to_numpy(),
        "cate_id": ads.cate_id.reindex(w.samples.adgroup_id).to_numpy(),
        "campaign_id": ads.campaign_id.reindex(w.samples.adgroup_id).to_numpy(),
        "customer": ads.customer.reindex(w.samples.adgroup_id).to_numpy(),
        "brand": ads.brand.reindex(w.samples.adgroup_id).to_numpy(),
        "price": price_bucket(ads.price.reindex(w.samples.adgroup_id)),
        "pid": w.samples.pid.to_numpy(), "btag": 1,
    })
    test = w.samples.time_stamp.to_numpy() >= DAY0 + 7 * DAY
    return frame[~test].reset_index(drop=True), frame[test].reset_index(drop=True)


def write_x1(folder: Path, w: World, max_len: int = 50) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train, test = x1_frames(w, max_len)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder
