"""Cross-machine check: the same runs (same run ids) trained on another machine, against our records.

A run id fixes everything that determines a result except the machine (PROTOCOL section 3: the same
seed gives bit-identical metrics only on the same CPU instruction set and library versions). This
module compares two run stores run by run and says, per dataset and model, how far the other
machine's test metrics lie from ours, next to the spread the seeds themselves give, so a reader can
tell whether a table's differences are larger than what a change of machine alone produces.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.report import MODEL_LABELS, Output, ReportError, Table
from bench.training.runs import RESULTS_VERSION


def machine_label(records: Sequence[dict[str, Any]]) -> str:
    """One line naming the machine(s) a set of records was made on (from each record's ``machine``)."""
    seen = sorted({(m.get("cpu", "?"), m.get("isa", "?")) for m in (r.get("machine") for r in records) if m})
    missing = sum(1 for r in records if not r.get("machine"))
    parts = [f"{cpu} (torch kernels {isa})" for cpu, isa in seen]
    if missing:
        parts.append(f"{missing} record(s) made before records named their machine")
    return "; ".join(parts) or "unknown"


def _history_key(rec: dict[str, Any]) -> list[tuple]:
    return [(h["epoch"], h.get("step"), h["valid"]["auc"], h["valid"]["logloss"], h.get("train_loss"))
            for h in rec["valid_history"]]


def pair_frame(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run id present in both: dataset, model, variant, seed, our and their test metrics,
    whether the whole validation history is bit-identical and whether the best epoch is the same."""
    by_id = {r["run_id"]: r for r in ours}
    rows = []
    for t in theirs:
        o = by_id.get(t["run_id"])
        if o is None:
            continue
        row = {"dataset": o["dataset"], "protocol": o["protocol"], "model": o["model"], "variant": o["variant"], "seed": o["seed"],
               "results_version": int(o.get("results_version", 1)),
               "run_id": o["run_id"], "identical": _history_key(o) == _history_key(t) and o["test"] == t["test"],
               "same_best_epoch": o["best_epoch"] == t["best_epoch"]}
        for m in ("auc", "logloss", "gauc"):
            row[f"ours_{m}"], row[f"theirs_{m}"] = float(o["test"][m]), float(t["test"][m])
        rows.append(row)
    return pd.DataFrame(rows)


def crosscheck_table(pairs: pd.DataFrame, dataset: str, ours_label: str, theirs_label: str,
                     source: str) -> Table:
    """Per model (and variant): runs compared, bit-identical runs, same best epoch, max and mean
    |delta test AUC|, |delta of the seed-mean AUC|, the seed std of our test AUC and the ratio of the
    machine's max |delta| to that std (< 1: a change of machine moves a run less than a change of
    seed does).

    Raises:
        ValueError: when ``pairs`` holds no run of ``dataset``.
    """
    sub = pairs[pairs["dataset"] == dataset]
    if sub.empty:
        raise ValueError(f"no run of {dataset} in both stores")
    rows, cells = [], []
    order = {m: i for i, m in enumerate(MODEL_LABELS)}
    mixed = sub["results_version"].nunique() > 1  # runs of two code versions: one row per version
    groups = sub.groupby(["model", "variant", "results_version"])
    for (model, variant, version), g in sorted(groups, key=lambda kv: (order.get(kv[0][0], 99), kv[0][1], kv[0][2])):
        d_auc = (g["theirs_auc"] - g["ours_auc"]).abs()
        d_ll = (g["theirs_logloss"] - g["ours_logloss"]).abs()
        std = float(g["ours_auc"].std(ddof=1)) if len(g) > 1 else float("nan")
        row = {
            "model": model, "variant": variant, "protocol": "+".join(sorted(set(g["protocol"]))), "runs": len(g), "bit_identical": int(g["identical"].sum()),
            "same_best_epoch": int(g["same_best_epoch"].sum()),
            "max_abs_delta_auc": float(d_auc.max()), "mean_abs_delta_auc": float(d_auc.mean()),
            "abs_delta_mean_auc": float(abs(g["theirs_auc"].mean() - g["ours_auc"].mean())),
            "max_abs_delta_logloss": float(d_ll.max()), "seed_std_auc": std,
            "ratio_max_delta_to_seed_std": float(d_auc.max() / std) if std > 0 else float("nan"),
            "results_version": int(version),
        }
        rows.append(row)
        label = (MODEL_LABELS.get(model, model) + ("" if variant == "default" else f" ({variant})")
                 + (f" [RESULTS_VERSION {version}]" if mixed else ""))
        cells.append({
            "Model": label, "Runs": str(row["runs"]), "Bit-identical": str(row["bit_identical"]),
            "Same best epoch": str(row["same_best_epoch"]),
            "max |Δ AUC|": f"{row['max_abs_delta_auc']:.2e}", "mean |Δ AUC|": f"{row['mean_abs_delta_auc']:.2e}",
            "|Δ mean AUC|": f"{row['abs_delta_mean_auc']:.2e}", "max |Δ logloss|": f"{row['max_abs_delta_logloss']:.2e}",
            "seed std AUC": "" if np.isnan(std) else f"{std:.4f}",
            "max |Δ| / seed std": "" if np.isnan(row["ratio_max_delta_to_seed_std"]) else f"{row['ratio_max_delta_to_seed_std']:.2f}",
        })
    csv = pd.DataFrame(rows)
    frame = pd.DataFrame(cells)
    over = csv[csv["ratio_max_delta_to_seed_std"] >= 1]
    verdict = ("for every model a change of machine moved test AUC less than the seed std"
               if over.empty else
               "for " + ", ".join(MODEL_LABELS.get(m, m) for m in over["model"]) +
               " a change of machine moved test AUC by at least the seed std: their differences in the tables "
               "below that size are within what the machine alone changes")
    notes = [
        f"ours: {ours_label}; theirs: {theirs_label}.",
        "Same run ids on both sides: same protocol, data fingerprint, model, config, seed and code version, "
        "one torch thread; only the machine differs. Δ = theirs - ours on the test split; seed std = sample std "
        "of our test AUC over the seeds compared.",
        f"Verdict: {verdict}.",
        f"Made by `{source}`.",
    ]
    return Table(title=f"Cross-machine check: {dataset}", frame=frame, csv=csv, bold=set(), underline=set(),
                 notes=notes)


def cross_machine_notes(dataset_dir) -> list[str]:
    """Notes for a dataset's tables, one per committed cross-machine check in
    ``<dataset_dir>/cross_machine/*.csv``: the largest change of a run's test AUC across machines
    next to the seed std, and the models whose machine spread reaches their seed std."""
    from pathlib import Path

    notes = []
    for path in sorted(Path(dataset_dir).glob("cross_machine/*.csv")):
        try:
            frame = pd.read_csv(path)
            version = int(frame["results_version"].max()) if "results_version" in frame else 1  # older checks: 1
            if "results_version" in frame:
                frame = frame[frame["results_version"] == version]  # a check of two versions: the newest one's rows
            worst = frame.loc[frame["max_abs_delta_auc"].idxmax()]
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            continue
        over = frame[frame["ratio_max_delta_to_seed_std"] >= 1]
        label = MODEL_LABELS.get(worst["model"], worst["model"])
        protocols = "+".join(sorted(set("+".join(frame["protocol"].astype(str)).split("+")))) if "protocol" in frame else "?"
        code = "" if version == RESULTS_VERSION else f" with the code of RESULTS_VERSION {version}, not this table's {RESULTS_VERSION}"
        text = (f"Another machine (cross_machine/{path.stem}.md, {int(frame['runs'].sum())} runs of {protocols} retrained{code}): test AUC of "
                f"a run moves by up to {worst['max_abs_delta_auc']:.1e} ({label}), mean "
                f"{float((frame['mean_abs_delta_auc'] * frame['runs']).sum() / frame['runs'].sum()):.1e}; ")
        if over.empty:
            text += "below the seed std for every model."
        else:
            text += ("at or above the seed std for " + ", ".join(MODEL_LABELS.get(m, m) for m in over["model"])
                     + ": differences of that size are within what a change of machine alone produces.")
        notes.append(text)
    return notes


def crosscheck_report(other_dir: Path, tag: str | None, results: Path) -> list[Output]:
    """Compare the run records under ``other_dir`` (a results folder or its runs/) with ours under
    ``results/runs``, run id by run id: per dataset ``results/<dataset>/cross_machine/<tag>.{md,csv,tex}``;
    the other machine's records of those runs are kept in ``results/machines/<tag>/runs/``. ``tag``
    (None: from their records' CPU and kernel ISA) is reduced to ``[a-z0-9-]``.
    Raises ReportError when no run of ``other_dir`` has a record of ours."""
    from bench.io import check_writable
    from bench.training.runs import RunStore

    check_writable(results, f"--results-dir {results}", "--results-dir")
    other_runs = other_dir / "runs" if (other_dir / "runs").is_dir() else other_dir
    theirs = list(RunStore(other_runs).records())
    ours = [r for r in (RunStore(results / "runs").load(t["run_id"]) for t in theirs) if r is not None]
    pairs = pair_frame(ours, theirs)
    if pairs.empty:
        raise ReportError(f"--other {other_dir}: none of its {len(theirs)} run records has a record of the "
                          f"same run id under {results / 'runs'}")
    by_id = {r["run_id"]: r for r in theirs}
    if tag is None:
        m = next((r["machine"] for r in theirs if r.get("machine")), {})
        tag = f"{m.get('cpu', 'unknown')}-{m.get('isa', '')}"
    tag = re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-") or "other"
    keep = RunStore(results / "machines" / tag / "runs")
    if keep.root.resolve() != other_runs.resolve():
        for rid in pairs["run_id"]:
            keep.save(by_id[rid])
    shown = keep.root.parent.relative_to(results.parent) if results.parent in keep.root.parents else keep.root.parent
    source = f"python cli.py crosscheck --other {shown} --name {tag}"
    outputs = []
    for ds in sorted(pairs["dataset"].unique()):
        ids = set(pairs.loc[pairs["dataset"] == ds, "run_id"])
        tab = crosscheck_table(pairs, ds, machine_label([r for r in ours if r["run_id"] in ids]),
                               machine_label([by_id[i] for i in ids]), source)
        outputs.append(Output(tab.markdown(), tab.write(results / ds / "cross_machine" / tag)))
    return outputs
