"""Evaluation metrics, computed once per split on the concatenated predictions (PROTOCOL section 3).

- AUC: global ROC AUC (``sklearn.metrics.roc_auc_score``); never a mean of per-batch AUCs.
- logloss: ``sklearn.metrics.log_loss`` with labels [0, 1].
- gAUC: per-user AUC weighted by the user's number of impressions, users whose labels are all 0
  or all 1 left out (FuxiCTR convention); vectorised rank statistics, no loop over users.
- RelaImpr (DIN, Zhou et al. KDD 2018, Eq. 11) and the paper's Impr (MIAN Table 2).
- :func:`paired_bootstrap`: the significance of a difference over test samples (a cluster
  bootstrap over test users, paired over seeds), beside the paired t-test over seeds.
"""
from __future__ import annotations

import math
from typing import NamedTuple

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


class BootstrapResult(NamedTuple):
    """What :func:`paired_bootstrap` returns: the observed mean difference (a - b, averaged over
    seeds), its 95 % percentile interval over the replicates, the two-sided p-value and the number
    of replicates."""

    diff: float
    low: float
    high: float
    p: float
    n_boot: int


#: replicates per chunk of :func:`paired_bootstrap` (a fixed size: the draws do not depend on it)
BOOTSTRAP_CHUNK = 64


class _Ranked(NamedTuple):
    """One score vector prepared for :func:`_weighted_auc`: the user codes of its negatives in
    score order after a leading ``n_users`` (a user whose count is always 0, so that the prefix sums
    start at 0), the user codes of its positives, and for each positive the number of negatives
    scored strictly below it (``lo``); for the positives tied with a negative (their indices
    ``tied``), the same bounds of their tie group (``tied_lo`` strictly below, ``tied_hi`` below or
    tied)."""

    neg_users: np.ndarray
    pos_users: np.ndarray
    lo: np.ndarray
    tied: np.ndarray
    tied_lo: np.ndarray
    tied_hi: np.ndarray


def _rank(labels: np.ndarray, scores: np.ndarray, ucode: np.ndarray, n_users: int) -> _Ranked:
    """Sort ``scores`` once and locate each positive among the negatives (ties: the same group)."""
    order = np.argsort(scores, kind="stable")
    s, y, u = scores[order], labels[order], ucode[order]
    neg_scores = s[~y]
    lo = np.searchsorted(neg_scores, s[y], side="left")
    hi = np.searchsorted(neg_scores, s[y], side="right")
    tied = np.flatnonzero(hi != lo)
    return _Ranked(np.concatenate([[n_users], u[~y]]), u[y], lo, tied, lo[tied], hi[tied])


def _weighted_auc(r: _Ranked, counts: np.ndarray) -> np.ndarray:
    """AUC under sample weights ``counts[:, user]`` for each row of ``counts`` [B, U + 1] (integer
    counts as float64, last column 0): the sum over positives of weight x (negative weight below +
    1/2 negative weight tied), divided by positive weight x negative weight; every sum is of
    integers below 2**53, so exact (ties: only the positives tied with a negative get the second
    term). -> [B] (NaN without a positive or a negative of non-zero weight)."""
    # np.take keeps the rows contiguous (fancy indexing along axis 1 returns a transposed layout,
    # on which the cumulative sum runs about 4x slower)
    cum = np.cumsum(np.take(counts, r.neg_users, axis=1), axis=1)  # [B, 1 + N_neg]: weight of the first k negatives
    wpos = np.take(counts, r.pos_users, axis=1)  # [B, N_pos]
    num2 = 2.0 * np.einsum("bi,bi->b", wpos, np.take(cum, r.lo, axis=1))  # 2 x positive weight x weight below
    if r.tied.size:  # + positive weight x tied negative weight (2 x 1/2)
        tied = np.take(cum, r.tied_hi, axis=1) - np.take(cum, r.tied_lo, axis=1)
        num2 += np.einsum("bi,bi->b", np.take(wpos, r.tied, axis=1), tied)
    den2 = 2.0 * wpos.sum(1) * cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den2 > 0, num2 / den2, np.nan)


def weighted_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` [N] against 0/1 ``labels`` [N] under integer sample ``weights`` [N]
    or [B, N] (B weightings at once) -> float or [B]; tied positive/negative pairs count 1/2
    (``sklearn.metrics.roc_auc_score`` with ``sample_weight``). NaN when a class has zero weight.
    Raises ValueError when the weights are not non-negative integers or the shapes differ."""
    labels, scores = np.asarray(labels).reshape(-1), np.asarray(scores, dtype=np.float64).reshape(-1)
    w = np.asarray(weights)
    if w.shape[-1] != labels.size or scores.size != labels.size or w.ndim > 2:
        raise ValueError(f"weighted_auc: labels {labels.shape}, scores {scores.shape} and weights {w.shape} "
                         "must have the same number of samples N (weights [N] or [B, N])")
    if w.size and (np.any(w < 0) or not np.all(np.equal(np.mod(w, 1), 0))):
        raise ValueError("weighted_auc: expected non-negative integer weights (counts)")
    counts = np.atleast_2d(w).astype(np.float64)
    counts = np.concatenate([counts, np.zeros((counts.shape[0], 1))], axis=1)
    out = _weighted_auc(_rank(labels.astype(bool), scores, np.arange(labels.size), labels.size), counts)
    return out if w.ndim == 2 else float(out[0])


def _per_sample_logloss(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each sample from its logit [..., N] (stable form)."""
    return np.logaddexp(0.0, logits) - labels * logits


def _user_counts(rng: np.random.Generator, n_users: int, rows: int) -> np.ndarray:
    """``rows`` draws of ``n_users`` users with replacement -> [rows, n_users + 1] float64 counts
    (how often each user is drawn; the last column, a user never drawn, is 0)."""
    draws = rng.integers(0, n_users, size=(rows, n_users)) + (n_users + 1) * np.arange(rows)[:, None]
    return np.bincount(draws.reshape(-1), minlength=rows * (n_users + 1)).reshape(rows, n_users + 1).astype(np.float64)


def bootstrap_replicates(labels: np.ndarray, users: np.ndarray, scores: np.ndarray, n_boot: int = 2000,
                         seed: int = 0, metric: str = "auc") -> tuple[np.ndarray, np.ndarray]:
    """A test metric of each score row under the cluster bootstrap of :func:`paired_bootstrap`:
    (observed [S] with unit weights, replicates [n_boot, S]). The draws depend only on the number
    of distinct ``users``, ``n_boot`` and ``seed``, so two calls on the same test split resample
    the same users: their replicates can be paired (a report caches them per run).

    Args: ``labels`` [N] 0/1, ``users`` [N] keys, ``scores`` [S, N] (or [N]) logits; ``metric``
    ``"auc"`` (weighted AUC, ties 1/2) or ``"logloss"`` (weighted mean binary cross-entropy).
    Raises ValueError on shapes that do not match, n_boot < 1 or an unknown metric."""
    labels = np.asarray(labels).reshape(-1)
    x = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n = labels.size
    if x.ndim != 2 or x.shape[1] != n or np.asarray(users).size != n or x.shape[0] < 1 or n == 0:
        raise ValueError(f"bootstrap: expected labels [N], users [N] and scores [S, N] with S, N >= 1, got "
                         f"{labels.shape}, {np.asarray(users).shape}, {x.shape}")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"bootstrap: n_boot expects an integer >= 1, got {n_boot!r}")
    if metric not in ("auc", "logloss"):
        raise ValueError(f"bootstrap: metric expects 'auc' or 'logloss', got {metric!r}")
    ucode = np.unique(np.asarray(users), return_inverse=True)[1].reshape(-1)
    n_users = int(ucode.max()) + 1
    if metric == "auc":
        y = labels.astype(bool)
        ranked = [_rank(y, row, ucode, n_users) for row in x]

        def stat(counts: np.ndarray) -> np.ndarray:  # [B, U + 1] -> [B, S]
            return np.stack([_weighted_auc(r, counts) for r in ranked], axis=1)
    else:
        loss = _per_sample_logloss(labels.astype(np.float64), x)  # [S, N]: linear in the weights
        loss_user = np.stack([np.bincount(ucode, weights=row, minlength=n_users) for row in loss], axis=1)  # [U, S]
        n_user = np.bincount(ucode, minlength=n_users).astype(np.float64)

        def stat(counts: np.ndarray) -> np.ndarray:
            return (counts[:, :-1] @ loss_user) / (counts[:, :-1] @ n_user)[:, None]
    observed = stat(np.append(np.ones(n_users), 0.0)[None])[0]
    rng = np.random.default_rng(seed)
    reps = np.concatenate([stat(_user_counts(rng, n_users, min(BOOTSTRAP_CHUNK, n_boot - start)))
                           for start in range(0, n_boot, BOOTSTRAP_CHUNK)])
    return observed, reps


def bootstrap_summary(observed: float, replicates: np.ndarray) -> BootstrapResult:
    """:class:`BootstrapResult` of an ``observed`` difference and its ``replicates`` [n_boot]
    (NaN replicates, where a class had zero weight, left out): the 2.5 / 97.5 percentiles, and
    p = 2 x the share of replicates on the other side of 0 from ``observed`` (0 counted as the
    other side), floored at 1 / n_boot and capped at 1; p = 1 when ``observed`` is 0."""
    replicates = np.asarray(replicates, dtype=np.float64).reshape(-1)
    n_boot = replicates.size
    reps = replicates[~np.isnan(replicates)]
    if reps.size == 0 or math.isnan(observed):
        return BootstrapResult(float(observed), float("nan"), float("nan"), float("nan"), n_boot)
    low, high = np.percentile(reps, [2.5, 97.5])
    if observed == 0:
        p = 1.0
    else:
        other = np.mean(reps <= 0) if observed > 0 else np.mean(reps >= 0)
        p = float(min(1.0, max(2.0 * other, 1.0 / n_boot)))
    return BootstrapResult(float(observed), float(low), float(high), p, n_boot)


def paired_bootstrap(labels: np.ndarray, users: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                     n_boot: int = 2000, seed: int = 0, metric: str = "auc") -> BootstrapResult:
    """Paired cluster bootstrap over test users of the mean (over seeds) difference of a test
    metric between models a and b.

    Each replicate draws the U test users with replacement (U uniform integers from
    ``numpy.random.default_rng(seed)``, in chunks of :data:`BOOTSTRAP_CHUNK` replicates); a sample's
    weight is how often its user is drawn; the replicate's statistic is the mean over seeds s of
    metric(a, s) - metric(b, s) on the weighted sample. The same draws serve both models and
    every seed (paired). Resampling users, not impressions, keeps the dependence between a user's
    impressions (the cluster bootstrap: Davison & Hinkley 1997, section 3.8; the percentile
    interval: Efron & Tibshirani 1993, ch. 13).

    Args:
        labels: [N] 0/1 test labels; users: [N] test-user keys (the clusters).
        scores_a, scores_b: [S, N] (or [N]) logits of the two models, row s = seed s of both.
        n_boot: replicates (>= 1); seed: of the draws; metric: ``"auc"`` (weighted AUC, ties 1/2)
            or ``"logloss"`` (weighted mean binary cross-entropy of the logits).
    Returns :class:`BootstrapResult` (:func:`bootstrap_summary`): the observed difference (unit
    weights), the 2.5 / 97.5 percentiles of the replicates, and p = 2 x the share of replicates
    on the other side of 0 from the observed difference, floored at 1 / n_boot, capped at 1 (1 when
    the observed difference is 0).
    Raises ValueError on shapes that do not match, n_boot < 1 or an unknown metric.
    """
    a, b = np.atleast_2d(np.asarray(scores_a)), np.atleast_2d(np.asarray(scores_b))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: scores_a {a.shape} and scores_b {b.shape} must have the same shape [S, N]")
    s = a.shape[0]
    obs, reps = bootstrap_replicates(labels, users, np.concatenate([a, b]), n_boot, seed, metric)  # one set of draws
    return bootstrap_summary(float(np.mean(obs[:s] - obs[s:])), (reps[:, :s] - reps[:, s:]).mean(axis=1))


def is_finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
