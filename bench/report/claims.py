"""The claims report: one row per claim of the paper, the paper's figure, ours and a verdict.

Verdict rule for comparisons over seeds (paired by seed, two-sided paired t-test, alpha 0.05):
- reproduced: the mean difference has the paper's sign and p < alpha;
- not reproduced: the mean difference has the opposite sign and p < alpha;
- inconclusive: p >= alpha, or too few paired seeds (< 2) to test.
Figure 6 (GIM weights; :func:`figure6_verdict`): the share of test samples where the interactive
representation outweighs its original, averaged over the seeds' models, with its 95 % cluster-
bootstrap interval over test users and seeds (bench.report.figures.share_interval): reproduced
when the interval lies above 50 % and the interactive representation has the larger mean weight,
not reproduced when the interval lies below 50 %, inconclusive otherwise (and for a summary
without an interval).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.report.figures import PAIRS
from bench.report.paper import (PAPER_FIGURE5, PAPER_FIGURE6, PAPER_FIGURE6_CASES, PAPER_TABLE2,
                                PAPER_TABLE2_DATASETS, PAPER_TABLE2_LOGLOSS, PAPER_TABLE3, PAPER_TABLE4,
                                paper_best_baseline)
from bench.report import (
    Output,
    ReportError,
    best_baseline,
    convergence_curves,
    fmt_delta,
    fmt_p,
    paired_test,
    steps_to_fraction,
)

ALPHA = 0.05
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def verdict(diff: float, p: float, expected_sign: int, alpha: float = ALPHA) -> str:
    """Verdict of a paired comparison whose paper direction is ``expected_sign`` (+1 / -1)."""
    if p is None or math.isnan(p) or math.isnan(diff):
        return INCONCLUSIVE
    if p < alpha and np.sign(diff) == expected_sign:
        return REPRODUCED
    if p < alpha and np.sign(diff) == -expected_sign:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def _seed_metric(records, dataset, model, variant, metric) -> dict[int, float]:
    return {
        int(r["seed"]): float(r["test"][metric])
        for r in records
        if r["dataset"] == dataset and r["model"] == model and r["variant"] == variant
    }


def _compare(
    a: dict[int, float], b: dict[int, float], expected_sign: int, digits: int = 4
) -> tuple[float, float, str, str]:
    """(mean(a) - mean(b) over shared seeds, p, verdict, text)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), float("nan"), INCONCLUSIVE, "no paired runs"
    diff = float(np.mean([a[s] - b[s] for s in seeds]))
    p = paired_test(a, b)
    ma, mb = np.mean([a[s] for s in seeds]), np.mean([b[s] for s in seeds])
    f = f"{{:.{digits}f}}".format
    return diff, p, verdict(diff, p, expected_sign), f"{f(ma)} vs {f(mb)} (Δ {fmt_delta(diff, digits)}, p {fmt_p(p)}, n={len(seeds)})"


def _claim(claim: str, paper: str, ours: str, verdict_: str) -> dict[str, str]:
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict_}


def _paired_claim(claim: str, paper: str, a: dict[int, float], b: dict[int, float], expected_sign: int,
                  prefix: str = "", digits: int = 4) -> dict[str, str]:
    """The row of the claim that ``a`` differs from ``b`` (paired by seed) with ``expected_sign``."""
    _, _, v, text = _compare(a, b, expected_sign, digits)
    return _claim(claim, paper, prefix + text, v)


def _versus(table: dict[str, tuple[float, ...]], a: str, b: str | dict[str, str], columns: dict[str, int]) -> str:
    """The paper's figures of row ``a`` against row ``b`` (one row, or one per column name) of
    ``table`` in ``columns`` (name -> index): "Books 0.8209 vs 0.8159, Electronics ..."."""
    rows = b if isinstance(b, dict) else dict.fromkeys(columns, b)
    return ", ".join(f"{name} {table[a][j]:.4f} vs {table[rows[name]][j]:.4f}" for name, j in columns.items())


#: the columns of PAPER_TABLE2 / PAPER_TABLE2_LOGLOSS, and the AUC columns of PAPER_TABLE3
TABLE2_COLUMNS = {name: j for j, name in enumerate(PAPER_TABLE2_DATASETS)}
TABLE3_AUC = {"Books": 0, "Electronics": 2}
#: Table 3's single-module ablations and their pair: variant -> the module(s) removed
REMOVED = {"no_iuim": "IUIM", "no_icim": "ICIM", "no_ibim": "IBIM", "no_gim": "GIM", "no_iuim_icim": "IUIM&ICIM"}


def main_table_claims(records: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, str]]:
    """Table 2: MIAN's AUC above the best baseline's (by AUC), its logloss below the best
    baseline's (by logloss)."""
    mian_auc = _seed_metric(records, dataset, "mian", "default", "auc")
    base = best_baseline(records, dataset)
    if not (mian_auc and base):
        return []
    paper_best = {d: paper_best_baseline(PAPER_TABLE2, j, True) for d, j in TABLE2_COLUMNS.items()}
    rows = [_paired_claim(f"Table 2: MIAN's AUC beats the best baseline ({base})",
                          _versus(PAPER_TABLE2, "mian", paper_best, TABLE2_COLUMNS),
                          mian_auc, _seed_metric(records, dataset, base, "default", "auc"), +1)]
    lls = {}
    for m in sorted({r["model"] for r in records if r["dataset"] == dataset and r["model"] != "mian"}):
        d = _seed_metric(records, dataset, m, "default", "logloss")
        if d:
            lls[m] = float(np.mean(list(d.values())))
    if lls:
        bl = min(lls, key=lls.get)
        paper_best = {d: paper_best_baseline(PAPER_TABLE2_LOGLOSS, j, False) for d, j in TABLE2_COLUMNS.items()}
        rows.append(_paired_claim(f"Table 2: MIAN's logloss is below the best baseline's ({bl})",
                                  _versus(PAPER_TABLE2_LOGLOSS, "mian", paper_best, TABLE2_COLUMNS),
                                  _seed_metric(records, dataset, "mian", "default", "logloss"),
                                  _seed_metric(records, dataset, bl, "default", "logloss"), -1))
    return rows


def ablation_claims(records: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, str]]:
    """Table 3: removing each module lowers AUC, removing IBIM the most, and MIAN without IUIM and
    ICIM still beats the best baseline."""
    mian_auc = _seed_metric(records, dataset, "mian", "default", "auc")
    rows, drops = [], {}
    for variant, label in REMOVED.items():
        var = _seed_metric(records, dataset, "mian", variant, "auc")
        if var and mian_auc:
            drops[label] = _compare(mian_auc, var, +1)[:2]
            rows.append(_paired_claim(f"Table 3: removing {label} lowers AUC",
                                      _versus(PAPER_TABLE3, "default", variant, TABLE3_AUC), mian_auc, var, +1,
                                      prefix="MIAN "))
    singles = {k: v for k, v in drops.items() if k in ("IUIM", "ICIM", "IBIM", "GIM")}
    if "IBIM" in singles and len(singles) >= 2:
        drop = {name: PAPER_TABLE3["default"][j] - PAPER_TABLE3["no_ibim"][j] for name, j in TABLE3_AUC.items()}
        paper = f"Books drop {drop['Books']:.4f} (largest), Electronics {drop['Electronics']:.4f} (largest)"
        rows.append(_claim("Table 3: removing IBIM hurts most", paper, "AUC drop when removed (MIAN - variant): "
                           + ", ".join(f"{k} {fmt_delta(d)}" for k, (d, _) in sorted(singles.items(),
                                                                                     key=lambda kv: -kv[1][0])),
                           _largest_drop_verdict(singles, "IBIM")))
    both = _seed_metric(records, dataset, "mian", "no_iuim_icim", "auc")
    base = best_baseline(records, dataset)
    if both and base:
        rows.append(_paired_claim(f"Table 3: MIAN w/o IUIM&ICIM still beats the best baseline ({base})",
                                  _versus(PAPER_TABLE3, "no_iuim_icim", "best_baseline", TABLE3_AUC),
                                  both, _seed_metric(records, dataset, base, "default", "auc"), +1))
    return rows


def _largest_drop_verdict(drops: dict[str, tuple[float, float]], module: str) -> str:
    """Verdict of "removing ``module`` hurts most" from {module: (AUC drop, p)}."""
    largest = max(drops, key=lambda k: drops[k][0])
    diff, p = drops[module]
    if math.isnan(p):  # fewer than 2 paired seeds: nothing can be concluded
        return INCONCLUSIVE
    if largest == module and p < ALPHA and diff > 0:
        return REPRODUCED
    return NOT_REPRODUCED if largest != module else INCONCLUSIVE


def transformer_claims(records: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, str]]:
    """Table 4: Pre-LN beats Post-LN beats no Transformer (AUC); Figure 5: Pre-LN reaches 99% of
    its best validation AUC in fewer steps."""
    names = {"default": "Pre-LN", "post_ln": "Post-LN", "no_transformer": "no Transformer"}
    auc = {v: _seed_metric(records, dataset, "mian", v, "auc") for v in names}
    rows = [_paired_claim(f"Table 4: {names[a]} beats {names[b]} (AUC)",
                          f"Commercial {PAPER_TABLE4[a][0]:.4f} vs {PAPER_TABLE4[b][0]:.4f}", auc[a], auc[b], +1)
            for a, b in (("default", "post_ln"), ("default", "no_transformer"), ("post_ln", "no_transformer"))
            if auc[a] and auc[b]]
    curves = convergence_curves(records, dataset, tuple(names))
    if not curves.empty:
        steps = steps_to_fraction(curves)
        per = {v: dict(zip(g["seed"], g["steps"].astype(float))) for v, g in steps.groupby("variant")}
        rows += [_paired_claim(f"Figure 5: Pre-LN reaches 99% of its best validation AUC in fewer steps than "
                               f"{names[other]}", PAPER_FIGURE5, per["default"], per[other], -1, "steps ", digits=0)
                 for other in ("post_ln", "no_transformer") if "default" in per and other in per]
    return rows


def figure6_verdict(mean_a: float, mean_b: float, interval: Sequence[float] | None) -> str:
    """Verdict of "GIM weighs a above b" from the mean weights of a and b and the interval
    [low, high] of the share of test samples where a > b: reproduced when low > 0.5 and
    mean_a > mean_b, not reproduced when high < 0.5, inconclusive otherwise (None: no interval)."""
    if interval is None or any(math.isnan(x) for x in interval):
        return INCONCLUSIVE
    low, high = interval
    if low > 0.5 and mean_a > mean_b:
        return REPRODUCED
    if high < 0.5:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def figure6_claims(gim: dict[str, Any] | None) -> list[dict[str, str]]:
    """Figure 6: GIM weighs each interactive representation above its original one (from a
    ``gim_summary.json``; none without one). Uses the summary's statistics over seeds and their
    interval (:func:`figure6_verdict`); a summary of one seed without them (written before the
    interval existed) gives inconclusive rows saying so."""
    rows = []
    if not gim:
        return rows
    over_seeds = "share_interval" in gim
    mean_w = gim.get("mean_weight_over_seeds" if over_seeds else "mean_weight", {})
    share = gim.get("share_interactive_larger_over_seeds" if over_seeds else "share_interactive_larger", {})
    for a, b in PAIRS:
        key = f"{a}>{b}"
        if a not in mean_w or b not in mean_w or key not in share:
            continue
        if over_seeds:
            lo, hi = gim["share_interval"][key]
            per = gim.get("share_interactive_larger_per_seed", {}).get(key, [])
            boot = gim.get("bootstrap", {})
            ours = (f"mean {mean_w[a]:.3f} vs {mean_w[b]:.3f}; larger in {share[key]:.1%} of "
                    f"{gim.get('n_samples', '?')} test samples (mean of {len(per)} seeds: "
                    f"{', '.join(f'{x:.1%}' for x in per)}); {boot.get('level', 0.95):.0%} interval "
                    f"{lo:.1%}-{hi:.1%} (bootstrap over {boot.get('users', '?')} test users and the seeds)")
            v = figure6_verdict(mean_w[a], mean_w[b], (lo, hi))
        else:
            ours = (f"mean {mean_w[a]:.3f} vs {mean_w[b]:.3f}; larger in {share[key]:.1%} of "
                    f"{gim.get('n_samples', '?')} test samples (seed {gim.get('seed', '?')} only, no interval: "
                    "run visualize-attention again)")
            v = INCONCLUSIVE
        rows.append(_claim(f"Figure 6: GIM weighs {a} above {b}", f"{PAPER_FIGURE6[key]}/{PAPER_FIGURE6_CASES} cases",
                           ours, v))
    return rows


def dataset_claims(
    records: Sequence[dict[str, Any]], dataset: str, gim: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """Claim rows for one dataset: claim, paper, ours, verdict. Claims without runs are omitted."""
    return [*main_table_claims(records, dataset), *ablation_claims(records, dataset),
            *transformer_claims(records, dataset), *figure6_claims(gim)]


def as_reading(records: Sequence[dict[str, Any]], reading: str) -> list[dict[str, Any]]:
    """The records as the claims would see them had ``reading`` been MIAN's default: the runs of
    the ablation and Table 4 variants built on it (:func:`bench.training.studies.on_reading`) under
    their plain names (``reading`` -> ``default``, ``<reading>+no_ibim`` -> ``no_ibim``; a moot
    variant's plain run kept), the other MIAN runs left out, every baseline run kept."""
    from bench.training.studies import ABLATION_VARIANTS, TABLE4_VARIANTS, TRANSFORMER_VARIANTS, on_reading

    base = {**ABLATION_VARIANTS, **{v: TRANSFORMER_VARIANTS[v] for v in TABLE4_VARIANTS}}
    plain = dict(zip(on_reading(reading, base), base))
    return [r if r["model"] != "mian" else {**r, "variant": plain[r["variant"]]}
            for r in records if r["model"] != "mian" or r["variant"] in plain]


def reading_claims(records: Sequence[dict[str, Any]], dataset: str, folder: Path,
                   left_out: list[str]) -> dict[str, Any] | None:
    """The claims of ``dataset`` under the reading of MIAN chosen on validation AUC
    (:func:`bench.training.studies.chosen_reading`; None while the readings study is not complete):
    {"reading", "label", "means" (reading -> mean validation AUC), "rows" (:func:`dataset_claims`
    on :func:`as_reading`; Figure 6 from the readings study's ``readings_gim.json``)}."""
    from bench.report.studies import READINGS_GIM_FILE
    from bench.training.studies import READINGS_VARIANTS, chosen_reading

    best, means = chosen_reading(records, dataset)
    if best is None:
        return None
    gim = None
    if best == "default":
        gim = _gim_summary(folder / "gim_summary.json", records, [])
    elif (folder / READINGS_GIM_FILE).exists():
        gim = json.loads((folder / READINGS_GIM_FILE).read_text()).get(best)
        if gim is not None and gim.get("model_differs_from_record"):
            left_out.append(f"{folder / READINGS_GIM_FILE} [{best}] left out: its models are not those of the records.")
            gim = None
    return {"reading": best, "label": READINGS_VARIANTS[best][0], "means": means,
            "rows": dataset_claims(as_reading(records, best), dataset, gim)}


def _reading_section(rows: list[dict[str, str]], info: dict[str, Any] | None, dataset: str) -> list[str]:
    """The paragraph and side-by-side table of the claims under the reading chosen on validation."""
    from tabulate import tabulate

    if info is None:
        return [f"Reading chosen on validation: not yet (the readings study of {dataset} is not complete: "
                f"`python cli.py ablate --study readings --dataset {dataset}`).", ""]
    best, means = info["reading"], info["means"]
    ranked = ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items(), key=lambda kv: -kv[1]))
    head = [f"### {dataset}: the claims under the reading chosen on validation AUC", "",
            f"Mean best-epoch validation AUC of each reading of MIAN (5 seeds; never test): {ranked}. "
            f"Chosen: **{best}** ({info['label']})."]
    if best == "default":
        return head + ["The default reading is also the validation choice: every verdict above stands as it is.", ""]
    theirs = {r["claim"]: r for r in info["rows"]}
    table, changed, missing = [], [], []
    for r in rows:
        o = theirs.get(r["claim"])
        if o is None:
            missing.append(r["claim"])
        elif o["verdict"] != r["verdict"]:
            changed.append(f"{r['claim']} ({r['verdict']} -> {o['verdict']})")
        table.append([r["claim"], r["ours"], r["verdict"], o["ours"] if o else "not run on this reading",
                      o["verdict"] if o else ""])
    head += ["", tabulate(table, headers=["claim", "ours, default reading", "verdict", f"ours, {best}", f"verdict, {best}"],
                          tablefmt="github", disable_numparse=True), ""]
    if changed:
        head.append(f"Verdicts that depend on the reading ({len(changed)}): " + "; ".join(changed) + ".")
    else:
        head.append("No verdict of the claims run on both readings depends on the reading.")
    if missing:
        head.append(f"Not run on {best} ({len(missing)} claim(s)): the ablation and Table 4 on it come from "
                    f"`python cli.py ablate --reading best --dataset {dataset}` and `... --study transformer "
                    "--reading best`; Figure 5 is drawn for the default reading only (its cadence).")
    return head + [""]


def claims_markdown(per_dataset: dict[str, list[dict[str, str]]], notes: Sequence[str] = (),
                    dataset_notes: dict[str, Sequence[str]] | None = None,
                    readings: dict[str, dict[str, Any] | None] | None = None) -> str:
    """``results/CLAIMS.md``: one section per dataset, one row per claim, then that dataset's
    ``dataset_notes`` (e.g. what a change of machine moves: :func:`bench.report.crosscheck.cross_machine_notes`)."""
    from tabulate import tabulate

    parts = [
        "# Does MIAN's evidence hold? Claims of the paper against our runs",
        "",
        "Generated by `python cli.py report` from the run records under `results/runs/` and the GIM "
        "summaries under `results/<dataset>/`; do not edit by hand.",
        "",
        "Verdict rule: paired over seeds with a two-sided paired t-test, alpha = 0.05: *reproduced* when the "
        "difference has the paper's sign and p < 0.05, *not reproduced* when it has the opposite sign and p < 0.05, "
        "*inconclusive* otherwise. 'Removing IBIM hurts most': reproduced when its AUC drop is the largest single-"
        "module drop and significant, not reproduced when another drop is larger (inconclusive with fewer than two paired seeds). Figure 6: the share of test "
        "samples where the interactive representation has the larger GIM weight, averaged over the seeds' models, "
        "with its 95 % interval from a cluster bootstrap over test users (all samples of a drawn user; the seeds "
        "averaged within each replicate): reproduced only when the interval lies above 50 % and the interactive "
        "representation has the larger mean weight, not reproduced when the interval lies below 50 %, "
        "inconclusive otherwise. The paper's figures come from other datasets (Amazon Books / "
        "Electronics, a commercial set); they show the direction claimed, not a value to match.",
        "",
    ]
    for ds, rows in per_dataset.items():
        parts.append(f"## {ds}")
        parts.append("")
        if not rows:
            parts.append("No claim can be checked yet (MIAN or the compared runs are missing).")
        else:
            counts = {k: sum(r["verdict"] == k for r in rows) for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
            parts.append(tabulate([[r["claim"], r["paper"], r["ours"], r["verdict"]] for r in rows],
                                  headers=["claim", "paper", "ours", "verdict"], tablefmt="github", disable_numparse=True))
            parts.append("")
            parts.append(", ".join(f"{v}: {n}" for v, n in counts.items()))
        for note in (dataset_notes or {}).get(ds, ()):
            parts += ["", f"- {note}"]
        parts.append("")
        if readings is not None and rows:
            parts += _reading_section(rows, readings.get(ds), ds)
    parts += list(notes)
    return "\n".join(parts) + "\n"


def claims_report(results: Path) -> Output:
    """Write ``results/CLAIMS.md`` from the protocol's run records under ``results/runs`` and each
    dataset's ``gim_summary.json`` (left out when it is not of a protocol run's model); returns its
    text followed by the run records left out and why (shown, not written: the file depends only
    on the protocol's records and the committed figures, so runs made with ``--set`` or on other
    data never change it).
    Raises ReportError when there is no run record, StoreError when one fails its check."""
    from bench.io import atomic_write_text
    from bench.report.crosscheck import cross_machine_notes
    from bench.training.runs import RunStore
    from bench.training.studies import protocol_records

    records, left_out = protocol_records(list(RunStore(results / "runs").records()))
    if not records:
        raise ReportError(f"no run records under {results / 'runs'}; run `reproduce`, `ablate` first")
    figure_notes: list[str] = []  # about the committed figures: in the file
    datasets = sorted({r["dataset"] for r in records})
    per = {ds: dataset_claims(records, ds, _gim_summary(results / ds / "gim_summary.json", records, figure_notes))
           for ds in datasets}
    readings = {ds: reading_claims(records, ds, results / ds, figure_notes) for ds in datasets}
    text = claims_markdown(per, notes=figure_notes,
                           dataset_notes={ds: [*_signal_notes(results / ds), *cross_machine_notes(results / ds)]
                                          for ds in per},
                           readings=readings)
    atomic_write_text(results / "CLAIMS.md", text)
    return Output(text + "".join(f"\n{n}" for n in left_out), [results / "CLAIMS.md"])


def _gim_summary(path: Path, records: Sequence[dict[str, Any]], left_out: list[str]) -> dict[str, Any] | None:
    """The Figure 6 summary at ``path`` if it is of a protocol run's model; else None, with a note
    appended to ``left_out`` saying why."""
    gim = json.loads(path.read_text()) if path.exists() else None
    if gim is not None and gim.get("run_id") not in {r["run_id"] for r in records}:
        left_out.append(f"{path} left out: it comes from run {gim.get('run_id')}, not a protocol run.")
        return None
    if gim is not None and gim.get("model_differs_from_record"):
        left_out.append(f"{path} left out: its model is not the one of run {gim.get('run_id')}'s record.")
        return None
    return gim


def _signal_notes(folder: Path) -> list[str]:
    """The ablation study's note on IUIM's and ICIM's inputs (``input_signal.json``, written by
    ``ablate``), so the IUIM / ICIM claims are read knowing whether the data lets them matter."""
    from bench.data.stats import input_signal_note
    from bench.report.studies import SIGNAL_FILE

    path = folder / SIGNAL_FILE
    return [input_signal_note(json.loads(path.read_text()))] if path.exists() else []

