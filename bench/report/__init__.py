"""Tables from run records: aggregation over seeds, significance, markdown / CSV / LaTeX writers.

Every figure here is computed from run records (``results/runs``); nothing is typed in by hand
except the paper's own numbers (:mod:`bench.report.paper`, from ../shared/paper/MIAN.md section 6),
shown beside ours for orientation only.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from bench.io import atomic_write_many
from bench.metrics import impr, rela_impr
from bench.report.paper import PAPER_TABLE2, PAPER_TABLE2_DATASETS, PAPER_TABLE3, PAPER_TABLE4  # noqa: F401 (re-exported)


class ReportError(Exception):
    """A table or figure that cannot be made from what there is (no run records, no earlier figure to
    redraw, too few test cases); ``option``: the command-line option whose value is at fault, if one is."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


@dataclass
class Output:
    """What a command prints: ``text``, then a line naming the files it wrote (none: no line)."""

    text: str
    paths: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [self.text] + (["wrote " + ", ".join(str(p) for p in self.paths)] if self.paths else [])


def model_label(name: str) -> str:
    """The tables' label of model ``name`` (its module's LABEL, :data:`bench.training.registry.MODEL_LABELS`);
    the name itself for a model the registry does not list."""
    from bench.training.registry import MODEL_LABELS  # imports the models (torch) only when a label is needed

    return MODEL_LABELS.get(name, name)


def __getattr__(name: str) -> Any:
    """``bench.report.MODEL_LABELS``: the registry's, read when first asked for (PEP 562)."""
    if name == "MODEL_LABELS":
        from bench.training.registry import MODEL_LABELS

        return MODEL_LABELS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METRICS = ("auc", "logloss", "gauc")
HIGHER_IS_BETTER = {"auc": True, "logloss": False, "gauc": True}


def per_seed(records: Sequence[dict[str, Any]], group: str, name: str, metric: str) -> dict[int, float]:
    """{seed: test metric} of the records whose ``group`` key equals ``name``."""
    return {int(r["seed"]): float(r["test"][metric]) for r in records if r[group] == name}


def aggregate(records: Sequence[dict[str, Any]], group: str, order: Sequence[str]) -> pd.DataFrame:
    """One row per ``group`` value in ``order`` (those with records): n_seeds and mean/std
    (sample std, ddof=1; NaN for one seed) of each test metric."""
    rows = []
    for name in order:
        recs = [r for r in records if r[group] == name]
        if not recs:
            continue
        row: dict[str, Any] = {group: name, "n_seeds": len({r["seed"] for r in recs})}
        for m in METRICS:
            vals = np.array([float(r["test"][m]) for r in recs])
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        row["wall_seconds"] = float(sum(sum(r["wall_seconds"].values()) for r in recs))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_test(a: dict[int, float], b: dict[int, float]) -> float:
    """Two-sided paired t-test p-value over the seeds both dicts share; NaN with < 2 pairs or
    zero variance of the differences."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return float("nan")
    x = np.array([a[s] for s in seeds])
    y = np.array([b[s] for s in seeds])
    if np.allclose(x - y, (x - y)[0]):
        return float("nan")
    return float(stats.ttest_rel(x, y).pvalue)


def fmt_delta(x: float, digits: int = 4) -> str:
    """Signed difference with ``digits`` decimals; a value that rounds to zero prints as +0.0000
    (never -0.0000)."""
    r = round(float(x), digits)
    return f"{(r if r != 0 else 0.0):+.{digits}f}"


def fmt_pm(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


@dataclass
class Table:
    """A rendered table: the data frame behind it, its CSV frame and the notes under it."""

    title: str
    frame: pd.DataFrame  # display cells, strings
    csv: pd.DataFrame  # numbers
    bold: set[tuple[int, str]]
    underline: set[tuple[int, str]]
    notes: list[str]

    def markdown(self, stamp: str | None = None) -> str:
        """The table in GitHub markdown, its notes as a list under it (with ``stamp``: a last note
        saying which write the file belongs to, see :meth:`write`)."""
        cells = self.frame.copy()
        for (i, col) in self.underline:
            cells.iat[i, cells.columns.get_loc(col)] = f"<u>{cells.iat[i, cells.columns.get_loc(col)]}</u>"
        for (i, col) in self.bold:
            cells.iat[i, cells.columns.get_loc(col)] = f"**{cells.iat[i, cells.columns.get_loc(col)]}**"
        body = tabulate(cells.values.tolist(), headers=list(cells.columns), tablefmt="github", disable_numparse=True)
        notes = "\n".join(f"- {n}" for n in self.notes + ([_stamp_note(stamp)] if stamp else []))
        return f"### {self.title}\n\n{body}\n\n{notes}\n"

    def latex(self, stamp: str | None = None) -> str:
        cells = self.frame.copy().astype(str)
        cells = cells.map(_tex_escape)
        for (i, col) in self.underline:
            j = cells.columns.get_loc(col)
            cells.iat[i, j] = f"\\underline{{{cells.iat[i, j]}}}"
        for (i, col) in self.bold:
            j = cells.columns.get_loc(col)
            cells.iat[i, j] = f"\\textbf{{{cells.iat[i, j]}}}"
        headers = [_tex_escape(c) for c in cells.columns]
        body = tabulate(cells.values.tolist(), headers=headers, tablefmt="latex_raw", disable_numparse=True)
        notes = "\n".join(f"% {n}" for n in self.notes + ([_stamp_note(stamp)] if stamp else []))
        return f"% {self.title}\n{body}\n{notes}\n"

    def csv_text(self, stamp: str | None = None) -> str:
        """The numbers as CSV (with ``stamp``: a last column ``table_stamp`` holding it)."""
        frame = self.csv if stamp is None else self.csv.assign(table_stamp=stamp)
        buf = io.StringIO()
        frame.to_csv(buf, index=False, float_format="%.6g")
        return buf.getvalue()

    def stamp(self) -> str:
        """12 hex digits of sha256 over the md, csv and tex text without the stamp: one value for
        the three files of one write."""
        h = hashlib.sha256()
        for text in (self.markdown(), self.csv_text(), self.latex()):
            h.update(text.encode("utf-8") + b"\0")
        return h.hexdigest()[:12]

    def write(self, stem: Path) -> list[Path]:
        """Write ``<stem>.md``, ``.csv`` and ``.tex`` as one publication; returns the paths.

        The three are written to temporary files first and renamed into place only when all are
        complete (:func:`bench.io.atomic_write_many`), and each carries the same :meth:`stamp`
        (the md's and the tex's last note, the csv's ``table_stamp`` column), so a reader can tell
        that they belong together even if a kill fell between two renames."""
        stem = Path(stem)
        stamp = self.stamp()
        out = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".tex")]
        atomic_write_many({out[0]: self.markdown(stamp).encode("utf-8"), out[1]: self.csv_text(stamp).encode("utf-8"),
                           out[2]: self.latex(stamp).encode("utf-8")})
        return out


def _stamp_note(stamp: str) -> str:
    return (f"table stamp {stamp}: the .md, .csv (column table_stamp) and .tex of this table were written together "
            "and carry the same stamp")


def _tex_escape(s: str) -> str:
    return (
        str(s).replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%")
        .replace("_", "\\_").replace("#", "\\#").replace("±", "$\\pm$")
    )


def best_index(values: Sequence[float], higher: bool) -> int | None:
    arr = np.array(values, dtype=float)
    if np.all(np.isnan(arr)):
        return None
    return int(np.nanargmax(arr) if higher else np.nanargmin(arr))


def capped_notes(recs: Sequence[dict[str, Any]]) -> list[str]:
    """One note per model whose best epoch was the last allowed epoch (``max_epochs``) in some run:
    its row is limited by the cap, not selected by early stopping."""
    out = []
    for model in dict.fromkeys(r["model"] for r in recs):
        runs = [r for r in recs if r["model"] == model]
        cap = [r.get("config", {}).get("train", {}).get("max_epochs") for r in runs]
        capped = [c for r, c in zip(runs, cap) if c is not None and r.get("best_epoch") == c]
        if capped:
            out.append(
                f"{model_label(model)}: the best epoch was the last allowed one (max_epochs = "
                f"{capped[0]}) in {len(capped)} of {len(runs)} runs: still improving "
                "when training stopped, so this row is limited by the epoch cap, not chosen by early stopping."
            )
    return out


def main_table(
    records: Sequence[dict[str, Any]],
    dataset: str,
    models: Sequence[str],
    proposed: str = "mian",
) -> Table:
    """The paper's Table 2 on one dataset from its run records.

    Rows: models in the paper's order with AUC / logloss / gAUC mean ± std over seeds; the
    proposed model's row also carries Impr (paper's relative change) and RelaImpr of AUC against
    the best baseline (highest mean AUC) and the paired t-test p-value over seeds. Best baseline
    underlined, best overall bold, per metric column.
    Raises ValueError when ``records`` hold no run of ``dataset``.
    """
    recs = [r for r in records if r["dataset"] == dataset]
    if not recs:
        raise ValueError(f"no run records for dataset {dataset!r}")
    agg = aggregate(recs, "model", models).reset_index(drop=True)
    baselines = [i for i, m in enumerate(agg["model"]) if m != proposed]
    frame = pd.DataFrame(
        {
            "Model": [model_label(m) for m in agg["model"]],
            "Seeds": agg["n_seeds"].astype(str),
            **{c: [fmt_pm(a, s) for a, s in zip(agg[f"{m}_mean"], agg[f"{m}_std"])] for c, m in MAIN_COLUMNS.items()},
        }
    )
    csv = agg[["model", "n_seeds"] + [f"{m}_{k}" for m in METRICS for k in ("mean", "std")]].copy()
    notes = _improvement_columns(frame, csv, agg, recs, proposed, baselines)
    for j, label in enumerate(PAPER_TABLE2_DATASETS):
        vals = [PAPER_TABLE2.get(m, (float("nan"),) * 3)[j] for m in agg["model"]]
        frame[f"paper {label} AUC"] = [f"{v:.4f}" if not math.isnan(v) else "" for v in vals]
        csv[f"paper_{label.lower()}_auc"] = vals
    bold, underline = _best_cells(agg, baselines)
    notes += [
        "Test-split metrics, mean ± sample std over seeds; bold = best overall, underlined = best baseline (per column).",
        "paper * AUC: the MIAN paper's Table 2 on its own datasets and protocol, for orientation only (not comparable).",
        _provenance(recs),
        machines_note(recs),
        f"total wall time of these runs: {_wall_minutes(recs):.1f} min (train + eval, summed over runs); "
        f"{len(recs)} run record{'s' if len(recs) != 1 else ''} (runs/<run_id>.json in the results folder)",
    ]
    notes += capped_notes(recs)
    act = activation_note(recs, models)
    if act:
        notes.append(act)
    return Table(title=f"Table 2 reproduction: {dataset}", frame=frame, csv=csv, bold=bold, underline=underline,
                 notes=notes)


#: each model's own paper's MLP activation and where it is stated (issue 14: the same footing,
#: stated per model); MIAN's paper does not say (MIAN.md 7.6)
PAPER_ACTIVATION = {
    "wide_deep": ("relu", "its paper"), "dcn": ("relu", "its paper"), "deepfm": ("relu", "its paper"),
    "xdeepfm": ("relu", "its paper"), "din": ("dice", "its paper, Sec. 4.4"), "dien": ("dice", "its paper's code"),
    "mian": (None, "not stated by the MIAN paper (MIAN.md 7.6): ReLU as the other non-DIN models; Dice and "
                   "PReLU are measured as readings (readings.md)"),
}


def activation_note(recs: Sequence[dict[str, Any]], models: Sequence[str]) -> str | None:
    """The table note saying each model's MLP activation as its records were made (config
    ``mlp_activation``) and whose choice it is (:data:`PAPER_ACTIVATION`); None when no record
    has an MLP activation."""
    seen: dict[str, set[str]] = {}
    for r in recs:
        act = r.get("config", {}).get("model", {}).get("mlp_activation")
        if act is not None:
            seen.setdefault(r["model"], set()).add(act)
    parts = []
    for m in models:
        if m not in seen:
            continue
        used = "/".join(sorted(seen[m]))
        paper, where = PAPER_ACTIVATION.get(m, (None, ""))
        if paper is not None and seen[m] != {paper}:
            where = f"set for these runs; {where}: {paper}"
        parts.append(f"{model_label(m)} {used}" + (f" ({where})" if where else ""))
    if not parts:
        return None
    return "MLP activation: " + "; ".join(parts) + (". LR has no MLP." if "lr" in models else ".")


#: Table 2's metric columns: header -> metric
MAIN_COLUMNS = {"AUC": "auc", "Logloss": "logloss", "gAUC": "gauc"}


def _improvement_columns(frame: pd.DataFrame, csv: pd.DataFrame, agg: pd.DataFrame, recs: Sequence[dict[str, Any]],
                         proposed: str, baselines: list[int]) -> list[str]:
    """Add Table 2's columns Impr AUC, Impr Logloss, RelaImpr and p (AUC) (filled on the proposed
    model's row only, against the best baseline by mean AUC) to ``frame`` and ``csv``; returns the
    note explaining them (none without a proposed row or a baseline)."""
    cells = {c: [""] * len(agg) for c in ("Impr AUC", "Impr Logloss", "RelaImpr", "p (AUC)")}
    for c in ("impr_auc_pct", "impr_logloss_pct", "rela_impr_pct", "p_value_auc"):
        csv[c] = np.nan
    prop_rows = [i for i, m in enumerate(agg["model"]) if m == proposed]
    notes = []
    if prop_rows and baselines:
        i, b = prop_rows[0], agg.loc[baselines, "auc_mean"].idxmax()
        base = agg.loc[b, "model"]
        ia = impr(agg.loc[i, "auc_mean"], agg.loc[b, "auc_mean"])
        il = impr(agg.loc[i, "logloss_mean"], agg.loc[b, "logloss_mean"])
        ri = rela_impr(agg.loc[i, "auc_mean"], agg.loc[b, "auc_mean"])
        p = paired_test(per_seed(recs, "model", proposed, "auc"), per_seed(recs, "model", base, "auc"))
        for c, text in zip(cells, (f"{ia:+.2f}%", f"{il:+.2f}%", f"{ri:+.2f}%", fmt_p(p))):
            cells[c][i] = text
        csv.loc[i, ["impr_auc_pct", "impr_logloss_pct", "rela_impr_pct", "p_value_auc"]] = [ia, il, ri, p]
        notes.append(
            f"Impr / RelaImpr / p: {model_label(proposed)} against the best baseline by mean test AUC, "
            f"{model_label(base)}; Impr = (a - b) / b (the paper's Table 2 figure), RelaImpr = "
            f"((AUC - 0.5) / (AUC_base - 0.5) - 1) (DIN Eq. 11), p = two-sided paired t-test of test AUC over seeds. "
            f"Impr Logloss uses the same baseline and formula: negative = lower (better) logloss, as the paper's "
            f"Table 2 signs (results/CLAIMS.md compares logloss with the best baseline BY LOGLOSS instead)."
        )
    for c, col in cells.items():
        frame[c] = col
    return notes


def _best_cells(agg: pd.DataFrame, baselines: list[int]) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
    """(bold: the best row of each metric column, underline: the best baseline row of each)."""
    bold: set[tuple[int, str]] = set()
    underline: set[tuple[int, str]] = set()
    for c, m in MAIN_COLUMNS.items():
        b = best_index(agg[f"{m}_mean"].tolist(), HIGHER_IS_BETTER[m])
        if b is not None:
            bold.add((b, c))
        if baselines:
            vals = [agg.loc[k, f"{m}_mean"] if k in baselines else float("nan") for k in range(len(agg))]
            u = best_index(vals, HIGHER_IS_BETTER[m])
            if u is not None:
                underline.add((u, c))
    return bold, underline


def _provenance(recs: Sequence[dict[str, Any]]) -> str:
    """The note naming the protocol(s), seeds and dataset fingerprint(s) of a table's runs."""
    return (f"protocol: {', '.join(sorted({r['protocol'] for r in recs}))}; seeds: "
            f"{', '.join(map(str, sorted({int(r['seed']) for r in recs})))}; dataset fingerprint: "
            f"{', '.join(sorted({r['fingerprint'][:16] for r in recs}))}")


def machines_note(recs: Sequence[dict[str, Any]]) -> str:
    """The note counting a table's runs per machine (each record's ``machine``: CPU and torch's
    kernel ISA; records made before 2026-12-01 have none) and, when they come from more than one,
    saying that a difference between runs of two machines includes what the machine alone moves
    (docs/REPRODUCIBILITY.md)."""
    from collections import Counter

    counts = Counter((m.get("cpu", "?"), m.get("isa", "?")) if (m := r.get("machine")) else None for r in recs)
    parts = [f"{cpu} (torch kernels {isa}) {n}" for (cpu, isa), n in sorted((k, v) for k, v in counts.items() if k)]
    if counts.get(None):
        parts.append(f"a machine not named (records made before 2026-12-01) {counts[None]}")
    text = "runs per machine: " + "; ".join(parts)
    if len(counts) > 1:
        text += (". On another CPU a run's last bits differ and the models with an MLP (Wide&Deep, Deep&Cross, DeepFM, "
                 "xDeepFM, MIAN) drift to another trajectory, so rows made on different machines differ also by what the "
                 "machine alone moves (docs/REPRODUCIBILITY.md; measured in cross_machine/ where present)")
    return text


def _wall_minutes(recs: Sequence[dict[str, Any]]) -> float:
    return sum(sum(r["wall_seconds"].values()) for r in recs) / 60


# --------------------------------------------------------------------------- Tables 3 and 4

def best_baseline(records: Sequence[dict[str, Any]], dataset: str, proposed: str = "mian") -> str | None:
    """The baseline with the highest mean test AUC among ``records`` of ``dataset`` (variant
    "default"), or None when there is none."""
    recs = [r for r in records if r["dataset"] == dataset and r["model"] != proposed and r["variant"] == "default"]
    if not recs:
        return None
    agg = aggregate(recs, "model", sorted({r["model"] for r in recs}))
    return str(agg.loc[agg["auc_mean"].idxmax(), "model"])


def variant_table(
    records: Sequence[dict[str, Any]],
    dataset: str,
    variants: dict[str, tuple[str, dict[str, Any]]],
    title: str,
    paper: dict[str, tuple[float, ...]],
    paper_columns: Sequence[str],
    baseline: str | None = None,
) -> Table:
    """MIAN variants (and optionally the best baseline) with AUC / logloss mean ± std, the
    change of mean AUC and logloss against full MIAN ("default") and the paired t-test p-value
    of test AUC over seeds. Rows: ``variants`` order, then the baseline.

    Raises ValueError when the full MIAN ("default") has no record for ``dataset``."""
    rows = _variant_rows(records, dataset, variants, baseline)
    if not rows or rows[0][0] != "default":
        raise ValueError(f"no run records of full MIAN on {dataset!r}")
    csv_rows, out = zip(*(_variant_row(key, label, recs, rows[0][2], paper, paper_columns)
                          for key, label, recs in rows))
    headers = ["Method", "Seeds", "AUC", "Logloss", "ΔAUC vs MIAN", "ΔLogloss vs MIAN", "p (AUC)", "Params",
               *[f"paper {c.replace('_', ' ')}" for c in paper_columns]]
    bold = {(b, col) for col, m, higher in (("AUC", "auc_mean", True), ("Logloss", "logloss_mean", False))
            if (b := best_index([c[m] for c in csv_rows], higher)) is not None}
    recs_all = [r for _, _, rr in rows for r in rr]
    notes = [
        "Test-split metrics, mean ± sample std over seeds; Δ = variant mean - full MIAN mean; "
        "p = two-sided paired t-test of test AUC over seeds against full MIAN.",
        *(["paper columns: the MIAN paper's own figures on its datasets, for orientation only."] if paper_columns
          else []),
        _provenance(recs_all),
        machines_note(recs_all),
        f"total wall time of these runs: {_wall_minutes(recs_all):.1f} min",
    ]
    return Table(title=title, frame=pd.DataFrame(list(out), columns=headers), csv=pd.DataFrame(list(csv_rows)),
                 bold=bold, underline=set(), notes=notes)


def _variant_rows(records: Sequence[dict[str, Any]], dataset: str, variants: dict[str, tuple[str, dict[str, Any]]],
                  baseline: str | None) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(key, label, records) of each row of a variant table that has records: the MIAN
    ``variants`` in their order, then ``baseline`` (key "best_baseline")."""
    rows = []
    for v, (label, _) in variants.items():
        recs = [r for r in records if r["dataset"] == dataset and r["model"] == "mian" and r["variant"] == v]
        if recs:
            rows.append((v, label, recs))
    if baseline is not None:
        recs = [r for r in records if r["dataset"] == dataset and r["model"] == baseline and r["variant"] == "default"]
        if recs:
            rows.append(("best_baseline", f"Best baseline ({model_label(baseline)})", recs))
    return rows


def _variant_row(key: str, label: str, recs: Sequence[dict[str, Any]], full: Sequence[dict[str, Any]],
                 paper: dict[str, tuple[float, ...]], paper_columns: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(CSV row, display cells) of one variant table row against the full MIAN's records ``full``."""
    full_auc = {int(r["seed"]): r["test"]["auc"] for r in full}
    auc_v = np.array([r["test"]["auc"] for r in recs])
    ll_v = np.array([r["test"]["logloss"] for r in recs])
    sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else float("nan"))
    d_auc = float(auc_v.mean() - np.mean(list(full_auc.values())))
    d_ll = float(ll_v.mean() - np.mean([r["test"]["logloss"] for r in full]))
    p = float("nan") if key == "default" else paired_test({int(r["seed"]): r["test"]["auc"] for r in recs}, full_auc)
    n_params = sorted({int(r.get("n_params", 0)) for r in recs})
    row = {
        "variant": key, "label": label, "n_seeds": len({r["seed"] for r in recs}),
        "auc_mean": float(auc_v.mean()), "auc_std": sd(auc_v),
        "logloss_mean": float(ll_v.mean()), "logloss_std": sd(ll_v),
        "delta_auc": d_auc, "delta_logloss": d_ll, "p_value_auc": p,
        "n_params": n_params[0] if n_params else 0,
        **{f"paper_{c}": (paper.get(key, (float("nan"),) * len(paper_columns))[j]) for j, c in enumerate(paper_columns)},
    }
    cells = [
        label, str(len(recs)), fmt_pm(auc_v.mean(), sd(auc_v)), fmt_pm(ll_v.mean(), sd(ll_v)),
        "" if key == "default" else fmt_delta(d_auc), "" if key == "default" else fmt_delta(d_ll),
        "" if key == "default" else fmt_p(p), f"{row['n_params']:,}",
        *[(f"{paper[key][j]:.4f}" if key in paper else "") for j in range(len(paper_columns))],
    ]
    return row, cells


def add_valid_auc_column(tab: Table, records: Sequence[dict[str, Any]], dataset: str) -> None:
    """Add the column "Valid AUC" (the best-epoch validation AUC, the early-stopping criterion:
    mean ± std over seeds; bold: the highest mean), the CSV columns ``valid_auc_mean`` /
    ``valid_auc_std`` and a note naming the row chosen on it, to a :func:`variant_table` of MIAN
    variants (after its Logloss column)."""
    means, stds = [], []
    for v in tab.csv["variant"]:
        vals = np.array([float(r["valid"]["auc"]) for r in records
                         if r["dataset"] == dataset and r["model"] == "mian" and r["variant"] == v])
        means.append(float(vals.mean()) if len(vals) else float("nan"))
        stds.append(float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"))
    tab.frame.insert(int(tab.frame.columns.get_loc("Logloss")) + 1, "Valid AUC",
                     [fmt_pm(m, sd) if not math.isnan(m) else "" for m, sd in zip(means, stds)])
    tab.csv["valid_auc_mean"], tab.csv["valid_auc_std"] = means, stds
    best = best_index(means, True)
    if best is not None:
        from bench.training.studies import chosen_reading

        tab.bold.add((best, "Valid AUC"))
        chosen, _ = chosen_reading(records, dataset)
        label = dict(zip(tab.csv["variant"], tab.csv["label"]))
        which = (f"the reading chosen on it (never on test; controls excluded; the one results/CLAIMS.md and "
                 f"`ablate --reading best` use): {label.get(chosen, chosen)}" if chosen is not None else
                 f"highest in this table: {tab.csv['label'].iloc[best]} (the reading chosen for results/CLAIMS.md "
                 "needs every reading with seeds 0-4)")
        tab.notes.append(f"Valid AUC: best-epoch validation AUC (the early-stopping criterion), mean ± std over "
                         f"seeds; {which}.")


def convergence_curves(records: Sequence[dict[str, Any]], dataset: str, variants: Sequence[str]) -> pd.DataFrame:
    """Long frame of validation metrics against optimiser steps: columns variant, seed, step,
    auc, logloss (every evaluation of each MIAN run of ``variants``)."""
    rows = []
    for r in records:
        if r["dataset"] != dataset or r["model"] != "mian" or r["variant"] not in variants:
            continue
        for h in r["valid_history"]:
            rows.append({"variant": r["variant"], "seed": int(r["seed"]), "step": int(h["step"]),
                         "auc": h["valid"]["auc"], "logloss": h["valid"]["logloss"]})
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "auc", "logloss"])


def steps_to_fraction(curves: pd.DataFrame, fraction: float = 0.99) -> pd.DataFrame:
    """Per (variant, seed): the first evaluated step whose validation AUC reaches ``fraction``
    of that run's best validation AUC. Columns variant, seed, steps, best_auc."""
    rows = []
    for (v, s), g in curves.sort_values("step").groupby(["variant", "seed"]):
        best = g["auc"].max()
        hit = g.loc[g["auc"] >= fraction * best, "step"]
        rows.append({"variant": v, "seed": s, "steps": int(hit.iloc[0]), "best_auc": float(best)})
    return pd.DataFrame(rows, columns=["variant", "seed", "steps", "best_auc"])


# --------------------------------------------------------------------------- the readings' Figure 6

#: the columns of the readings' Figure 6 table: the GIM inputs of PAIRS (original, interactive)
FIGURE6_WEIGHT_COLUMNS = ("e_b", "R_ibim", "e_u", "R_iuim", "e_c", "R_icim")


def readings_figure6_table(stats: dict[str, dict[str, Any]], dataset: str,
                           variants: dict[str, tuple[str, dict[str, Any]]], notes: Sequence[str] = ()) -> Table:
    """The Figure 6 statistics of each MIAN reading with learned GIM weights: one row per variant
    of ``stats`` (in ``variants`` order; ``stats[v]``: :func:`bench.report.figures.share_interval`
    of its seeds' models), the mean weight of each input of :data:`FIGURE6_WEIGHT_COLUMNS` and,
    per interactive/original pair, the share of test samples where the interactive one is larger
    (mean over seeds) with its interval; bold: the claims rule's "reproduced"
    (:func:`bench.report.claims.figure6_verdict`). ``notes``: extra notes (e.g. retrained models).

    Raises ValueError when ``stats`` is empty."""
    from bench.report.claims import figure6_verdict
    from bench.report.figures import PAIRS

    order = [v for v in variants if v in stats]
    if not order:
        raise ValueError(f"no MIAN reading with learned GIM weights on {dataset!r}")
    headers = ["Reading", "Seeds", *[f"w({c})" for c in FIGURE6_WEIGHT_COLUMNS], *[f"{a} > {b}" for a, b in PAIRS]]
    cells, rows, bold = [], [], set()
    for i, v in enumerate(order):
        st = stats[v]
        mw = st["mean_weight"]
        n = len(next(iter(st["share_per_seed"].values())))
        row = {"variant": v, "label": variants[v][0], "n_seeds": n,
               **{f"mean_weight_{c}": mw[c] for c in FIGURE6_WEIGHT_COLUMNS}}
        line = [variants[v][0], str(n), *[f"{mw[c]:.3f}" for c in FIGURE6_WEIGHT_COLUMNS]]
        for a, b in PAIRS:
            key, name = f"{a}>{b}", f"{a}_gt_{b}"
            lo, hi = st["interval"][key]
            verdict = figure6_verdict(mw[a], mw[b], (lo, hi))
            row.update({f"share_{name}": st["share"][key], f"share_{name}_low": lo, f"share_{name}_high": hi,
                        f"verdict_{name}": verdict})
            line.append(f"{st['share'][key]:.1%} [{lo:.1%}, {hi:.1%}]")
            if verdict == "reproduced":
                bold.add((i, f"{a} > {b}"))
        rows.append(row)
        cells.append(line)
    boot = stats[order[0]]["bootstrap"]
    left = [variants[v][0] for v in variants if v not in stats]
    table_notes = [
        "w(x): mean GIM weight (Eq. 15) of input x over the test split and the seeds' models (the 7 weights of a "
        "sample sum to 1; e_i not shown).",
        f"a > b: share of test samples where the interactive representation a has the larger GIM weight than its "
        f"original b, mean over the seeds' models [{boot['level']:.0%} percentile interval of a two-stage bootstrap: "
        f"the {boot['users']:,} test users (all samples of a drawn user) and the seeds, each drawn with replacement, "
        f"{boot['replicates']} replicates, numpy default_rng({boot['rng_seed']})]; bold: the interval lies above 50 % and a has the larger "
        "mean weight (results/CLAIMS.md's rule for a reproduced Figure 6 claim).",
        *([f"Left out (no learned GIM weights): {', '.join(left)}."] if left else []),
        *notes,
    ]
    return Table(title=f"Figure 6 statistics of the MIAN readings: {dataset}", frame=pd.DataFrame(cells, columns=headers),
                 csv=pd.DataFrame(rows), bold=bold, underline=set(), notes=table_notes)
