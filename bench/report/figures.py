"""Figures: Figure 5 (convergence of the Transformer variants) and Figure 6 (GIM weights heatmap).

matplotlib with the non-interactive Agg backend; seaborn for the heatmap. Files are written
atomically (rendered to memory, then replaced).
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.io import atomic_write_bytes  # noqa: E402

# GIM inputs in the order of Eq. (14) (the model's output order) ...
GIM_INPUTS = ("e_i", "e_c", "e_b", "e_u", "R_ibim", "R_iuim", "R_icim")
# ... and the row order of the paper's Figure 6 (original / interactive pairs)
FIGURE6_ROWS = ("e_c", "R_icim", "e_u", "R_iuim", "e_i", "R_ibim", "e_b")
# interactive representation -> the original one it is compared with
PAIRS = (("R_ibim", "e_b"), ("R_iuim", "e_u"), ("R_icim", "e_c"))
#: colormap of the Figure 6 heatmap (sequential: GIM weights are all positive)
HEATMAP_CMAP = "rocket_r"


def _save(fig: plt.Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def gim_heatmap(weights: pd.DataFrame, path: Path, title: str) -> None:
    """Figure 6: rows = FIGURE6_ROWS (horizontal labels), columns = cases, annotated cells, on the
    sequential colormap HEATMAP_CMAP from 0 (light) to the largest weight (at least 0.3; dark).

    Args:
        weights: one row per case, one column per GIM input (names of GIM_INPUTS), rows sum to 1.
        path: PNG to write.
    Raises ValueError when a column is missing or a case's weights do not sum to 1 (atol 1e-4).
    """
    missing = [c for c in FIGURE6_ROWS if c not in weights.columns]
    if missing:
        raise ValueError(f"GIM weights lack column(s) {missing}")
    sums = weights[list(GIM_INPUTS)].sum(axis=1).to_numpy()
    if not np.allclose(sums, 1.0, atol=1e-4):
        raise ValueError(f"each case's GIM weights must sum to 1, got sums {sums.round(4).tolist()}")
    mat = weights[list(FIGURE6_ROWS)].T
    mat.columns = [str(i + 1) for i in range(mat.shape[1])]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * mat.shape[1], 4.2))
    # the weights are all positive (a softmax): a sequential colormap, light = 0 .. dark = the largest
    sns.heatmap(mat, annot=True, fmt=".2f", cmap=HEATMAP_CMAP, vmin=0.0, vmax=max(0.3, float(mat.values.max())),
                cbar_kws={"label": "GIM weight (Eq. 15 softmax)"}, ax=ax, annot_kws={"size": 8})
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xlabel("case")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def convergence_plot(curves: pd.DataFrame, labels: dict[str, str], path: Path, title: str) -> None:
    """Figure 5: validation AUC and logloss against optimiser steps, one line per variant (mean
    over seeds at each evaluated step) with a band of ± one sample std; a step is drawn while at
    least half of the variant's seeds are still training (runs stop early at different steps).

    Args:
        curves: columns variant, seed, step, auc, logloss (``bench.report.convergence_curves``).
        labels: variant -> legend label (order = legend order).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    palette = sns.color_palette("deep", n_colors=max(3, len(labels)))
    for (variant, label), colour in zip(labels.items(), palette):
        g = curves[curves["variant"] == variant]
        if g.empty:
            continue
        stats = g.groupby("step").agg(auc=("auc", "mean"), auc_sd=("auc", "std"), ll=("logloss", "mean"),
                                      ll_sd=("logloss", "std"), n=("seed", "nunique")).reset_index()
        # runs stop early at different steps: draw a step only while at least half the seeds run
        stats = stats[stats["n"] >= -(-g["seed"].nunique() // 2)]
        for ax, m, sd in ((axes[0], "auc", "auc_sd"), (axes[1], "ll", "ll_sd")):
            ax.plot(stats["step"], stats[m], color=colour, label=f"{label} (n={g['seed'].nunique()})", lw=1.6)
            band = stats[sd].fillna(0.0)
            ax.fill_between(stats["step"], stats[m] - band, stats[m] + band, color=colour, alpha=0.18, lw=0)
    axes[0].set_ylabel("validation AUC")
    axes[1].set_ylabel("validation logloss")
    for ax in axes:
        ax.set_xlabel("training steps (batches of the train split)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def select_cases(labels: np.ndarray, n: int, seed: int, positives_only: bool = True) -> np.ndarray:
    """Reproducible choice of ``n`` test cases: uniformly at random (numpy Generator seeded with
    ``seed``) among the positive samples (or all samples), returned in ascending index order.

    Raises ValueError when fewer than ``n`` candidates exist."""
    pool = np.flatnonzero(labels > 0.5) if positives_only else np.arange(len(labels))
    if len(pool) < n:
        raise ValueError(f"asked for {n} cases but the split has only {len(pool)} candidates")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n, replace=False))


def gim_summary(weights: np.ndarray) -> dict[str, dict[str, float]]:
    """Over all samples: mean weight of each GIM input and, for each interactive/original pair,
    the share of samples where the interactive one has the larger weight.

    Args:
        weights: [N, 7] in GIM_INPUTS order.
    """
    w = np.asarray(weights, dtype=np.float64)
    idx = {n: i for i, n in enumerate(GIM_INPUTS)}
    return {
        "mean_weight": {n: float(w[:, i].mean()) for n, i in idx.items()},
        "share_interactive_larger": {f"{a}>{b}": float((w[:, idx[a]] > w[:, idx[b]]).mean()) for a, b in PAIRS},
    }


#: the cluster bootstrap of the Figure 6 shares (:func:`share_interval`): replicates, the seed of
#: numpy's default_rng, the level of the percentile interval
BOOTSTRAP = {"replicates": 2000, "rng_seed": 2021, "level": 0.95}
#: replicates drawn at once (bounds the [block, users] matrix of user counts in memory)
_BOOTSTRAP_BLOCK = 100


def share_interval(weights, users: np.ndarray, replicates: int = BOOTSTRAP["replicates"],
                   rng_seed: int = BOOTSTRAP["rng_seed"], level: float = BOOTSTRAP["level"]) -> dict:
    """Figure 6 over several seeds' models: for each interactive/original pair of :data:`PAIRS`,
    the share of test samples where the interactive representation has the larger GIM weight,
    per seed and averaged over the seeds, with a percentile interval over test samples and seeds.

    The interval is a cluster bootstrap over test users: a replicate draws as many users as the
    split has, with replacement (numpy ``default_rng(rng_seed)``), keeps all samples of each drawn
    user (as often as drawn), computes each seed's share on those samples and averages it over the
    seeds; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the
    replicates. Users are the unit because one user's samples share a history and a profile (they
    are not independent). The seeds are resampled as well: each replicate also draws S of the S
    seeds with replacement and averages the drawn seeds' shares, so the interval covers both the
    test-sample noise and the seed-to-seed spread of the trained models (two-stage bootstrap). Vectorised: the replicates are a [replicates, users] matrix of
    user counts (drawn in blocks of rows), multiplied by per-user tallies.

    Args:
        weights: one [N, 7] array per seed (GIM_INPUTS order), the same N test samples in each.
        users: [N] user key of each sample (the split's ``user_index``).
    Returns: {"mean_weight": {input: mean over seeds and samples}, "share_per_seed": {"a>b": [one
        per seed]}, "share": {"a>b": mean over seeds}, "interval": {"a>b": [low, high]},
        "bootstrap": {"unit", "users", "replicates", "rng_seed", "level", "method"}}.
    Raises ValueError for no seed, arrays of another shape than [N, 7] or users of another length.
    """
    w = [np.asarray(x, dtype=np.float64) for x in weights]
    users = np.asarray(users)
    if not w:
        raise ValueError("share_interval needs the GIM weights of at least one seed")
    n = users.shape[0] if users.ndim == 1 else -1
    bad = [i for i, x in enumerate(w) if x.shape != (n, len(GIM_INPUTS))]
    if n < 1 or bad:
        raise ValueError(f"share_interval: every seed's weights must be [N, {len(GIM_INPUTS)}] with N = "
                         f"len(users) = {users.shape}; got shapes {[x.shape for x in w]}")
    W = np.stack(w)  # [S, N, 7]
    S = W.shape[0]
    idx = {name: i for i, name in enumerate(GIM_INPUTS)}
    keys = [f"{a}>{b}" for a, b in PAIRS]
    larger = np.stack([W[:, :, idx[a]] > W[:, :, idx[b]] for a, b in PAIRS])  # [P, S, N]
    _, code = np.unique(users, return_inverse=True)
    U = int(code.max()) + 1
    per_user = np.bincount(code, minlength=U).astype(np.float64)  # samples of each user [U]
    P = len(PAIRS)
    flat = (np.arange(P * S)[:, None] * U + code[None, :]).ravel()
    tally = np.bincount(flat, weights=larger.reshape(P * S, n).ravel(), minlength=P * S * U).reshape(P, S, U)
    rng = np.random.default_rng(rng_seed)
    boot = np.empty((replicates, P))
    for start in range(0, replicates, _BOOTSTRAP_BLOCK):
        b = min(_BOOTSTRAP_BLOCK, replicates - start)
        draws = rng.integers(0, U, size=(b, U))
        counts = np.bincount((np.arange(b)[:, None] * U + draws).ravel(), minlength=b * U).reshape(b, U)
        counts = counts.astype(np.float64)
        share = np.einsum("ru,psu->rps", counts, tally) / (counts @ per_user)[:, None, None]  # [b, P, S]
        seeds = rng.integers(0, S, size=(b, S))  # the seeds, resampled too: S draws with replacement
        seed_w = np.bincount((np.arange(b)[:, None] * S + seeds).ravel(), minlength=b * S).reshape(b, S) / S
        boot[start : start + b] = np.einsum("rps,rs->rp", share, seed_w)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
    per_seed = larger.mean(-1)  # [P, S]
    return {
        "mean_weight": {name: float(W[:, :, i].mean()) for name, i in idx.items()},
        "share_per_seed": {k: [float(x) for x in per_seed[j]] for j, k in enumerate(keys)},
        "share": {k: float(per_seed[j].mean()) for j, k in enumerate(keys)},
        "interval": {k: [float(lo[j]), float(hi[j])] for j, k in enumerate(keys)},
        "bootstrap": {"unit": "test user (all samples of a drawn user) and seed, each drawn with replacement", "users": U,
                      "replicates": replicates, "rng_seed": rng_seed, "level": level,
                      "method": "percentile; each replicate averages its drawn seeds' shares"},
    }
