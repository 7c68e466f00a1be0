import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench.metrics import auc, gauc, impr, logloss, rela_impr, split_metrics


def test_gauc_worked_example_is_impression_weighted():
    # BASELINES.md: users with 2 and 4 impressions and per-user AUCs 1.0 and 0.5 -> 0.6667
    users = np.array([0, 0, 1, 1, 1, 1])
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3])  # user 1: pairs (0.8>0.7) (0.8>0.3) (0.2<0.7) (0.2<0.3)
    assert roc_auc_score(labels[2:], scores[2:]) == pytest.approx(0.5)
    assert gauc(labels, scores, users) == pytest.approx(4 / 6, abs=1e-12)


def test_gauc_skips_single_class_users_and_matches_a_loop():
    rng = np.random.default_rng(3)
    n = 5000
    users = rng.integers(0, 300, n) * 7 + 11  # arbitrary, non-dense keys
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + labels, 1)  # many ties
    users[:20] = -5
    labels[:20] = 1  # a single-class user
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if labels[m].min() != labels[m].max():
            num += roc_auc_score(labels[m], scores[m]) * m.sum()
            den += m.sum()
    assert gauc(labels, scores, users) == pytest.approx(num / den, abs=1e-12)


def test_gauc_nan_when_no_user_has_both_classes():
    assert np.isnan(gauc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]), np.array([0, 0, 1])))


def test_auc_is_global_and_never_raises_on_one_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    s = rng.normal(size=1000) + y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))
    # a global AUC differs from the mean of per-batch AUCs
    per_batch = np.mean([roc_auc_score(y[i:i + 100], s[i:i + 100] + i) for i in range(0, 1000, 100)])
    assert auc(y, s) != pytest.approx(per_batch)
    assert np.isnan(auc(np.ones(10), np.arange(10)))


def test_logloss_and_split_metrics():
    y = np.array([1, 0, 1, 0])
    logits = np.array([2.0, -1.0, 0.5, 0.0])
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(y, p) == pytest.approx(expected)
    m = split_metrics(y, logits, np.array([0, 0, 1, 1]))
    assert m["logloss"] == pytest.approx(expected)
    assert m["auc"] == pytest.approx(1.0)
    assert m["gauc"] == pytest.approx(1.0)
    # logloss with one class present still works (labels=[0, 1])
    assert logloss(np.ones(3), np.array([0.9, 0.8, 0.7])) > 0


def test_relaimpr_and_impr_match_the_papers():
    # MIAN.md 4: Books 0.8209 vs 0.8159: Impr +0.613 %, RelaImpr +1.58 %
    assert impr(0.8209, 0.8159) == pytest.approx(0.613, abs=1e-3)
    assert rela_impr(0.8209, 0.8159) == pytest.approx(1.58, abs=1e-2)
    assert impr(0.4018, 0.4100) == pytest.approx(-2.0, abs=1e-2)


# --------------------------------------------------------------------------- the bootstrap over test users

from bench.metrics import (BOOTSTRAP_CHUNK, bootstrap_replicates, bootstrap_summary, paired_bootstrap,  # noqa: E402
                           weighted_auc)


def test_weighted_auc_matches_sklearn_sample_weight_with_ties():
    rng = np.random.default_rng(5)
    n = 2000
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + y, 1)  # many tied scores, within and across classes
    w = rng.integers(0, 4, (6, n))  # zeros included
    got = weighted_auc(y, s, w)
    want = [roc_auc_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert weighted_auc(y, s, np.ones(n)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert weighted_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 2, 3, 4])) == 0.5
    assert np.isnan(weighted_auc(np.array([1, 0]), np.array([0.2, 0.1]), np.array([0, 3])))  # no positive weight
    with pytest.raises(ValueError, match="integer"):
        weighted_auc(y, s, np.full(n, 0.5))
    with pytest.raises(ValueError, match="same number of samples"):
        weighted_auc(y, s, np.ones(n + 1))


def _toy_test_split(n_users=60, per_user=6, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users) * 3 + 100, per_user)  # non-dense keys
    labels = rng.integers(0, 2, users.size)
    return rng, labels, users


def test_bootstrap_replicates_are_a_cluster_bootstrap_over_users():
    """Loop transcription: replicate k draws U users with replacement (rng.integers in chunks of
    BOOTSTRAP_CHUNK rows), a sample weighs as often as its user is drawn, the statistic is
    sklearn's weighted AUC / the weighted mean log loss."""
    rng, labels, users = _toy_test_split()
    scores = np.round(rng.normal(size=(2, users.size)) + labels, 1)
    n_boot = BOOTSTRAP_CHUNK + 6  # two chunks
    obs, reps = bootstrap_replicates(labels, users, scores, n_boot=n_boot, seed=7)
    obs_ll, reps_ll = bootstrap_replicates(labels, users, scores, n_boot=n_boot, seed=7, metric="logloss")
    keys = np.unique(users)
    draw = np.random.default_rng(7)
    draws = np.concatenate([draw.integers(0, keys.size, size=(min(BOOTSTRAP_CHUNK, n_boot - k), keys.size))
                            for k in range(0, n_boot, BOOTSTRAP_CHUNK)])
    assert reps.shape == reps_ll.shape == (n_boot, 2)
    for k in range(n_boot):
        times = np.zeros(keys.size)
        for u in draws[k]:
            times[u] += 1
        w = times[np.searchsorted(keys, users)]
        for s in range(2):
            assert reps[k, s] == pytest.approx(roc_auc_score(labels, scores[s], sample_weight=w), abs=1e-12)
            p = 1 / (1 + np.exp(-scores[s]))
            ll = -(w * (labels * np.log(p) + (1 - labels) * np.log(1 - p))).sum() / w.sum()
            assert reps_ll[k, s] == pytest.approx(ll, abs=1e-12)
    np.testing.assert_allclose(obs, [roc_auc_score(labels, row) for row in scores], atol=1e-12)
    np.testing.assert_allclose(obs_ll, [logloss(labels, 1 / (1 + np.exp(-row))) for row in scores], atol=1e-12)


def test_paired_bootstrap_known_answers():
    rng, labels, users = _toy_test_split(n_users=200, per_user=5)
    random = rng.normal(size=(3, labels.size))
    # identical scores: difference 0 in every replicate, p = 1
    same = paired_bootstrap(labels, users, random, random.copy(), n_boot=500, seed=1)
    assert (same.diff, same.low, same.high, same.p, same.n_boot) == (0.0, 0.0, 0.0, 1.0, 500)
    # a perfect ranker against random scores: every replicate on the same side, p at its floor
    perfect = labels + 0.1 * rng.random(size=(3, labels.size))
    r = paired_bootstrap(labels, users, perfect, random, n_boot=500, seed=1)
    assert r.p == 1 / 500 and r.low > 0.3 and r.diff == pytest.approx(1 - np.mean(
        [roc_auc_score(labels, row) for row in random]), abs=1e-12)
    # symmetry: b against a mirrors the difference and the interval, same p
    noisy = labels + rng.normal(0, 2.0, size=(3, labels.size))
    ab = paired_bootstrap(labels, users, noisy, random, n_boot=500, seed=3)
    ba = paired_bootstrap(labels, users, random, noisy, n_boot=500, seed=3)
    assert ba.diff == pytest.approx(-ab.diff, abs=1e-15) and ba.p == ab.p
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low), abs=1e-15)
    assert ab.low <= ab.diff <= ab.high
    # the same draws: the seed fixes the result, another seed moves the interval
    assert paired_bootstrap(labels, users, noisy, random, n_boot=500, seed=3) == ab
    assert paired_bootstrap(labels, users, noisy, random, n_boot=500, seed=4).low != ab.low
    # logloss of a perfect, confident model against coin flips: lower, at the floor
    ll = paired_bootstrap(labels, users, np.tile(8 * (2 * labels - 1.0), (3, 1)), np.zeros_like(random), n_boot=200,
                          metric="logloss")
    assert ll.diff < -0.5 and ll.p == 1 / 200


def test_bootstrap_p_value_rule():
    assert bootstrap_summary(0.01, np.array([0.02, 0.01, -0.01, 0.0])).p == 1.0  # 2 x 2/4 (0 is the other side)
    assert bootstrap_summary(0.01, np.array([0.02, 0.01, 0.03, -0.01])).p == 0.5
    assert bootstrap_summary(-0.01, np.array([-0.02, -0.01, -0.03, -0.01])).p == 0.25  # floor 1/n_boot
    assert bootstrap_summary(0.0, np.array([0.1, -0.1])).p == 1.0
    r = bootstrap_summary(0.01, np.array([np.nan, 0.02, 0.04]))  # a replicate without a class left out
    assert r.n_boot == 3 and r.p == 1 / 3 and r.low == pytest.approx(0.0205)


def test_paired_bootstrap_refuses_bad_input():
    _, labels, users = _toy_test_split()
    a = np.zeros((2, labels.size))
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(labels, users, a, a[:1])
    with pytest.raises(ValueError, match=r"scores \[S, N\]"):
        paired_bootstrap(labels, users[:-1], a, a)
    with pytest.raises(ValueError, match="n_boot expects an integer >= 1"):
        paired_bootstrap(labels, users, a, a, n_boot=0)
    with pytest.raises(ValueError, match="metric expects"):
        paired_bootstrap(labels, users, a, a, metric="gauc")
