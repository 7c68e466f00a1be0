"""The studies as the commands make them: train the runs a table lacks (through
:class:`bench.training.studies.Runner`), build the table or figure from the run records, write it
under ``results/<dataset>/`` and return what the command prints (:class:`Output`).

Table 2 (``reproduce``): :func:`main_table_study`; Table 3 (``ablate``): :func:`ablation_study`;
Table 4 and Figure 5 (``ablate --study transformer``): :func:`transformer_study`; the readings of
MIAN (``ablate --study readings``): :func:`readings_study`; Figure 6 (``visualize-attention``):
:func:`figure6`, :func:`redraw_figure6`, with its statistics over seeds :func:`figure6_statistics`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.io import atomic_write_text
from bench.report import Output, ReportError, Table, best_baseline, convergence_curves, fmt_pm, main_table, \
    steps_to_fraction, variant_table
from bench.report.crosscheck import cross_machine_notes
from bench.report.paper import PAPER_TABLE3, PAPER_TABLE3_COLUMNS, PAPER_TABLE4, PAPER_TABLE4_COLUMNS


def out_dir(results: Path, dataset: str, extra: dict, subset: str | None = None, write: bool = True,
            reading: str | None = None, tuned: bool = False) -> Path:
    """Where a command's tables and figures go: ``results/<dataset>`` for the protocol's config,
    models and seeds. With ``--set`` overrides, a sub-folder named by them (holding
    ``overrides.json`` unless ``write`` is False: a command that only reads); for a subset of the
    models or another number of seeds, ``subsets/<tag>`` below that; a study on top of a
    ``reading`` of MIAN (``ablate --reading``) goes to ``readings/<reading>/`` before the subset,
    a study of the tuned protocol (``--tuned``: :mod:`bench.training.tuned`) to ``tuned/``.
    So the protocol's tables are never replaced by a partial or differently configured study."""
    out = results / dataset
    if extra:
        text = json.dumps(extra, sort_keys=True)
        out = out / f"overrides-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        if write:
            atomic_write_text(out / "overrides.json", text + "\n")
    if reading is not None:  # a study on top of a reading of MIAN (ablate --reading)
        out = out / "readings" / reading
    if tuned:  # the tuned protocol (--tuned)
        out = out / "tuned"
    if subset:
        out = out / "subsets" / subset
    return out


def _publish(tab: Table, results: Path, dataset: str, extra: dict, stem: Path) -> list[Path]:
    """Add the notes every study table ends with (the ``--set`` overrides, the cross-machine
    checks of ``dataset``) and write ``tab`` to ``stem``.{md,csv,tex}."""
    if extra:
        tab.notes.append(f"config overrides (--set): {extra}")
    else:  # the checks compare protocol runs; a table of other settings is other runs
        tab.notes.extend(cross_machine_notes(results / dataset))
    return tab.write(stem)


def tuned_notes(tuned: dict, models: Sequence[str], seeds: int) -> list[str]:
    """The notes of a tuned table: the rule, then each model's study, best trial and values."""
    from bench.report.tuning import _fmt

    first = next(iter(tuned.values()))
    notes = [f"Tuned protocol (PROTOCOL section 3): each model's best configuration of its tuning study (`python cli.py "
             f"tune`: {first.budget} trials per model, best-epoch validation AUC, test never scored), trained on seed(s) "
             f"{'0' if seeds == 1 else f'0-{seeds - 1}'}, not the tuning seed {first.tuning_seed}; runs of variant tuned-<study>-t<trial> "
             "(no default-protocol run is used here)."]
    for m in models:
        c = tuned[m]
        notes.append(f"{m}: trial {c.trial} of study {c.study} (validation AUC {c.value:.4f}, run {c.trial_run_id}): "
                     + ("; ".join(f"{k}={_fmt(v)}" for k, v in c.params.items()) or "nothing tuned"))
    return notes


def _tuned_publish(tab: Table, runner, results: Path, dataset: str, tuned: dict, models: Sequence[str], seeds: int,
                   subset: str | None, stem: str) -> tuple[Path, list[Path]]:
    """Write the tuned table ``tab`` to ``<results>/<dataset>/tuned/[subsets/<tag>/]<stem>.*`` with its
    notes, and the configurations it used to that folder's tuned.json; (the folder, the paths)."""
    from bench.training.tuned import write_manifest

    tab.title += " (tuned protocol)"
    tab.notes.extend(tuned_notes(tuned, models, seeds))
    out = out_dir(results, dataset, {}, subset, tuned=True)
    paths = tab.write(out / stem)
    paths.append(write_manifest(out, {m: tuned[m] for m in models}, runner.dataset(dataset)))
    return out, paths


def main_table_study(runner, results: Path, dataset: str, models: Sequence[str], seeds: int, extra: dict,
                     subset: str | None, tuned: dict | None = None) -> Output:
    """Table 2 of ``models`` over seeds 0..``seeds``-1: ``<out>/main_table.{md,csv,tex}``. With
    ``tuned`` ({model: :class:`bench.training.tuned.TunedConfig`}, every model of ``models``): the
    tuned protocol's Table 2, each model in its best configuration, into ``<dataset>/tuned/``."""
    from bench.training.studies import main_specs

    if tuned is not None:
        specs = [tuned[m].spec(s) for s in range(seeds) for m in models]
        recs = runner.run_all(specs, desc=f"{dataset} main table (tuned)")
        tab = main_table([{**r, "variant": "default"} for r in recs], dataset, models)
        _, paths = _tuned_publish(tab, runner, results, dataset, tuned, models, seeds, subset, "main_table")
        return Output(tab.markdown(), paths)
    records = runner.run_all(main_specs(dataset, models, range(seeds), extra), desc=f"{dataset} main table")
    tab = main_table(records, dataset, models)
    paths = _publish(tab, results, dataset, extra, out_dir(results, dataset, extra, subset) / "main_table")
    return Output(tab.markdown(), paths)


def _reading_runs(runner, dataset: str, variants: dict, seeds: int, extra: dict, reading: str | None,
                  desc: str, tuned=None) -> tuple[list[dict[str, Any]], dict, str]:
    """Run the MIAN ``variants`` of a study, on top of ``reading`` when given
    (:func:`bench.training.studies.on_reading`) or of MIAN's tuned configuration ``tuned`` (a
    :class:`bench.training.tuned.TunedConfig`: each variant's overrides after the tuned values):
    (their records, shown under the plain variant names so the study's table treats them as usual;
    the variants with labels naming the reading; a title suffix)."""
    from bench.training.studies import on_reading, variant_specs

    if tuned is not None:
        specs = [tuned.spec(s, v, o) for s in range(seeds) for v, (_, o) in variants.items()]
        recs = runner.run_all(specs, desc=f"{desc} (tuned)")
        return ([{**r, "variant": spec.variant.partition("+")[2] or "default"} for r, spec in zip(recs, specs)],
                variants, "")
    if reading is None:
        return runner.run_all(variant_specs(dataset, variants, range(seeds), extra), desc=desc), variants, ""
    composed = on_reading(reading, variants)
    recs = runner.run_all(variant_specs(dataset, composed, range(seeds), extra), desc=f"{desc} on {reading}")
    plain = dict(zip(composed, variants))  # composed name -> the study's own name
    shown = [{**r, "variant": plain[r["variant"]]} for r in recs]
    labels = {v: composed[c] for c, v in plain.items()}
    return shown, labels, f", every MIAN row on the reading {reading}"


def ablation_study(runner, results: Path, dataset: str, variants: dict, seeds: int, extra: dict,
                   subset: str | None, pool: Sequence[str] | None = None, reading: str | None = None,
                   tuned: dict | None = None) -> Output:
    """Table 3: the MIAN ``variants`` and the best baseline of ``pool`` (None: the seven
    baselines; empty: no baseline row), whose runs are the main table's (reused when `reproduce`
    made them): ``<out>/ablation.{md,csv,tex}``. With ``reading`` (a READINGS_VARIANTS name) every
    MIAN variant is built on that reading and the table goes to ``readings/<reading>/``. With
    ``tuned`` ({model: TunedConfig} of MIAN and the pool): every MIAN variant switches its module(s)
    off from MIAN's tuned configuration, the baselines are in theirs (the tuned main table's runs),
    into ``tuned/``."""
    from bench.training.registry import MODEL_NAMES
    from bench.training.studies import main_specs

    baselines = [m for m in MODEL_NAMES if m != "mian" and (pool is None or m in pool)]
    recs, variants, on = _reading_runs(runner, dataset, variants, seeds, extra, reading, f"{dataset} ablation",
                                       tuned=tuned["mian"] if tuned is not None else None)
    if tuned is not None:
        specs = [tuned[m].spec(s) for s in range(seeds) for m in baselines]
        base_recs = ([{**r, "variant": "default"} for r in runner.run_all(specs, desc=f"{dataset} baselines (tuned)")]
                     if baselines else [])
    else:
        base_recs = (runner.run_all(main_specs(dataset, baselines, range(seeds), extra), desc=f"{dataset} baselines")
                     if baselines else [])
    tab = variant_table(recs + base_recs, dataset, variants, f"Table 3 reproduction (ablation): {dataset}{on}",
                        PAPER_TABLE3, PAPER_TABLE3_COLUMNS, baseline=best_baseline(base_recs, dataset))
    tab.notes.append(signal_note(runner, results, dataset, extra, subset, reading, tuned=tuned is not None))
    if pool is not None:
        tab.notes.append("Best baseline chosen among " + (", ".join(baselines) if baselines else
                         "no model (--models none): no baseline row") + " (--models).")
    if tuned is not None:
        _, paths = _tuned_publish(tab, runner, results, dataset, tuned, ["mian", *baselines], seeds, subset, "ablation")
        return Output(tab.markdown(), paths)
    paths = _publish(tab, results, dataset, extra, out_dir(results, dataset, extra, subset, reading=reading) / "ablation")
    return Output(tab.markdown(), paths)


SIGNAL_FILE = "input_signal.json"


def signal_note(runner, results: Path, dataset: str, extra: dict, subset: str | None, reading: str | None = None,
                tuned: bool = False) -> str:
    """The ablation table's note on what IUIM's and ICIM's inputs can tell about the label
    (:func:`bench.data.stats.input_signal` of the prepared data the runs trained on), also written
    to ``<out>/input_signal.json`` so that the claims report can say it without the data."""
    from bench.data.stats import input_signal, input_signal_note
    from bench.training.config import data_params

    signal = input_signal(runner.dataset(dataset, data_params(extra)))
    out = out_dir(results, dataset, extra, subset, reading=reading, tuned=tuned)
    atomic_write_text(out / SIGNAL_FILE, json.dumps(signal, indent=1, sort_keys=True) + "\n")
    return input_signal_note(signal)


def transformer_study(runner, results: Path, dataset: str, variants: dict, seeds: int, extra: dict,
                      subset: str | None, reading: str | None = None, tuned: dict | None = None) -> Output:
    """Table 4 with the steps each variant takes to 99% of its best validation AUC
    (``<out>/transformer.{md,csv,tex}``) and Figure 5 (``<out>/convergence.png``). With ``reading``
    (a READINGS_VARIANTS name) the Table 4 rows of ``variants`` are built on that reading, into
    ``readings/<reading>/``, without Figure 5 (those runs validate at epoch ends only); likewise
    with ``tuned`` ({"mian": TunedConfig}): the Table 4 rows from MIAN's tuned configuration, into
    ``tuned/``."""
    from bench.report.figures import convergence_plot
    from bench.training.studies import CONVERGENCE_VARIANTS, TABLE4_VARIANTS, TRANSFORMER_VARIANTS, draws_curves

    if reading is not None or tuned is not None:
        variants = {v: o for v, o in variants.items() if v in TABLE4_VARIANTS}
    recs, variants, on = _reading_runs(runner, dataset, variants, seeds, extra, reading, f"{dataset} transformer",
                                       tuned=tuned["mian"] if tuned is not None else None)
    tab = variant_table(recs, dataset, variants, f"Table 4 reproduction (Transformer variants): {dataset}{on}",
                        PAPER_TABLE4, PAPER_TABLE4_COLUMNS)
    if tuned is not None:
        tab.notes.append("No Figure 5 and no steps column in the tuned protocol: its runs validate at epoch ends only "
                         "(the mid-epoch cadence is the default protocol's Figure 5 runs').")
        _, paths = _tuned_publish(tab, runner, results, dataset, tuned, ["mian"], seeds, subset, "transformer")
        return Output(tab.markdown(), paths)
    out = out_dir(results, dataset, extra, subset, reading=reading)
    if reading is not None:
        tab.notes.append("No Figure 5 and no steps column on a reading: its runs validate at epoch ends only "
                         "(the mid-epoch cadence is the protocol's Figure 5 runs').")
        return Output(tab.markdown(), _publish(tab, results, dataset, extra, out / "transformer"))
    curve_recs = [r for r in recs if draws_curves(r["model"], r["variant"])]
    curves = convergence_curves(curve_recs, dataset, list(variants))
    _add_steps_column(tab, curves, curve_recs[0]["config"]["train"] if curve_recs else None)
    paths = _publish(tab, results, dataset, extra, out / "transformer")
    shown = [v for v in CONVERGENCE_VARIANTS if v in variants]
    convergence_plot(curves[curves["variant"].isin(shown)], {v: TRANSFORMER_VARIANTS[v][0] for v in shown},
                     out / "convergence.png",
                     f"Figure 5 reproduction on {dataset}: validation metrics against training steps "
                     f"(mean ± std over {seeds} seeds; drawn while at least half the seeds still train)")
    return Output(tab.markdown(), paths + [out / "convergence.png"])


def readings_study(runner, results: Path, dataset: str, variants: dict, seeds: int, extra: dict,
                   subset: str | None, progress: Callable[[str], None] = print) -> Output:
    """The readings of MIAN's unspecified details (:data:`bench.training.studies.READINGS_VARIANTS`):
    ``<out>/readings.{md,csv,tex}`` (test AUC / logloss, deltas and paired-t p-values against the
    default, the best-epoch validation AUC) and ``<out>/readings_gim.{md,csv,tex}`` (the Figure 6
    statistics of each reading with learned GIM weights, from its seeds' models:
    :func:`figure6_statistics`)."""
    from bench.report import add_valid_auc_column, readings_figure6_table
    from bench.training.studies import variant_specs
    from bench.training.train import RunSpec

    recs = runner.run_all(variant_specs(dataset, variants, range(seeds), extra), desc=f"{dataset} readings")
    tab = variant_table(recs, dataset, variants, f"MIAN readings of the paper's unspecified details: {dataset}", {}, ())
    add_valid_auc_column(tab, recs, dataset)
    tab.notes.append("Each row changes one reading of the default (docs/MIAN.md, Readings; ../shared/paper/MIAN.md "
                     "7.2, 7.4, 7.6); the Figure 6 statistics of the readings are in readings_gim.md.")
    stats, summaries, notes, users = {}, {}, [], None
    for v, (label, overrides) in variants.items():
        model_cfg = next(r["config"]["model"] for r in recs if r["variant"] == v)
        if not model_cfg.get("use_gim", True) or model_cfg.get("gim_mode", "sum") == "uniform":
            continue  # no learned GIM weights
        trained = seed_gim_weights(runner, dataset, range(seeds), extra, variant=v, overrides=overrides,
                                   progress=progress)
        if users is None:
            users = runner.dataset_for(RunSpec(dataset, "mian", 0, overrides=extra)).test.user_index.cpu().numpy()
        stats[v] = figure6_statistics(trained, users)
        summaries[v] = {"dataset": dataset, "variant": v, "n_samples": int(len(users)),
                        **summary_over_seeds(stats[v], trained),
                        **({"model_differs_from_record": [d for t in trained.values() for d in t.diffs]}
                           if any(t.diffs for t in trained.values()) else {})}
        differ = [s for s, t in trained.items() if t.diffs]
        if differ:
            notes.append(f"{label}: the model(s) of seed(s) {', '.join(map(str, differ))} are retrains on this machine "
                         f"that differ from their run records ({trained[differ[0]].diffs[0]}, ...): these statistics "
                         "are not those of the recorded models.")
    out = out_dir(results, dataset, extra, subset)
    paths = _publish(tab, results, dataset, extra, out / "readings")
    texts = [tab.markdown()]
    if stats:
        gim_tab = readings_figure6_table(stats, dataset, variants, notes)
        if extra:
            gim_tab.notes.append(f"config overrides (--set): {extra}")
        paths += gim_tab.write(out / "readings_gim")
        atomic_write_text(out / READINGS_GIM_FILE, json.dumps(summaries, indent=1, sort_keys=True) + "\n")
        paths.append(out / READINGS_GIM_FILE)
        texts.append(gim_tab.markdown())
    return Output("\n".join(texts), paths)


def _add_steps_column(tab: Table, curves, train: dict[str, Any] | None) -> None:
    """Table 4's column "Steps to 99% best valid AUC" (mean ± std over seeds), its CSV columns and
    its note; ``curves``: the validation curves of the runs that draw them
    (:func:`bench.training.studies.draws_curves`; the other variants' cells stay empty, they are
    validated at epoch ends only); ``train``: those runs' train config (batch size, evaluation
    interval), None when the table has none of them."""
    agg = steps_to_fraction(curves).groupby("variant")["steps"].agg(["mean", "std"])
    tab.frame["Steps to 99% best valid AUC"] = [
        (fmt_pm(agg.loc[v, "mean"], agg.loc[v, "std"], 0) if v in agg.index else "") for v in tab.csv["variant"]]
    tab.csv["steps_to_99pct_mean"] = [agg["mean"].get(v, float("nan")) for v in tab.csv["variant"]]
    tab.csv["steps_to_99pct_std"] = [agg["std"].get(v, float("nan")) for v in tab.csv["variant"]]
    if train is None:
        return
    tab.notes.append("Steps to 99%: first evaluated optimiser step (batch of "
                     f"{train['batch_size']}) whose validation AUC reaches 99% of the run's "
                     f"best; validation is evaluated every {train['eval_every_steps']} "
                     "steps and at each epoch end; mean ± std over seeds; shown for the runs that "
                     "draw the convergence curves (Figure 5), the others validate at epoch ends only.")


# --------------------------------------------------------------------------- Figure 6

#: Figure 6 of the protocol: MIAN seed 0, 14 test cases drawn with seed 2021, the interval over the
#: models of seeds 0-4 (others go to subsets/)
FIGURE6_DEFAULTS = {"seed": 0, "cases": 14, "case_seed": 2021, "seeds": 5}
CASE_RULE = "uniform draw without replacement among test positives, numpy default_rng(case_seed), sorted by index"


def figure6_names(dataset: str, seed: int, cases: int, case_seed: int, seeds: int = 5) -> tuple[str | None, str]:
    """(the subsets/ tag of a Figure 6 other than the protocol's, None for it; the figure's title)."""
    given = {"seed": seed, "cases": cases, "case_seed": case_seed, "seeds": seeds}
    tag = "_".join(f"{k.replace('_', '')}{v}" for k, v in given.items() if v != FIGURE6_DEFAULTS[k])
    title = (f"Figure 6 reproduction on {dataset}: GIM weights of {cases} test positives "
             f"(MIAN seed {seed}, cases drawn with seed {case_seed})")
    return tag or None, title


@dataclass
class SeedWeights:
    """The GIM weights of one run's trained model on the test split.

    record: the run record; weights: [N, 7] (GIM_INPUTS order); diffs: how the model differs from
    the record (:meth:`bench.training.studies.Runner.checkpoint_differences`; empty: the recorded
    model); source: where the model came from (for messages)."""

    record: dict[str, Any]
    weights: Any
    diffs: list[str]
    source: str


def seed_gim_weights(runner, dataset: str, seeds: Sequence[int], extra: dict, variant: str = "default",
                     overrides: dict | None = None, progress: Callable[[str], None] = print) -> dict[int, SeedWeights]:
    """{seed: :class:`SeedWeights`} of the MIAN ``variant`` (its config ``overrides``) on ``dataset``.

    The runs without a record train first (``Runner.run_all``: workers, checkpoints); each model
    is the run's best-epoch checkpoint, else the run is retrained (said through ``progress``; the
    record is kept) and the differences from the record are kept in ``diffs``."""
    from bench.training.train import RunSpec, collect_output

    specs = [RunSpec(dataset, "mian", s, variant=variant, variant_overrides=dict(overrides or {}),
                     overrides=dict(extra)) for s in seeds]
    records = runner.run_all(specs, desc=f"{dataset} MIAN {variant}")
    test = runner.dataset_for(specs[0]).test.to(runner.device) if specs else None
    out = {}
    for spec, record in zip(specs, records):
        model = runner.load_model(record)
        if model is None:  # record without checkpoint (e.g. a fresh clone): retrain it
            progress(f"no checkpoint for run {record['run_id']}; retraining it (the record is kept)")
            model, diffs = runner.retrain_model(spec, record)
            source = f"retrained MIAN {variant} seed {spec.seed}"
        else:
            diffs = runner.checkpoint_differences(record, model) or []
            source = f"the checkpoint of MIAN {variant} seed {spec.seed} (a retrain on this machine)"
        weights = collect_output(model, test, 4096, "gim_weights", by_length=True)  # [N, 7]
        out[spec.seed] = SeedWeights(record, weights, diffs, source.replace("MIAN default ", "MIAN "))
    return out


def figure6_statistics(trained: dict[int, SeedWeights], users) -> dict[str, Any]:
    """The Figure 6 statistics over the seeds of ``trained`` (:func:`seed_gim_weights`) with the
    test split's ``users`` [N]: :func:`bench.report.figures.share_interval` (the mean weights, each
    seed's share of samples where the interactive representation outweighs the original, their
    mean and its cluster-bootstrap interval over test users and seeds)."""
    from bench.report.figures import share_interval

    return share_interval([trained[s].weights for s in sorted(trained)], users)


def summary_over_seeds(stats: dict[str, Any], trained: dict[int, "SeedWeights"]) -> dict[str, Any]:
    """The over-seeds part of a ``gim_summary.json`` (what :func:`bench.report.claims.figure6_claims`
    reads) from :func:`figure6_statistics` ``stats`` of the models ``trained`` (seed -> SeedWeights)."""
    seeds = sorted(trained)
    return {"seeds": seeds, "seed_run_ids": [trained[s].record["run_id"] for s in seeds],
            "mean_weight_over_seeds": stats["mean_weight"],
            "share_interactive_larger_per_seed": stats["share_per_seed"],
            "share_interactive_larger_over_seeds": stats["share"],
            "share_interval": stats["interval"], "bootstrap": stats["bootstrap"]}


#: the readings study's Figure 6 summaries, one per reading with learned GIM weights (read by `report`)
READINGS_GIM_FILE = "readings_gim.json"


def figure6(runner, results: Path, dataset: str, extra: dict, seed: int = 0, cases: int = 14, case_seed: int = 2021,
            seeds: int = 5, progress: Callable[[str], None] = print) -> Output:
    """Figure 6: the GIM weights of MIAN seed ``seed`` on ``cases`` test positives
    (``gim_heatmap.png``, ``gim_weights.csv``) and over the whole test split (``gim_summary.json``:
    seed ``seed``'s mean weights and shares, and :func:`figure6_statistics` over the models of
    seeds 0..``seeds``-1: per-seed shares, their mean and its interval).

    Each model is its run's best-epoch checkpoint, else the run is retrained (said through
    ``progress``); when a model is not exactly its run record's, the files go to ``<out>/local/``,
    never over the figure. Raises ReportError (option ``--cases``) when the test split has fewer
    than ``cases`` positives."""
    from bench.report.figures import select_cases
    from bench.training.train import RunSpec

    test = runner.dataset_for(RunSpec(dataset, "mian", seed, overrides=extra)).test
    try:  # before any training
        idx = select_cases(test.label.cpu().numpy(), cases, case_seed)
    except ValueError as exc:
        raise ReportError(str(exc), option="--cases") from None
    stat_seeds = list(range(seeds))
    trained = seed_gim_weights(runner, dataset, sorted({*stat_seeds, seed}), extra, progress=progress)
    case = trained[seed]
    record, weights = case.record, case.weights
    tag, title = figure6_names(dataset, seed, cases, case_seed, seeds)
    out = out_dir(results, dataset, extra, tag)
    differing = [s for s in sorted(trained) if trained[s].diffs]
    diffs = case.diffs + [f"seed {s}: {d}" for s in differing if s != seed for d in trained[s].diffs]
    if differing:  # another model than the record's: beside the figure, never over it
        committed, out = out, out / "local"
        title += "\nretrained on this machine: not the model of the run record"
        kept = (f"the figure in {committed}/ is unchanged" if (committed / "gim_heatmap.png").exists()
                else f"{committed}/ gets no figure from another model")
        for s in differing:
            t = trained[s]
            shown = "; ".join(t.diffs[:2]) + (f"; {len(t.diffs) - 2} more difference(s)" if len(t.diffs) > 2 else "")
            progress(f"{t.source} differs from record {t.record['run_id']} ({shown}): this machine gives another "
                     f"model; writing the figure to {out}/; {kept} (use --force to retrain the run and replace its "
                     "record and the figure)")
    stats = figure6_statistics({s: trained[s] for s in stat_seeds}, test.user_index.cpu().numpy())
    summary = {"dataset": dataset, "run_id": record["run_id"], "seed": seed, "n_samples": int(len(weights)),
               "cases": cases, "case_seed": case_seed, "case_rule": CASE_RULE,
               **summary_over_seeds(stats, {s: trained[s] for s in stat_seeds})}
    return _write_figure6(weights, idx, summary, diffs, out, title)


def _write_figure6(weights, idx, summary: dict[str, Any], diffs: list[str], out: Path, title: str) -> Output:
    """Write the heatmap of the cases ``idx`` of ``weights`` [N, 7] (GIM_INPUTS order), their CSV and
    the whole-split summary (``summary`` plus :func:`bench.report.figures.gim_summary`) to ``out``."""
    import io

    import pandas as pd
    from tabulate import tabulate

    from bench.report.figures import FIGURE6_ROWS, GIM_INPUTS, gim_heatmap, gim_summary

    frame = pd.DataFrame(weights[idx], columns=list(GIM_INPUTS))
    frame.insert(0, "case", range(1, len(idx) + 1))
    frame.insert(1, "test_index", idx)
    buf = io.StringIO()
    frame[["case", "test_index", *FIGURE6_ROWS]].to_csv(buf, index=False, float_format="%.6f")
    atomic_write_text(out / "gim_weights.csv", buf.getvalue())
    gim_heatmap(frame, out / "gim_heatmap.png", title)
    summary = {**gim_summary(weights), **summary, **({"model_differs_from_record": diffs} if diffs else {})}
    atomic_write_text(out / "gim_summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    lines = [tabulate(frame[["case", *FIGURE6_ROWS]].T.iloc[1:].round(2).values.tolist(),
                      headers=[str(c) for c in frame["case"]], showindex=list(FIGURE6_ROWS), tablefmt="github"),
             "\nmean GIM weight over the whole test split (" + f"{len(weights):,} samples):"]
    lines += [f"  {name:7s} {w:.3f}" for name, w in sorted(summary["mean_weight"].items(), key=lambda kv: -kv[1])]
    lines += [f"  {pair}: in {share:.1%} of test samples" for pair, share in summary["share_interactive_larger"].items()]
    if "share_interval" in summary:
        level = summary["bootstrap"]["level"]
        lines.append(f"over the models of seeds {', '.join(map(str, summary['seeds']))} ({level:.0%} interval, "
                     f"bootstrap over {summary['bootstrap']['users']:,} test users and the seeds):")
        lines += [f"  {pair}: in {share:.1%} [{summary['share_interval'][pair][0]:.1%}, "
                  f"{summary['share_interval'][pair][1]:.1%}] of test samples (per seed: "
                  + ", ".join(f"{x:.1%}" for x in summary["share_interactive_larger_per_seed"][pair]) + ")"
                  for pair, share in summary["share_interactive_larger_over_seeds"].items()]
    return Output("\n".join(lines), [out / "gim_heatmap.png", out / "gim_weights.csv", out / "gim_summary.json"])


def redraw_figure6(results: Path, dataset: str, extra: dict, seed: int = 0, cases: int = 14,
                   case_seed: int = 2021, seeds: int = 5) -> Output:
    """``visualize-attention --redraw``: gim_heatmap.png from the folder's gim_weights.csv, after
    checking that its gim_summary.json names the same figure (dataset, cases). No model, nothing
    else written. Raises ReportError when the two files are missing, unreadable or of another figure."""
    import pandas as pd

    from bench.report.figures import gim_heatmap

    tag, title = figure6_names(dataset, seed, cases, case_seed, seeds)
    out = out_dir(results, dataset, extra, tag, write=False)
    weights, summary_path = out / "gim_weights.csv", out / "gim_summary.json"
    try:
        frame = pd.read_csv(weights)
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ReportError(f"--redraw needs {weights} and {summary_path} from an earlier run of this "
                          f"command: {exc}") from None
    if len(frame) != summary.get("cases") or summary.get("dataset") != dataset:
        raise ReportError(f"--redraw: {weights} holds {len(frame)} cases of {summary.get('dataset')}, "
                          f"its summary says {summary.get('cases')} of {dataset}; run the command without --redraw")
    try:
        gim_heatmap(frame, out / "gim_heatmap.png", title)
    except ValueError as exc:
        raise ReportError(f"--redraw: {weights}: {exc}") from None
    return Output(f"redrew {out / 'gim_heatmap.png'} from {weights} (run {summary.get('run_id')})")
