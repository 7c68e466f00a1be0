"""Evaluation metrics, computed once per split on the concatenated predictions (PROTOCOL section 3).

- AUC: global ROC AUC (``sklearn.metrics.roc_auc_score``); never a mean of per-batch AUCs.
- logloss: ``sklearn.metrics.log_loss`` with labels [0, 1].
- gAUC: per-user AUC weighted by the user's number of impressions, users whose labels are all 0
  or all 1 left out (FuxiCTR convention); vectorised rank statistics, no loop over users.
- RelaImpr (DIN, Zhou et al. KDD 2018, Eq. 11) and the paper's Impr (MIAN Table 2).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Global ROC AUC of ``scores`` [N] against 0/1 ``labels`` [N].

    Returns NaN (never raises) when only one class is present."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log) of probabilities ``probs`` [N] in [0, 1]."""
    return float(log_loss(np.asarray(labels), np.asarray(probs, dtype=np.float64), labels=[0, 1]))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUCs; single-class users are left out.

    Args:
        labels: [N] 0/1.
        scores: [N] any monotone score (logits or probabilities).
        users: [N] integer user keys.
    Returns NaN when no user has both classes. Ties in score get average ranks (as sklearn's
    AUC, which counts a tied positive/negative pair as 1/2).
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(users)
    n = labels.size
    if n == 0:
        return float("nan")
    # sort by (user, score) with ONE integer argsort: key = user code * n_scores + dense score rank
    # (a two-key lexsort and np.unique cost about twice as much on 10^6 samples)
    by_score = np.argsort(scores)
    s_sorted = scores[by_score]
    new_score = np.empty(n, dtype=bool)
    new_score[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_score[1:])
    srank = np.empty(n, dtype=np.int64)
    srank[by_score] = np.cumsum(new_score) - 1
    n_scores = int(srank[by_score[-1]]) + 1
    ucode = None
    if np.issubdtype(users.dtype, np.integer):
        lo, hi = int(users.min()), int(users.max())
        if (hi - lo + 1) * n_scores < 2**62:
            ucode = users.astype(np.int64) - lo
    if ucode is None:  # other key types, or too wide a key range: dense codes (< n each)
        ucode = np.unique(users, return_inverse=True)[1].astype(np.int64).reshape(-1)
    order = np.argsort(ucode * n_scores + srank)
    s = srank[order]  # equal ranks <=> equal scores
    y = labels[order]
    uc = ucode[order]
    pos = np.arange(n, dtype=np.float64)
    # start of each user's block; u = dense user index in sorted order
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(uc[1:], uc[:-1], out=new_user[1:])
    u = np.cumsum(new_user) - 1
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0.0))
    # runs of equal (user, score): average rank inside the user's block
    new_run = new_user.copy()
    new_run[1:] |= s[1:] != s[:-1]
    run_id = np.cumsum(new_run) - 1
    run_first = pos[new_run]
    run_last = np.append(run_first[1:] - 1, n - 1)
    avg_pos = (run_first + run_last) / 2.0
    rank = avg_pos[run_id] - user_start + 1.0  # 1-based rank within the user
    n_users = int(u[-1]) + 1
    n_imp = np.bincount(u, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(u, weights=y, minlength=n_users)
    n_neg = n_imp - n_pos
    rank_pos = np.bincount(u, weights=rank * y, minlength=n_users)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    user_auc = (rank_pos[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (
        n_pos[valid] * n_neg[valid]
    )
    w = n_imp[valid]
    return float((user_auc * w).sum() / w.sum())


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr in percent (DIN Eq. 11): ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100."""
    if auc_base == 0.5:
        return float("nan")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def impr(value_model: float, value_base: float) -> float:
    """The paper's Table 2 percentage: (model - base) / base * 100 (plain relative change)."""
    if value_base == 0:
        return float("nan")
    return (value_model - value_base) / value_base * 100.0


def split_metrics(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """AUC, logloss and gAUC of one split from its concatenated logits [N] (float)."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = expit(logits)
    return {
        "auc": auc(labels, logits),
        "logloss": logloss(labels, probs),
        "gauc": gauc(labels, logits, users),
    }


def is_finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
