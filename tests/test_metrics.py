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
