"""The claims report: one row per claim of the paper, the paper's figure, ours and a verdict.

A claim about a test metric (AUC, logloss: Tables 2-4) is tested twice, on the same paired
difference (a - b, the mean over the seeds both have):
- over seeds: a two-sided paired t-test (seed-to-seed variation of training);
- over test samples: the paired cluster bootstrap over test users of
  :func:`bench.metrics.paired_bootstrap` (:data:`BOOTSTRAP_REPLICATES` replicates, draws seeded
  with :data:`BOOTSTRAP_SEED`), from the runs' kept test scores (``results/scores``, each checked
  against its record by :meth:`bench.training.runs.RunStore.checked_scores`).
Each test alone gives *reproduced* (p < alpha, the paper's sign), *not reproduced* (p < alpha, the
opposite sign) or *inconclusive*; the claim's verdict is theirs when both agree, else inconclusive
(:func:`combined_verdict`). A run without usable test scores leaves the bootstrap n/a, so its
claims are inconclusive. Figure 5 (steps to 99 % of the best validation AUC) has no test samples:
the t-test alone decides. Figure 6 (GIM weights; :func:`figure6_verdict`): the share of test samples where the interactive
representation outweighs its original, averaged over the seeds' models, with its 95 % cluster-
bootstrap interval over test users and seeds (bench.report.figures.share_interval): reproduced
when the interval lies above 50 % and the interactive representation has the larger mean weight,
not reproduced when the interval lies below 50 %, inconclusive otherwise (and for a summary
without an interval).

A comparison whose two sides share fewer than the protocol's :data:`PROTOCOL_SEEDS` seeds is a
study still running (its records committed as they finish): its verdict is *partial (k of 5
seeds)*, never one computed on the seeds there so far (:func:`partial_verdict`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.metrics import BootstrapResult, bootstrap_replicates, bootstrap_summary
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
#: the protocol's number of seeds per model and variant (PROTOCOL section 3: seeds 0-4)
PROTOCOL_SEEDS = 5
PARTIAL = "partial"


def partial_verdict(n: int, seeds: int = PROTOCOL_SEEDS) -> str | None:
    """"partial (n of 5 seeds)" when a comparison has fewer than ``seeds`` paired seeds (a study
    still running), else None (the comparison is complete and gets a verdict)."""
    return f"{PARTIAL} ({n} of {seeds} seeds)" if n < seeds else None


def is_partial(verdict_: str) -> bool:
    """Whether ``verdict_`` is a :func:`partial_verdict`."""
    return verdict_.startswith(PARTIAL)
#: the bootstrap over test users of every claim: replicates and the seed of the draws
BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED = 2000, 0


def verdict(diff: float, p: float, expected_sign: int, alpha: float = ALPHA) -> str:
    """Verdict of a paired comparison whose paper direction is ``expected_sign`` (+1 / -1)."""
    if p is None or math.isnan(p) or math.isnan(diff):
        return INCONCLUSIVE
    if p < alpha and np.sign(diff) == expected_sign:
        return REPRODUCED
    if p < alpha and np.sign(diff) == -expected_sign:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combined_verdict(diff: float, p_seeds: float, p_users: float | None, expected_sign: int,
                     alpha: float = ALPHA) -> str:
    """Verdict of a paired claim tested over seeds (``p_seeds``) and over test users
    (``p_users``; None or NaN: the bootstrap is n/a): :func:`verdict` of each test, the common one
    when they agree, else inconclusive; with the bootstrap n/a never reproduced (nor not
    reproduced): inconclusive."""
    if p_users is None or math.isnan(p_users):
        return INCONCLUSIVE
    a, b = verdict(diff, p_seeds, expected_sign, alpha), verdict(diff, p_users, expected_sign, alpha)
    return a if a == b else INCONCLUSIVE


class TestEvidence:
    """The kept test scores of the runs (``<results>/scores``, through ``store``'s
    :meth:`~bench.training.runs.RunStore.checked_scores`: length and metrics checked against the
    record) and their bootstrap replicates (:func:`bench.metrics.bootstrap_replicates`), computed
    once per run and metric: every run of a dataset is resampled with the same draws of test
    users (same seed), so the replicates of two runs pair. ``store`` None: no scores (every
    bootstrap n/a)."""

    __test__ = False  # not a pytest class

    def __init__(self, store: Any | None, n_boot: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED):
        self.store, self.n_boot, self.seed = store, n_boot, seed
        self._keys: dict[tuple[str, str], Any] = {}
        self._scores: dict[str, Any] = {}
        self._reps: dict[tuple[str, str], tuple[float, np.ndarray]] = {}

    def _checked(self, record: dict[str, Any]) -> tuple[Any, str | None]:
        rid = record["run_id"]
        if rid not in self._scores:
            if self.store is None:
                self._scores[rid] = (None, "no test scores were given to the report")
            else:
                k = (record["dataset"], record["fingerprint"])
                if k not in self._keys:
                    self._keys[k] = self.store.load_test_keys(*k)
                self._scores[rid] = self.store.checked_scores(record, self._keys[k])
        return self._scores[rid]

    def compare(self, a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], metric: str
                ) -> tuple[BootstrapResult | None, str | None]:
        """The bootstrap of mean(metric(a) - metric(b)) over the seeds ``a`` and ``b`` (seed ->
        record) share: (result, None), or (None, why it is n/a: no shared seed, a run without
        usable scores: a short reason; :meth:`unusable` says why per run)."""
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return None, "no paired runs"
        recs = [a[s] for s in seeds] + [b[s] for s in seeds]
        bad = sum(self._checked(r)[0] is None for r in recs)
        if bad:
            if self.store is None:
                return None, self._checked(recs[0])[1]
            return None, f"no usable test scores for {bad} of these {len(recs)} runs"
        todo = []
        for r in recs:
            if (r["run_id"], metric) not in self._reps and r["run_id"] not in {x["run_id"] for x in todo}:
                todo.append(r)
        if todo:  # one call: the same draws for all of them
            labels, users = self._keys[(todo[0]["dataset"], todo[0]["fingerprint"])]
            obs, reps = bootstrap_replicates(labels, users, np.stack([self._checked(r)[0] for r in todo]),
                                             self.n_boot, self.seed, metric)
            for j, r in enumerate(todo):
                self._reps[(r["run_id"], metric)] = (float(obs[j]), reps[:, j])
        pa = [self._reps[(a[s]["run_id"], metric)] for s in seeds]
        pb = [self._reps[(b[s]["run_id"], metric)] for s in seeds]
        observed = float(np.mean([x[0] - y[0] for x, y in zip(pa, pb)]))
        return bootstrap_summary(observed, np.mean([x[1] - y[1] for x, y in zip(pa, pb)], axis=0)), None

    def unusable(self) -> dict[str, str]:
        """Run id -> why (:meth:`~bench.training.runs.RunStore.checked_scores`) of each run a
        comparison needed whose scores are not usable (empty with ``store`` None)."""
        if self.store is None:
            return {}
        return {rid: why for rid, (scores, why) in self._scores.items() if scores is None}

    def summary(self, shown: int = 3) -> str | None:
        """One paragraph on the runs without usable test scores (:meth:`unusable`; the first
        ``shown`` named with why), or None when there are none."""
        bad = self.unusable()
        if not bad:
            return None
        whys = [w if len(w) <= 160 else w[:157] + "..." for w in list(bad.values())[:shown]]
        more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
        return (f"{len(bad)} run(s) without usable test scores: {'; '.join(whys)}{more}. Their claims are "
                "inconclusive; run the study command that made them (reproduce, ablate) again to fill them in.")


def _seed_records(records, dataset, model, variant) -> dict[int, dict[str, Any]]:
    return {int(r["seed"]): r for r in records
            if r["dataset"] == dataset and r["model"] == model and r["variant"] == variant}


def _values(recs: dict[int, dict[str, Any]], metric: str, split: str = "test") -> dict[int, float]:
    return {s: float(r[split][metric]) for s, r in recs.items()}


def _seed_metric(records, dataset, model, variant, metric) -> dict[int, float]:
    return _values(_seed_records(records, dataset, model, variant), metric)


def _compare(
    a: dict[int, float], b: dict[int, float], expected_sign: int, digits: int = 4
) -> tuple[float, float, str, str]:
    """(mean(a) - mean(b) over shared seeds, p, verdict, text); the verdict is
    :func:`partial_verdict` with fewer than :data:`PROTOCOL_SEEDS` shared seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), float("nan"), INCONCLUSIVE, "no paired runs"
    diff = float(np.mean([a[s] - b[s] for s in seeds]))
    p = paired_test(a, b)
    ma, mb = np.mean([a[s] for s in seeds]), np.mean([b[s] for s in seeds])
    f = f"{{:.{digits}f}}".format
    return diff, p, partial_verdict(len(seeds)) or verdict(diff, p, expected_sign), f"{f(ma)} vs {f(mb)} (Δ {fmt_delta(diff, digits)}, p {fmt_p(p)}, n={len(seeds)})"


def _claim(claim: str, paper: str, ours: str, verdict_: str) -> dict[str, str]:
    return {"claim": claim, "paper": paper, "ours": ours, "verdict": verdict_}


def _paired_claim(claim: str, paper: str, a: dict[int, float], b: dict[int, float], expected_sign: int,
                  prefix: str = "", digits: int = 4) -> dict[str, str]:
    """The row of the claim that ``a`` differs from ``b`` (paired by seed) with ``expected_sign``,
    tested over seeds alone (no test samples: Figure 5)."""
    _, _, v, text = _compare(a, b, expected_sign, digits)
    return _claim(claim, paper, prefix + text.replace(", p ", ", p seeds ", 1), v)


def _test_compare(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], metric: str, expected_sign: int,
                  evidence: TestEvidence | None) -> tuple[float, str, str]:
    """(mean difference of test ``metric`` over the shared seeds, verdict, text) of records ``a``
    against ``b`` under both tests (:func:`combined_verdict`)."""
    diff, p, v, text = _compare(_values(a, metric), _values(b, metric), expected_sign)
    if math.isnan(diff):
        return diff, INCONCLUSIVE, text
    if is_partial(v):  # a study still running: no bootstrap, no verdict
        return diff, v, text
    boot, why = (evidence or TestEvidence(None)).compare(a, b, metric)
    if boot is None:
        users = f"p users n/a: {why}"
    else:
        users = f"p users {fmt_p(boot.p)} [{fmt_delta(boot.low)}, {fmt_delta(boot.high)}]"
    text = text.replace(f", p {fmt_p(p)}, ", f", p seeds {fmt_p(p)}, {users}, ", 1)
    return diff, combined_verdict(diff, p, None if boot is None else boot.p, expected_sign), text


def _sample_claim(claim: str, paper: str, a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], metric: str,
                  expected_sign: int, evidence: TestEvidence | None, prefix: str = "") -> dict[str, str]:
    """The row of the claim that test ``metric`` of records ``a`` differs from ``b`` (seed ->
    record) with ``expected_sign``, tested over seeds and over test users. A logloss claim also
    says that the models are selected on validation AUC and gives the same comparison with
    selection on validation logloss (``test_by_logloss``; over seeds only)."""
    _, v, text = _test_compare(a, b, metric, expected_sign, evidence)
    if metric == "logloss":
        text += "; models selected on validation AUC. " + _by_logloss_text(a, b, expected_sign)
    return _claim(claim, paper, prefix + text, v)


def _by_logloss_text(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]], expected_sign: int) -> str:
    """The logloss comparison of ``a`` and ``b`` with each run's model selected on validation
    logloss (its record's ``test_by_logloss``), or why it is n/a."""
    seeds = sorted(set(a) & set(b))
    if not seeds or any("test_by_logloss" not in r for s in seeds for r in (a[s], b[s])):
        return ("Selected on validation logloss: n/a (the records predate test_by_logloss; `reproduce --backfill` / "
                "`ablate --backfill` add it)")
    la = {s: float(a[s]["test_by_logloss"]["logloss"]) for s in seeds}
    lb = {s: float(b[s]["test_by_logloss"]["logloss"]) for s in seeds}
    _, _, _, text = _compare(la, lb, expected_sign)
    return "Selected on validation logloss: " + text.replace(", p ", ", p seeds ", 1)


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


def main_table_claims(records: Sequence[dict[str, Any]], dataset: str,
                      evidence: TestEvidence | None = None) -> list[dict[str, str]]:
    """Table 2: MIAN's AUC above the best baseline's (by AUC), its logloss below the best
    baseline's (by logloss)."""
    mian = _seed_records(records, dataset, "mian", "default")
    base = best_baseline(records, dataset)
    if not (mian and base):
        return []
    paper_best = {d: paper_best_baseline(PAPER_TABLE2, j, True) for d, j in TABLE2_COLUMNS.items()}
    rows = [_sample_claim(f"Table 2: MIAN's AUC beats the best baseline ({base})",
                          _versus(PAPER_TABLE2, "mian", paper_best, TABLE2_COLUMNS),
                          mian, _seed_records(records, dataset, base, "default"), "auc", +1, evidence)]
    lls = {}
    for m in sorted({r["model"] for r in records if r["dataset"] == dataset and r["model"] != "mian"}):
        d = _seed_metric(records, dataset, m, "default", "logloss")
        if d:
            lls[m] = float(np.mean(list(d.values())))
    if lls:
        bl = min(lls, key=lls.get)
        paper_best = {d: paper_best_baseline(PAPER_TABLE2_LOGLOSS, j, False) for d, j in TABLE2_COLUMNS.items()}
        rows.append(_sample_claim(f"Table 2: MIAN's logloss is below the best baseline's ({bl})",
                                  _versus(PAPER_TABLE2_LOGLOSS, "mian", paper_best, TABLE2_COLUMNS),
                                  mian, _seed_records(records, dataset, bl, "default"), "logloss", -1, evidence))
    return rows


def ablation_claims(records: Sequence[dict[str, Any]], dataset: str,
                    evidence: TestEvidence | None = None) -> list[dict[str, str]]:
    """Table 3: removing each module lowers AUC, removing IBIM the most, and MIAN without IUIM and
    ICIM still beats the best baseline."""
    mian = _seed_records(records, dataset, "mian", "default")
    rows, drops, removed = [], {}, {}
    for variant, label in REMOVED.items():
        var = _seed_records(records, dataset, "mian", variant)
        if var and mian:
            diff, v, text = _test_compare(mian, var, "auc", +1, evidence)
            drops[label], removed[label] = (diff, v), var
            rows.append(_claim(f"Table 3: removing {label} lowers AUC",
                               _versus(PAPER_TABLE3, "default", variant, TABLE3_AUC), "MIAN " + text, v))
    singles = {k: v for k, v in drops.items() if k in ("IUIM", "ICIM", "IBIM", "GIM")}
    if "IBIM" in singles and len(singles) >= 2:
        drop = {name: PAPER_TABLE3["default"][j] - PAPER_TABLE3["no_ibim"][j] for name, j in TABLE3_AUC.items()}
        paper = f"Books drop {drop['Books']:.4f} (largest), Electronics {drop['Electronics']:.4f} (largest)"
        # IBIM's drop against each other module's: AUC(w/o M) - AUC(w/o IBIM) > 0, under both tests
        versus = {m: _test_compare(removed[m], removed["IBIM"], "auc", +1, evidence)
                  for m in singles if m != "IBIM"}
        runner_up = max(versus, key=lambda m: singles[m][0] if not math.isnan(singles[m][0]) else -math.inf)
        rows.append(_claim("Table 3: removing IBIM hurts most", paper, "AUC drop when removed (MIAN - variant): "
                           + ", ".join(f"{k} {fmt_delta(d)}" for k, (d, _) in sorted(singles.items(),
                                                                                     key=lambda kv: -kv[1][0]))
                           + f"; w/o {runner_up} vs w/o IBIM: {versus[runner_up][2]}",
                           _largest_drop_verdict(singles, "IBIM", {m: v for m, (_, v, _) in versus.items()})))
    both = _seed_records(records, dataset, "mian", "no_iuim_icim")
    base = best_baseline(records, dataset)
    if both and base:
        rows.append(_sample_claim(f"Table 3: MIAN w/o IUIM&ICIM still beats the best baseline ({base})",
                                  _versus(PAPER_TABLE3, "no_iuim_icim", "best_baseline", TABLE3_AUC),
                                  both, _seed_records(records, dataset, base, "default"), "auc", +1, evidence))
    return rows


def _largest_drop_verdict(drops: dict[str, tuple[float, str]], module: str,
                          versus: dict[str, str] | None = None) -> str:
    """Verdict of "removing ``module`` hurts most" from {module: (AUC drop, verdict of "removing
    it lowers AUC")} and ``versus`` {other module: verdict of "``module``'s drop is larger than
    that module's" (AUC of w/o other - AUC of w/o ``module`` > 0, both tests)}: reproduced when
    ``module``'s own claim is reproduced and its drop is significantly larger than every other
    module's; not reproduced when some other module's drop is significantly larger than
    ``module``'s; inconclusive otherwise (a larger point estimate alone decides nothing; also with
    fewer than 2 paired seeds: NaN drop); partial when any of these comparisons is
    (:func:`partial_verdict`)."""
    diff, v = drops[module]
    partial = [x for x in [v, *(versus or {}).values()] if is_partial(x)]
    if partial:
        return min(partial, key=lambda x: int(x.split("(")[1].split()[0]))
    if math.isnan(diff) or not versus:
        return INCONCLUSIVE
    if any(x == NOT_REPRODUCED for x in versus.values()):
        return NOT_REPRODUCED
    if v == REPRODUCED and all(x == REPRODUCED for x in versus.values()):
        return REPRODUCED
    return INCONCLUSIVE


def transformer_claims(records: Sequence[dict[str, Any]], dataset: str,
                       evidence: TestEvidence | None = None, curves: bool = True) -> list[dict[str, str]]:
    """Table 4: Pre-LN beats Post-LN beats no Transformer (AUC); Figure 5 (only with ``curves``):
    Pre-LN reaches 99% of its best validation AUC in fewer steps."""
    names = {"default": "Pre-LN", "post_ln": "Post-LN", "no_transformer": "no Transformer"}
    runs = {v: _seed_records(records, dataset, "mian", v) for v in names}
    rows = [_sample_claim(f"Table 4: {names[a]} beats {names[b]} (AUC)",
                          f"Commercial {PAPER_TABLE4[a][0]:.4f} vs {PAPER_TABLE4[b][0]:.4f}", runs[a], runs[b], "auc",
                          +1, evidence)
            for a, b in (("default", "post_ln"), ("default", "no_transformer"), ("post_ln", "no_transformer"))
            if runs[a] and runs[b]]
    if not curves:
        return rows
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
    records: Sequence[dict[str, Any]], dataset: str, gim: dict[str, Any] | None = None,
    evidence: TestEvidence | None = None, curves: bool = True,
) -> list[dict[str, str]]:
    """Claim rows for one dataset: claim, paper, ours, verdict. Claims without runs are omitted.
    ``evidence``: the runs' test scores for the bootstrap (None: n/a, so no test-metric claim is
    reproduced). ``curves``: False leaves Figure 5 out (runs that validate at epoch ends only:
    those on a reading, the tuned protocol's)."""
    return [*main_table_claims(records, dataset, evidence), *ablation_claims(records, dataset, evidence),
            *transformer_claims(records, dataset, evidence, curves), *figure6_claims(gim)]


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
                   left_out: list[str], evidence: "TestEvidence | None" = None) -> dict[str, Any] | None:
    """The claims of ``dataset`` under the reading of MIAN chosen on validation AUC
    (:func:`bench.training.studies.chosen_reading`; None while the readings study is not complete):
    {"reading", "label", "means" (reading -> mean validation AUC), "rows" (:func:`dataset_claims`
    on :func:`as_reading` without the Figure 5 claims, which are the default reading's alone;
    Figure 6 from the readings study's ``readings_gim.json``; empty when the default reading is
    the chosen one, whose claims are the dataset's own)}."""
    from bench.report.studies import READINGS_GIM_FILE
    from bench.training.studies import READINGS_VARIANTS, chosen_reading

    best, means = chosen_reading(records, dataset)
    if best is None:
        return None
    if best == "default":  # the claims above already are the chosen reading's: nothing to compute again
        return {"reading": best, "label": READINGS_VARIANTS[best][0], "means": means, "rows": []}
    gim = None
    if (folder / READINGS_GIM_FILE).exists():
        gim = json.loads((folder / READINGS_GIM_FILE).read_text()).get(best)
        ids = {r["run_id"] for r in records}
        if gim is not None and gim.get("model_differs_from_record"):
            left_out.append(f"{folder / READINGS_GIM_FILE} [{best}] left out: its models are not those of the records.")
            gim = None
        elif gim is not None and not set(gim.get("seed_run_ids") or ["?"]) <= ids:
            left_out.append(f"{folder / READINGS_GIM_FILE} [{best}] left out: it comes from runs that are not protocol "
                            "runs (run `ablate --study readings` again).")
            gim = None
    # Figure 5 is the default reading's alone: runs on a reading validate at epoch ends only, so
    # their curves are not the figure's cadence (the side column shows "not run on this reading")
    rows = dataset_claims(as_reading(records, best), dataset, gim, evidence=evidence, curves=False)
    return {"reading": best, "label": READINGS_VARIANTS[best][0], "means": means, "rows": rows}


def _side_lines(table: list[list[str]], headers: list[str], changed: list[str], changed_label: str,
                none_changed: str, missing: list[str], missing_text: str) -> list[str]:
    """The side-by-side table of two claim columns (:func:`_side_by_side`) and its notes: the
    changed verdicts (or ``none_changed``), and ``missing_text`` when some claims have no second column."""
    from tabulate import tabulate

    lines = ["", tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines.append(f"{changed_label} ({len(changed)}): " + "; ".join(changed) + "." if changed else none_changed)
    if missing:
        lines.append(missing_text)
    return lines


def _reading_section(rows: list[dict[str, str]], info: dict[str, Any] | None, dataset: str) -> list[str]:
    """The paragraph and side-by-side table of the claims under the reading chosen on validation."""

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
    table, changed, missing, figure6, _ = _side_by_side(rows, info["rows"], "not run on this reading")
    head += _side_lines(
        table, ["claim", "verdict, default reading (above)", f"ours, {best}", f"verdict, {best}"], changed,
        "Verdicts that depend on the reading", "No verdict of the claims run on both readings depends on the reading.",
        missing, f"Not run on {best} ({len(missing)} claim(s)): " + (
            "Figure 5 is drawn for the default reading only (its cadence)." if all(
                c.startswith("Figure 5") for c in missing) else
            f"the ablation and Table 4 on it come from `python cli.py ablate --reading best --dataset {dataset}` and "
            "`... --study transformer --reading best`; Figure 5 is drawn for the default reading only (its cadence)."))
    if figure6:
        head.append(f"Figure 6 on {best}: no statistics (the readings study's readings_gim.json has none for it, or they "
                    "are not of its protocol runs).")
    return head + [""]


_BASELINE_SUFFIX = re.compile(r" \(([a-z_]+)\)$")


def claim_key(claim: str) -> str:
    """The claim without the best baseline it names ("... beats the best baseline (din)" -> "...
    beats the best baseline"): the same claim under two protocols may be against another model,
    each side's best (the claims about (AUC) keep their upper-case suffix)."""
    return _BASELINE_SUFFIX.sub("", claim)


def _baseline_named(claim: str) -> str | None:
    """The best baseline a claim names ("... (din)" -> "din"), None when it names none."""
    named = _BASELINE_SUFFIX.search(claim)
    return named.group(1) if named else None


def _side_by_side(rows: list[dict[str, str]], other: list[dict[str, str]], absent: str
                  ) -> tuple[list[list[str]], list[str], list[str], list[str], list[str]]:
    """The claims ``rows`` against the same claims ``other`` (another reading or protocol), matched
    by :func:`claim_key`: (table rows [claim, verdict, other's ours, other's verdict] -- ``absent``
    as other's ours for a claim it lacks; "against <model>: " before other's ours when its best
    baseline is another model --, "claim (verdict -> other verdict)" of each changed verdict (a claim
    against two best baselines names both: "... best baseline (dien / din)"), the
    claims other lacks except Figure 6, the Figure 6 claims other lacks, the claims only other has).
    A partial verdict (a study still running) is no change."""
    theirs = {claim_key(r["claim"]): r for r in other}
    table, changed, missing, figure6 = [], [], [], []
    for r in rows:
        o = theirs.get(claim_key(r["claim"]))
        if o is None:
            (figure6 if r["claim"].startswith("Figure 6") else missing).append(r["claim"])
            table.append([r["claim"], r["verdict"], absent, ""])
            continue
        mine_base, their_base = _baseline_named(r["claim"]), _baseline_named(o["claim"])
        other_base = mine_base != their_base  # same claim kind, another best baseline on the other side
        if o["verdict"] != r["verdict"] and not (is_partial(o["verdict"]) or is_partial(r["verdict"])):
            name = f"{claim_key(r['claim'])} ({mine_base} / {their_base})" if other_base else r["claim"]
            changed.append(f"{name} ({r['verdict']} -> {o['verdict']})")
        table.append([r["claim"], r["verdict"], (f"against {their_base}: " if other_base else "") + o["ours"],
                      o["verdict"]])
    mine = {claim_key(r["claim"]) for r in rows}
    only = [o["claim"] for o in other if claim_key(o["claim"]) not in mine]
    return table, changed, missing, figure6, only


def tuned_claims(records: Sequence[dict[str, Any]], dataset: str, folder: Path,
                 evidence: "TestEvidence | None" = None) -> dict[str, Any] | None:
    """The claims of ``dataset`` under the tuned protocol (:mod:`bench.training.tuned`), or None when
    ``folder`` (results/<dataset>/tuned/) has no tuned.json (no ``--tuned`` table made yet; then
    {"manifest": None, "tuning": True} when the tuning tables results/<dataset>/tuning/ are there):
    {"manifest" (the best configuration of each model's study), "rows" (:func:`dataset_claims` on
    the tuned runs of :func:`bench.training.tuned.tuned_protocol_records` under their plain variant
    names: the same verdict rule; Figure 5 left out, those runs validate at epoch ends only; no
    Figure 6), "notes" (the tuned runs left out and why, for the console)}. ``records``: every
    run record of the store (the tuned runs are not protocol records)."""
    from bench.training.studies import study_variant
    from bench.training.tuned import TUNED_FILE, read_manifest, tuned_protocol_records

    manifest = read_manifest(folder / TUNED_FILE)
    if manifest is None:
        tuning = (Path(folder).parent / "tuning" / "summary.md").exists()
        return {"manifest": None, "rows": [], "notes": [], "tuning": True} if tuning else None
    recs, notes = tuned_protocol_records(records, dataset, manifest, study_variant)
    rows = dataset_claims(recs, dataset, None, evidence, curves=False)
    return {"manifest": manifest, "rows": rows, "notes": notes}


def _tuned_section(rows: list[dict[str, str]], info: dict[str, Any] | None, dataset: str) -> list[str]:
    """The paragraph and side-by-side table of the claims under the default and the tuned protocol
    (``info``: :func:`tuned_claims`; None: one line naming the commands that make the tuned tables)."""

    if info is not None and info.get("manifest") is None:
        return [f"Tuned protocol: not yet (the tuning studies of {dataset} are in results/{dataset}/tuning/, the tuned "
                f"tables are not: `python cli.py reproduce --tuned --dataset {dataset}`, `python cli.py ablate --tuned "
                f"--dataset {dataset}` and `python cli.py ablate --study transformer --tuned --dataset {dataset}`).", ""]
    if info is None:
        return [f"Tuned protocol: not yet (no tuned tables of {dataset}: `python cli.py tune --dataset {dataset}`, then "
                f"`python cli.py reproduce --tuned --dataset {dataset}`, `python cli.py ablate --tuned --dataset "
                f"{dataset}` and `python cli.py ablate --study transformer --tuned --dataset {dataset}`).", ""]
    models = info["manifest"].get("models", {})
    budget = sorted({str(e.get("budget")) for e in models.values()})
    seed = sorted({str(e.get("tuning_seed")) for e in models.values()})
    per = ", ".join(f"{m} trial {e['trial']} (validation AUC {float(e['valid_auc']):.4f})" for m, e in models.items())
    head = [f"### {dataset}: the claims under the default and the tuned protocol", "",
            f"Tuned protocol: each model in the best configuration of its tuning study ({'/'.join(budget)} trials per "
            f"model, best-epoch validation AUC, test never scored; results/{dataset}/tuned/tuned.json), trained on "
            f"seeds other than the tuning seed {'/'.join(seed)}; the same verdict rule. Best trials: {per}."]
    table, changed, missing, _, only = _side_by_side(rows, info["rows"], "not run under the tuned protocol")
    theirs = {r["claim"]: r for r in info["rows"]}
    table += [[c, "not run under the default protocol", theirs[c]["ours"], theirs[c]["verdict"]] for c in only]
    head += _side_lines(
        table, ["claim", "verdict, default protocol (above)", "ours, tuned protocol", "verdict, tuned protocol"],
        changed, "Verdicts that change under the tuned protocol",
        "No verdict of the claims checked under both protocols changes under the tuned protocol.",
        missing, f"Not run under the tuned protocol ({len(missing)} claim(s)): " + (
            "Figure 5 is the default protocol's only (tuned runs validate at epoch ends)."
            if all(c.startswith("Figure 5") for c in missing) else
            f"Table 2 comes from `python cli.py reproduce --tuned --dataset {dataset}`, Table 3 from `python cli.py "
            f"ablate --tuned --dataset {dataset}`, Table 4 from `... --study transformer --tuned`; Figures 5 and 6 "
            "are the default protocol's only."))
    return head + [""]


def claims_markdown(per_dataset: dict[str, list[dict[str, str]]], notes: Sequence[str] = (),
                    dataset_notes: dict[str, Sequence[str]] | None = None,
                    readings: dict[str, dict[str, Any] | None] | None = None,
                    tuned: dict[str, dict[str, Any] | None] | None = None) -> str:
    """``results/CLAIMS.md``: one section per dataset, one row per claim, then that dataset's
    ``dataset_notes`` (e.g. what a change of machine moves: :func:`bench.report.crosscheck.cross_machine_notes`),
    the claims under the reading chosen on validation (``readings``: :func:`reading_claims` per
    dataset) and the same claims under the tuned protocol beside the default one (``tuned``:
    :func:`tuned_claims` per dataset, None for a dataset without tuned tables: a line naming the
    commands that make them)."""
    from tabulate import tabulate

    parts = [
        "# Does MIAN's evidence hold? Claims of the paper against our runs",
        "",
        "Generated by `python cli.py report` from the run records under `results/runs/`, their test scores "
        "under `results/scores/` and the GIM summaries under `results/<dataset>/`; do not edit by hand.",
        "",
        "Verdict rule: a claim about a test metric (Tables 2-4) compares the mean over seeds of the paired "
        "difference a - b (Δ) with two tests, alpha = 0.05: (1) over seeds, a two-sided paired t-test ('p seeds': "
        "the variation between training seeds); (2) over test samples, a paired cluster bootstrap over test users "
        f"('p users': {BOOTSTRAP_REPLICATES} replicates, each drawing the test users with replacement, numpy "
        f"default_rng({BOOTSTRAP_SEED}), the same draws for both models and every seed; p = 2 x the share of "
        "replicates on the other side of 0, at least 1/2000; in brackets the 95 % percentile interval of Δ), from "
        "each run's kept test scores (results/scores/, checked against its record). Each test alone says "
        "*reproduced* (p < 0.05 with the paper's sign), *not reproduced* (p < 0.05 with the opposite sign) or "
        "*inconclusive*; the claim is *reproduced* only when both say reproduced, *not reproduced* only when both "
        "say not reproduced, and *inconclusive* otherwise: either test not significant, the two disagreeing, "
        "or the bootstrap n/a (a run whose test scores are missing or fail their check); *partial (k of 5 seeds)* when "
        "the two sides share fewer than the protocol's 5 seeds (a study still running: no verdict yet). 'Removing IBIM hurts "
        "most': reproduced when 'removing IBIM lowers AUC' is reproduced and IBIM's drop is larger than every other "
        "single module's by both tests (the AUC of MIAN without that module against MIAN without IBIM, paired), not "
        "reproduced when another module's drop is larger than IBIM's by both tests, inconclusive otherwise. "
        "Figure 5 (validation steps, no test samples): the t-test over seeds alone. Figure 6: the share of test "
        "samples where the interactive representation has the larger GIM weight, averaged over the seeds' models, "
        "with its 95 % interval from a two-stage bootstrap (test users with replacement, all samples of a drawn user, "
        "and the seeds with replacement): reproduced only when the interval lies above 50 % and the interactive "
        "representation has the larger mean weight, not reproduced when the interval lies below 50 %, "
        "inconclusive otherwise. Logloss claims: every run's model is the epoch of best validation AUC "
        "(the protocol's early stopping), whose logloss may be worse than at the epoch of best validation logloss; "
        "'selected on validation logloss' gives the same comparison with each run's epoch of lowest validation "
        "logloss (its record's test_by_logloss; t-test over seeds only, no verdict; n/a for records made before "
        "the field existed). The paper's figures come from other datasets (Amazon Books / "
        "Electronics, a commercial set); they show the direction claimed, not a value to match.",
        "",
        "Two protocols: each dataset's table holds the claims under the default protocol (PROTOCOL section 3, the "
        "configs of bench/training/configs); below it, the same claims under the tuned protocol (each model in the "
        "best configuration of its tuning study, chosen on validation AUC, trained on seeds other than the tuning "
        "seed: results/<dataset>/tuned/), with the same verdict rule, and the claims whose verdict changes.",
        "",
    ]
    for ds, rows in per_dataset.items():
        parts.append(f"## {ds}")
        parts.append("")
        if not rows:
            parts.append("No claim can be checked yet (MIAN or the compared runs are missing).")
        else:
            counts = {k: sum(r["verdict"] == k for r in rows) for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
            if any(is_partial(r["verdict"]) for r in rows):
                counts[f"{PARTIAL} (a study still running)"] = sum(is_partial(r["verdict"]) for r in rows)
            parts.append(tabulate([[r["claim"], r["paper"], r["ours"], r["verdict"]] for r in rows],
                                  headers=["claim", "paper", "ours", "verdict"], tablefmt="github", disable_numparse=True))
            parts.append("")
            parts.append(", ".join(f"{v}: {n}" for v, n in counts.items()))
        if rows and not any(r["claim"].startswith("Figure 6") for r in rows):
            parts += ["", f"Figure 6: not checked (no usable results/{ds}/gim_summary.json of this dataset's protocol "
                          f"runs: `python cli.py visualize-attention --cases 14 --dataset {ds}`; notes at the end say "
                          "why a summary was left out)."]
        for note in (dataset_notes or {}).get(ds, ()):
            parts += ["", f"- {note}"]
        parts.append("")
        if readings is not None and rows:
            parts += _reading_section(rows, readings.get(ds), ds)
        if tuned is not None:
            parts += _tuned_section(rows, tuned.get(ds), ds)
    parts += list(notes)
    return "\n".join(parts) + "\n"


def claims_report(results: Path) -> Output:
    """Write ``results/CLAIMS.md`` from the protocol's run records under ``results/runs``, their
    test scores under ``results/scores`` (:class:`TestEvidence`) and each
    dataset's ``gim_summary.json`` (left out when it is not of a protocol run's model); returns its
    text followed by the run records left out and why (shown, not written: the file depends only
    on the protocol's records and the committed figures, so runs made with ``--set`` or on other
    data never change it) and, when some runs a claim needs lack usable test scores, one paragraph
    naming the first few and why (:meth:`TestEvidence.summary`).
    Raises ReportError when there is no run record or none of the protocol's (naming why the
    records were left out), StoreError when one fails its check."""
    from bench.io import atomic_write_text
    from bench.report.crosscheck import cross_machine_notes
    from bench.training.runs import RunStore
    from bench.training.studies import protocol_records

    store = RunStore(results / "runs")
    every = list(store.records())
    records, left_out = protocol_records(every)
    if not every:
        raise ReportError(f"no run records under {results / 'runs'}; run `reproduce`, `ablate` first")
    if not records:
        raise ReportError(f"{len(every)} run record(s) under {results / 'runs'}, none of the protocol's: "
                          f"{' '.join(left_out)} Run `reproduce`, `ablate` (without --set) first")
    figure_notes: list[str] = []  # about the committed figures: in the file
    evidence = TestEvidence(store)
    datasets = sorted({r["dataset"] for r in records})
    per = {ds: dataset_claims(records, ds, _gim_summary(results / ds / "gim_summary.json", records, figure_notes),
                              evidence=evidence)
           for ds in datasets}
    readings = {ds: reading_claims(records, ds, results / ds, figure_notes, evidence) for ds in datasets}
    tuned = {ds: tuned_claims(every, ds, results / ds / "tuned", evidence) for ds in datasets}
    text = claims_markdown(per, notes=figure_notes,
                           dataset_notes={ds: [*_signal_notes(results / ds), *cross_machine_notes(results / ds)]
                                          for ds in per},
                           readings=readings, tuned=tuned)
    atomic_write_text(results / "CLAIMS.md", text)
    shown = [*left_out, *(n for info in tuned.values() if info for n in info["notes"]),
             *filter(None, [evidence.summary()])]
    return Output(text + "".join(f"\n{n}" for n in shown), [results / "CLAIMS.md"])


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

