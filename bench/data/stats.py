"""Dataset statistics in the spirit of the paper's Table 1 (users, items, categories, samples).

Per split: samples, positive rate, distinct users / items / categories among the candidates,
mean behaviour-sequence length, share of empty sequences, the out-of-vocabulary rate of the
candidate item id, the user id and the behaviour item ids (vocabularies are fitted on train, so
train's rates are 0 for candidates and users by construction), and the share of the split's
distinct users that have a training sample. Computed once at prepare time and stored in the
cache's ``meta.json``; ``python cli.py prepare`` prints a summary (:func:`split_table`; a cache
prepared before the users-seen share existed lacks it, shown empty), ``python cli.py datasets``
renders and exports the :data:`CSV_COLUMNS` (the users-seen share is not one: the sample-level
``user_oov_rate`` is, and the CSV keeps its columns).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from bench.nn.contract import OOV
from bench.io import atomic_write_text
from bench.data.samples import SPLITS
from bench.data.store import LazySplit

#: columns of results/datasets.csv, in order
CSV_COLUMNS: tuple[str, ...] = (
    "dataset", "protocol", "split", "samples", "positive_rate", "users", "items", "categories",
    "mean_hist_len", "empty_hist_share", "item_oov_rate", "user_oov_rate", "hist_item_oov_rate",
    "fingerprint",
)


def split_stats(arrays: dict[str, np.ndarray], raw_items: np.ndarray,
                train_users: np.ndarray | None = None) -> dict[str, float | int]:
    """Statistics of one split.

    arrays: the split as :func:`bench.data.samples.build` gives it (a
        :class:`bench.data.store.LazySplit`: history lengths and behaviour OOV counts come from its
        offsets and event array, nothing [N, T] is gathered), or a dict of its canonical arrays
        (``item`` [N, F_i], ``hist`` [N, T, F_i], ``hist_mask`` [N, T], ``user`` [N, J], ``label``
        [N], ``user_index`` [N]); field 0 of ``item`` is the item id and field 0 of ``user`` the
        user id.
    raw_items: [N, F_i] raw candidate item fields (distinct counts are over raw values, so two
        out-of-vocabulary items still count as two).
    ``hist_item_oov_rate`` is over the behaviours' first field that they carry: the item id, or for
    behaviours without one (Taobao's behaviour log) the category.
    train_users: [N_train] ``user_index`` of the training split; when given, ``users_seen_in_train``
        is the share of this split's distinct users (raw keys) that have a training sample.
    """
    if isinstance(arrays, LazySplit):  # counts over the histories' events, from the offsets
        hist_len = arrays.lengths()
        F = arrays.events.shape[1]
        carried = [f for f in range(F) if arrays.history_counts(arrays.events[:, f] != 0).sum() > 0]
        k = carried[0] if carried else 0  # the item id; Taobao's log has none: category
        n_hist, n_hist_oov = int(hist_len.sum()), int(arrays.history_counts(arrays.events[:, k] == OOV).sum())
    else:
        mask = arrays["hist_mask"]
        hist_len = mask.sum(1)
        real = arrays["hist"][mask]  # [L, F_i] the real behaviours
        carried = np.flatnonzero((real != 0).any(0)) if len(real) else np.zeros(1, np.int64)
        hist_ids = real[:, carried[0] if len(carried) else 0]  # the item id; Taobao's log has none: category
        n_hist, n_hist_oov = int(hist_ids.size), int((hist_ids == OOV).sum())
    return {
        "samples": int(len(arrays["label"])),
        "positive_rate": float(arrays["label"].mean()),
        "users": int(len(np.unique(arrays["user_index"]))),
        "items": int(len(np.unique(raw_items[:, 0]))),
        "categories": int(len(np.unique(raw_items[:, 1]))) if raw_items.shape[1] > 1 else 0,
        "mean_hist_len": float(hist_len.mean()),
        "empty_hist_share": float((hist_len == 0).mean()),
        "item_oov_rate": float((arrays["item"][:, 0] == OOV).mean()),
        "user_oov_rate": float((arrays["user"][:, 0] == OOV).mean()),
        "hist_item_oov_rate": n_hist_oov / n_hist if n_hist else 0.0,
        **({"users_seen_in_train": float(np.isin(np.unique(arrays["user_index"]), train_users).mean())}
           if train_users is not None else {}),
    }


#: the columns :func:`split_table` prints (``prepare``'s summary): stats key -> header
SUMMARY_COLUMNS: dict[str, str] = {
    "samples": "samples", "positive_rate": "positive rate", "users": "users", "items": "items",
    "users_seen_in_train": "users seen in train", "user_oov_rate": "user_id OOV (samples)",
    "mean_hist_len": "mean hist len",
}


def split_table(split_stats: dict[str, dict]) -> str:
    """One row per split of ``split_stats`` (split -> :func:`split_stats` dict, as in ``meta.json``):
    :data:`SUMMARY_COLUMNS`, shares as percentages; a statistic the cache lacks is left empty."""
    from tabulate import tabulate

    shares = ("positive_rate", "users_seen_in_train", "user_oov_rate")
    rows = [[split, *(("" if k not in s else f"{100 * s[k]:.1f} %" if k in shares else
                       f"{s[k]:.2f}" if isinstance(s[k], float) else f"{s[k]:,}") for k in SUMMARY_COLUMNS)]
            for split, s in split_stats.items()]
    return tabulate(rows, headers=["split", *SUMMARY_COLUMNS.values()], tablefmt="github", disable_numparse=True)


def dataset_totals(item_attrs: np.ndarray, event_user: np.ndarray, user_key: np.ndarray) -> dict[str, int]:
    """Whole-dataset counts: users, items, categories (field 1 of the item table), events."""
    return {
        "users": int(len(np.unique(np.concatenate([event_user, user_key])))),
        "items": int(len(item_attrs)),
        "categories": int(len(np.unique(item_attrs[:, 1]))) if item_attrs.shape[1] > 1 else 0,
        "events": int(len(event_user)),
    }


def stats_rows(metas: list[dict]) -> list[dict]:
    """One row per dataset and split (CSV_COLUMNS) from cache ``meta.json`` dicts."""
    rows = []
    for m in metas:
        for split in SPLITS:
            s = m["stats"]["splits"][split]
            row = {"dataset": m["name"], "protocol": m["protocol"], "split": split,
                   "fingerprint": m["fingerprint"]}
            row.update({k: s[k] for k in CSV_COLUMNS if k in s})
            rows.append(row)
    return rows


def render_tables(metas: list[dict]) -> str:
    """Plain-text tables: whole-dataset totals, then per-split statistics."""
    from tabulate import tabulate

    totals = [
        {"dataset": m["name"], "protocol": m["protocol"], **m["stats"]["dataset"],
         "samples": sum(s["samples"] for s in m["stats"]["splits"].values()),
         "fingerprint": m["fingerprint"][:12]}
        for m in metas
    ]
    splits = [{k: v for k, v in r.items() if k not in ("protocol", "fingerprint")} for r in stats_rows(metas)]
    return (tabulate(totals, headers="keys", tablefmt="github") + "\n\n"
            + tabulate(splits, headers="keys", tablefmt="github", floatfmt=".4f"))


def write_csv_atomic(rows: list[dict], path: Path) -> Path:
    """Write ``rows`` (CSV_COLUMNS, floats to 6 decimals) to ``path`` via a temp file + rename.

    Rows already in ``path`` for datasets that ``rows`` does not cover are kept (a machine that
    has prepared only some datasets does not erase the statistics of the others)."""
    covered = {r["dataset"] for r in rows}
    kept: list[dict] = []
    if Path(path).exists():
        with open(path, newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("dataset") not in covered]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    for r in kept:
        writer.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    atomic_write_text(path, buf.getvalue())
    return path


def field_signal(train_values: np.ndarray, train_label: np.ndarray, valid_values: np.ndarray,
                 valid_label: np.ndarray) -> float:
    """Validation AUC of one field's target encoding fitted on train: each value is scored by its
    positive rate among the training samples (values unseen in train: the overall rate). 0.5 = the
    field alone says nothing about the label (e.g. a context shared by a positive and its sampled
    negative). Arrays are [N] integer indices and float labels; vectorised (np.unique + bincount).
    Raises ValueError when a split has one class only (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    vocab, inv = np.unique(train_values, return_inverse=True)
    pos = np.bincount(inv, weights=train_label, minlength=len(vocab))
    cnt = np.bincount(inv, minlength=len(vocab))
    rate = pos / cnt
    at = np.searchsorted(vocab, valid_values).clip(0, max(len(vocab) - 1, 0))
    seen = vocab[at] == valid_values if len(vocab) else np.zeros(len(valid_values), bool)
    score = np.where(seen, rate[at] if len(vocab) else 0.0, float(train_label.mean()))
    return float(roc_auc_score(valid_label, score))


def input_signal(ds) -> dict[str, dict[str, float]]:
    """What IUIM's and ICIM's inputs can tell about the label on a prepared dataset ``ds``
    (:class:`bench.data.PreparedDataset`): ``{"user": {field: AUC}, "context": {field: AUC}}``,
    each the :func:`field_signal` of one user-profile / context field, fitted on train and scored
    on the validation split (never test)."""
    train, valid = ds.train, ds.valid
    out: dict[str, Any] = {}
    for group, fields in (("user", ds.schema.user_fields), ("context", ds.schema.context_fields)):
        tr, va = getattr(train, group).numpy(), getattr(valid, group).numpy()
        out[group] = {f.name: field_signal(tr[:, j], train.label.numpy(), va[:, j], valid.label.numpy())
                      for j, f in enumerate(fields)}
    out["balanced_user_context"] = balanced_share(train.user_index.numpy(), train.context.numpy(),
                                                  train.label.numpy())
    return out


def balanced_share(users: np.ndarray, context: np.ndarray, label: np.ndarray) -> float:
    """Share of the samples [N] whose (user, context) group [N], [N, K] holds as many positives as
    negatives: 1.0 when every positive is paired with sampled negatives that share its user and
    context (Amazon's protocol), so that the user and context alone cannot tell a positive from
    its negatives and only their interaction with the candidate item can. Vectorised
    (np.unique over the rows, bincount)."""
    if len(label) == 0:
        return 0.0
    keys = np.column_stack([users.reshape(-1, 1), context.reshape(len(label), -1)])
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    pos = np.bincount(inv, weights=label)
    cnt = np.bincount(inv)
    return float(np.mean((2 * pos == cnt)[inv]))


def input_signal_note(signal: dict[str, Any]) -> str:
    """One table note from :func:`input_signal`: how many fields IUIM and ICIM attend over, the
    validation AUC of each field alone, and what follows when there is little to learn: with J = 1
    IUIM's softmax over one field is identically 1 (exact); with every context field within 0.005
    of AUC 0.5 the context has no marginal signal, and when moreover every (user, context) group of
    train is label-balanced (each positive shares its user and context with its sampled negatives)
    the context can only help through its interaction with the candidate item."""
    def fields(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in d.items()) or "none"

    user, ctx = signal.get("user", {}), signal.get("context", {})
    parts = [f"Inputs of IUIM and ICIM on this data (validation AUC of each field alone, its positive rate "
             f"fitted on train): user fields (J = {len(user)}): {fields(user)}; context fields "
             f"(K = {len(ctx)}): {fields(ctx)}."]
    if len(user) == 1:
        parts.append("With J = 1 IUIM's softmax over one field is identically 1: R_iuim is [e_i; e_u] whatever is "
                     "learned, so 'w/o IUIM' only removes a copy of inputs the model already has.")
    balanced = signal.get("balanced_user_context")
    if ctx and max(abs(v - 0.5) for v in ctx.values()) < 0.005:
        parts.append("No context field predicts the label alone (every AUC within 0.005 of 0.5).")
        if balanced is not None and balanced >= 0.999:
            parts.append(f"In {balanced:.1%} of the training samples the (user, context) group holds as many "
                         "positives as negatives (each positive shares its user and context with its sampled "
                         "negatives), so the context can only help through its interaction with the candidate "
                         "item: 'w/o ICIM' tests that interaction, not a context signal.")
    return " ".join(parts)
