"""The tables and figure of ``python cli.py tune`` (issue 15): per model every trial, a summary of
the best configuration per model against the default, and the best-so-far curves
(:mod:`bench.training.tuning` runs the studies)."""
from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from bench.training.config import ConfigError, config_path, resolve_config
from bench.training.tuning import Space, StudyResult


def default_valid_auc(records: Sequence[dict[str, Any]], dataset: str, model: str, fingerprint: str
                      ) -> tuple[float, int]:
    """(mean best-epoch validation AUC, number of seeds) of the protocol's default runs of ``model``
    on ``dataset`` in ``records`` (variant default, the protocol config, this data fingerprint);
    (NaN, 0) when there is none. Nothing is trained for it."""
    from bench.training.studies import draws_curves

    try:
        config = resolve_config(dataset, model, curves=draws_curves(model, "default"))
    except ConfigError:
        return math.nan, 0
    vals = [float(r["valid"]["auc"]) for r in records if r.get("dataset") == dataset and r.get("model") == model
            and r.get("variant") == "default" and r.get("fingerprint") == fingerprint and r.get("config") == config]
    return (statistics.fmean(vals), len(vals)) if vals else (math.nan, 0)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "0" if v == 0 else f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)


def _raw(v: Any) -> Any:
    """A config value for a CSV cell: the number itself (full precision), a list as JSON."""
    return json.dumps(v) if isinstance(v, (list, tuple)) else v


def _common_notes(space: Space, ds: Any, tcfg: dict[str, Any]) -> list[str]:
    return [f"search space of {space.model} ({config_path(space.dataset).name} [tuning]): " + "; ".join(space.lines()),
            f"Optuna TPESampler, study seed {space.study_seed} (each trial's sampler seeded from it and the trial "
            f"number); every trial trains with model seed {space.seed}; pruner: none (the same for every model)",
            f"objective: best-epoch validation AUC; the test split is never scored by a trial; epoch cap "
            f"{tcfg['max_epochs']}, patience {tcfg['patience']}, embedding size fixed by the protocol",
            f"protocol {ds.protocol}, data fingerprint {ds.fingerprint[:16]}"]


def trials_table(result: StudyResult, ds: Any):
    """The :class:`bench.report.Table` of every trial of ``result``: trial, state, validation AUC,
    best so far, epochs run, best epoch, each tuned key, run id."""
    import pandas as pd

    from bench.report import Table, model_label

    keys = [p.key for p in result.space.params]
    rows, csv, best = [], [], -math.inf
    for t in result.trials:
        if t["state"] == "complete":
            best = max(best, t["value"])
        rows.append([str(t["number"]), t["state"], f"{t['value']:.4f}" if t["state"] == "complete" else "—",
                     f"{best:.4f}" if best > -math.inf else "—", str(t["epochs"] or "—"), str(t["best_epoch"] or "—"),
                     *[_fmt(t["params"][k]) if k in t["params"] else "—" for k in keys], t["run_id"]])
        csv.append({"trial": t["number"], "state": t["state"], "valid_auc": t["value"],
                    "best_so_far": best if best > -math.inf else math.nan, "epochs": t["epochs"],
                    "best_epoch": t["best_epoch"], **{k: _raw(t["params"].get(k, "")) for k in keys},
                    "run_id": t["run_id"], "error": t["error"]})
    columns = ["trial", "state", "valid AUC", "best so far", "epochs", "best epoch", *keys, "run id"]
    tcfg = resolve_config(result.space.dataset, result.space.model)["train"]
    notes = _common_notes(result.space, ds, tcfg) + [
        f"{len(result.trials)} of {result.budget} trials finished; study {result.name}"]
    return Table(f"Tuning {model_label(result.space.model)} on {ds.name} (validation AUC per trial)",
                 pd.DataFrame(rows, columns=columns), pd.DataFrame(csv), set(), set(), notes)


def summary_table(results: Sequence[StudyResult], ds: Any, records: Sequence[dict[str, Any]],
                  pending: Sequence[str] = ()):
    """Best config per model, budget used, best validation AUC of the default config (mean of the
    protocol's default runs present, seeds noted) and the tuned one; ``pending``: the models of the
    command whose studies have not run yet (a note names them)."""
    import pandas as pd

    from bench.report import Table, model_label

    rows, csv = [], []
    for r in results:
        best = r.best()
        d, n = default_valid_auc(records, ds.name, r.space.model, ds.fingerprint)
        failed = sum(t["state"] == "fail" for t in r.trials)
        rows.append([model_label(r.space.model), f"{len(r.trials)}/{r.budget}", str(failed),
                     f"{d:.4f} ({n} seeds)" if n else "— (no default run)",
                     f"{best['value']:.4f}" if best else "—", str(best["number"]) if best else "—",
                     "; ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items()) if best else "—"])
        csv.append({"model": r.space.model, "trials": len(r.trials), "budget": r.budget, "failed": failed,
                    "default_valid_auc": d, "default_seeds": n, "tuned_valid_auc": best["value"] if best else math.nan,
                    "best_trial": best["number"] if best else None,
                    "best_params": json.dumps(best["params"], sort_keys=True) if best else "",
                    "best_run_id": best["run_id"] if best else ""})
    tcfg = resolve_config(ds.name, results[0].space.model)["train"] if results else {"max_epochs": "?", "patience": "?"}
    s0 = results[0].space if results else None
    notes = [f"every model: the same number of trials, epoch cap {tcfg['max_epochs']}, patience {tcfg['patience']}, "
             f"pruner none, the protocol's embedding size; TPESampler study seed {s0.study_seed if s0 else '?'}, trial "
             f"model seed {s0.seed if s0 else '?'}; objective best-epoch validation AUC; no trial scores the test split",
             "default: the mean best-epoch validation AUC of the protocol's default runs (seeds 0-4 where present; "
             "another seed than the trials', so it is a reference, not a paired comparison)",
             f"protocol {ds.protocol}, data fingerprint {ds.fingerprint[:16]}"]
    if pending:
        notes.append(f"in progress: the studies of {', '.join(model_label(m) for m in pending)} have not run yet "
                     "(python cli.py tune resumes from the trials' run records)")
    notes += [f"search space of {r.space.model}: " + "; ".join(r.space.lines()) for r in results]
    return Table(f"Tuning on {ds.name}: best configuration per model (validation AUC)",
                 pd.DataFrame(rows, columns=["model", "trials", "failed", "default valid AUC", "tuned valid AUC",
                                             "best trial", "best configuration"]),
                 pd.DataFrame(csv), set(), set(), notes)


def tuning_png(results: Sequence[StudyResult], title: str) -> bytes:
    """tuning.png: best-so-far validation AUC against the trial number, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import model_label

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    try:
        for r in results:
            xs, ys, best = [], [], -math.inf
            for t in r.trials:
                if t["state"] == "complete":
                    best = max(best, t["value"])
                if best > -math.inf:
                    xs.append(t["number"] + 1)
                    ys.append(best)
            if xs:
                ax.plot(xs, ys, marker=".", label=model_label(r.space.model))
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("best validation AUC so far")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, results: Sequence[StudyResult], ds: Any, records: Sequence[dict[str, Any]],
                  pending: Sequence[str] = ()) -> list[Path]:
    """Write ``<out>/<model>.{md,csv}`` for each study, ``<out>/summary.md`` and ``<out>/tuning.png``
    as one publication (:func:`bench.io.atomic_write_many`: nothing half-written; each table's md and
    csv carry the same stamp); ``pending`` as in :func:`summary_table`. Returns the paths."""
    from bench.io import atomic_write_many

    files: dict[Path, bytes] = {}
    for r in results:
        tab = trials_table(r, ds)
        stamp = tab.stamp()
        tab.notes.append(f"table stamp {stamp}: the .md and .csv (column table_stamp) of this table were written "
                         "together and carry the same stamp")
        files[out / f"{r.space.model}.md"] = tab.markdown().encode("utf-8")
        files[out / f"{r.space.model}.csv"] = tab.csv_text(stamp).encode("utf-8")
    summary = summary_table(results, ds, records, pending)
    files[out / "summary.md"] = summary.markdown().encode("utf-8")
    files[out / "tuning.png"] = tuning_png(results, f"{ds.name}: tuning ({results[0].budget if results else 0} "
                                                    "trials per model)")
    atomic_write_many(files)
    return list(files)
