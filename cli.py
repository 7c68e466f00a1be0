"""Command-line interface of the MIAN reproduction harness: a thin click layer over bench/.

    python cli.py prepare movielens-100k
    python cli.py reproduce --table main
    python cli.py ablate
    python cli.py visualize-attention --cases 14
"""
from __future__ import annotations

import logging
from pathlib import Path

import click


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Reproduce MIAN (Zhang et al., WSDM 2021) and its baselines on shared, leakage-free splits."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# --------------------------------------------------------------------------- training & tables

def _dataset_choice() -> click.Choice:
    from bench.data import DATASETS

    return click.Choice(sorted(DATASETS))


def _model_choice() -> click.Choice:
    from bench.training.registry import MODEL_NAMES

    return click.Choice(list(MODEL_NAMES))


class NameList(click.ParamType):
    """Names from ``choices``, comma-separated (``lr,dcn``); the option may also be repeated
    (``multiple=True`` with :func:`_join_names` as callback). ``none``: a word that stands for the
    empty list (``--models none``). An unknown name is one click error listing the valid ones."""

    name = "names"

    def __init__(self, choices, what: str, none: str | None = None):
        self.choices, self.what, self.none = list(choices), what, none

    def get_metavar(self, param, ctx=None) -> str:
        return "NAME[,NAME...]" + (f"|{self.none}" if self.none else "")

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [v.strip() for v in str(value).split(",")]
        if self.none is not None and items == [self.none]:
            return []
        bad = [v for v in items if v not in self.choices]
        if bad:
            self.fail(f"unknown {self.what} {', '.join(repr(b) for b in bad)}; expected one or more of "
                      f"{', '.join(self.choices)} (comma-separated or repeated)"
                      + (f", or {self.none} for no {self.what}" if self.none else ""), param, ctx)
        return items


def _join_names(ctx, param, value):
    """Callback of a repeatable :class:`NameList` option: the names in the order given, each once;
    None when the option was not given, ``[]`` for its ``none`` word (which takes no other names)."""
    if not value:
        return None
    if any(v == [] for v in value) and any(v for v in value):
        raise click.BadParameter(f"{param.type.none} cannot be given together with names", ctx, param)
    return list(dict.fromkeys(name for names in value for name in names))


def _models_option(help_text: str, none: str | None = None, baselines_only: bool = False):
    from bench.training.registry import MODEL_NAMES

    names = [m for m in MODEL_NAMES if not (baselines_only and m == "mian")]
    return click.option("--models", "models", type=NameList(names, "baseline" if baselines_only else "model", none),
                        multiple=True, callback=_join_names, help=f"{help_text} Names: {', '.join(names)}.")


def _variant_names() -> list[str]:
    from bench.training.studies import ABLATION_VARIANTS, READINGS_VARIANTS, TRANSFORMER_VARIANTS

    return list(dict.fromkeys([*ABLATION_VARIANTS, *TRANSFORMER_VARIANTS, *READINGS_VARIANTS]))


def _datasets_option(f):
    from bench.data import DATASETS

    return click.option("--dataset", "datasets", type=NameList(sorted(DATASETS), "dataset"), multiple=True,
                        callback=_join_names,
                        help="Dataset(s) (comma-separated or repeated; default movielens-100k).")(f)


def _run_options(f):
    """Options shared by every command that trains."""
    f = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Prepared-data cache (default: ./data or $MIAN_DATA_DIR).")(f)
    f = click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder holding the raw dataset files (else they are downloaded).")(f)
    f = click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where run records and tables go (default: ./results).")(f)
    f = click.option("--device", default="cpu", show_default=True,
                     help="torch device: cpu, cuda, cuda:1, ...")(f)
    f = click.option("--threads", type=click.IntRange(1, None), default=None,
                     help="torch intra-op threads of each training process (default on the CPU: 1, which "
                          "the committed run records were made with; some models' metrics differ in the last "
                          "bits with it, and every run record stores it).")(f)
    f = click.option("--force", is_flag=True, help="Recompute runs that already have a record.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key (train.lr=0.01, model.embed_dim=8, or a bare key).")(f)
    return f


def _backfill_option(f):
    return click.option(
        "--backfill", is_flag=True,
        help="Also retrain the runs whose record predates a field (test_by_logloss: the test metrics with "
             "selection on validation logloss) and add it to the record when the retrain is exactly the recorded "
             "model (same validation history and metrics); otherwise the record stays as it is.")(f)


def _workers_option(f):
    f = click.option(
        "--cluster", metavar="ADDRESS|auto", default=None,
        help="Train the runs on the Ray cluster at ADDRESS (auto: the one `ray start` runs here; needs "
             "pip install -e '.[cluster]'), as many at once as it has CPUs / --threads. Not with --workers.")(f)
    return click.option(
        "--workers", type=click.IntRange(1, None), default=None,
        help="Local processes training runs in parallel (default on the CPU: usable cores / --threads, at most 8; "
             "on a GPU: 1; 1: in this process). The split of the work does not change any result.")(f)


def _usable_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parallelism(device: str, threads: int | None, workers: int | None) -> tuple[int, int | None]:
    """(workers, threads per worker) for ``--workers`` / ``--threads`` as given (None = default).

    On the CPU the default is ONE intra-op thread per worker and one worker per core: float
    reductions of some models (DIN, DIEN, MIAN) change in the last bits with the thread count, and
    one thread is what the committed run records were made with, so the default reproduces them
    bit for bit on a machine with the same CPU instruction set and library versions (on another CPU
    the last bits differ, and attention models may follow another trajectory: docs/REPRODUCIBILITY.md)."""
    if device != "cpu":
        return workers or 1, threads
    threads = threads or 1
    if workers is None:
        workers = max(1, min(8, _usable_cores() // threads))
    return workers, threads


def _runner(data_dir, raw_dir, results_dir, device, threads, force, workers=1, datasets=(), cluster=None,
            backfill=False):
    """The study runner of a training command; ``threads`` / ``workers`` / ``cluster`` as given on the
    command line (None = the defaults of :func:`_parallelism`). Checks first that every folder the command
    writes for ``datasets`` is writable and clears what killed writers left there
    (:func:`_output_dirs`)."""
    import torch

    from bench.training.runs import DEFAULT_RESULTS_DIR, RunStore
    from bench.training.studies import Runner

    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise click.BadParameter(f"expected cpu, cuda or cuda:N, got {device!r}", param_hint="--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r} requested but torch sees no CUDA device", param_hint="--device")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    if cluster and workers:
        raise click.UsageError("--workers and --cluster exclude each other (on a cluster, the runs at once are its "
                               "CPUs / --threads)")
    if cluster and device != "cpu":
        raise click.BadParameter("--cluster trains on the CPU only", param_hint="--device")
    workers, threads = _parallelism(device, threads, workers)
    _output_dirs(results_dir, data_dir, datasets)
    if threads:
        torch.set_num_threads(threads)
    results = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
    return Runner(
        store=RunStore(results / "runs"),
        data_dir=data_dir,
        raw_dir=raw_dir,
        device=device,
        force=force,
        log_dir=results / "logs",
        workers=workers,
        threads=threads,
        cluster=cluster,
        backfill=backfill,
    ), results


def _output_dirs(results_dir, data_dir, datasets=(), results=True, data=True, training=True) -> None:
    """Before any work: raise a one-line error unless every folder the command writes is a
    writable folder (or can be created) -- with ``results``: the results folder and its
    ``<dataset>/`` (``training``: also ``runs/``, ``scores/`` and ``logs/``); with ``data``: the data folder and
    its ``<dataset>/`` (``training``: also ``checkpoints/``) -- naming the path and the option or
    variable that chose it. Then remove the temporary files and folders of killed writers in them
    and in ``<data>/raw/<raw>/`` (:func:`bench.data.raw_name`; :func:`bench.io.remove_stale_temps`)."""
    import os

    from bench.data import default_data_dir, raw_name
    from bench.io import PathError, check_writable, remove_stale_temps
    from bench.training.runs import DEFAULT_RESULTS_DIR

    checks, flat, deep = [], [], []
    if results:
        root = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
        src = f"--results-dir {results_dir}" if results_dir else "the default results folder"
        subs = ["runs", "scores", "logs"] if training else []
        for d in [root, *(root / x for x in subs), *(root / ds for ds in datasets)]:
            checks.append((d, src, "--results-dir"))
        flat += [root, *(root / x for x in subs[:2])]
        deep += [root / ds for ds in datasets]
    if data:
        root = Path(data_dir) if data_dir else default_data_dir()
        env = os.environ.get("MIAN_DATA_DIR")
        src = f"--data-dir {data_dir}" if data_dir else f"MIAN_DATA_DIR={env}" if env else "the default data folder"
        subs = ["checkpoints"] if training else []
        for d in [root, *(root / x for x in subs), *(root / ds for ds in datasets)]:
            checks.append((d, src, "--data-dir or MIAN_DATA_DIR"))
        flat += [*(root / x for x in subs), *(root / ds for ds in datasets),
                 *dict.fromkeys(root / "raw" / raw_name(ds) for ds in datasets)]
    try:
        for path, src, option in checks:
            check_writable(path, src, option)
    except PathError as exc:
        raise click.ClickException(str(exc)) from None
    remove_stale_temps(flat)
    remove_stale_temps(deep, recursive=True)


def _errors():
    """Context manager turning the harness's input errors (bad config or data, a failed run, a
    run record that cannot be trusted, an unwritable folder, a cluster out of reach) into one-line
    click errors."""
    import contextlib

    from bench.training.config import ConfigError
    from bench.data import DataError
    from bench.training.executor import ExecutorError
    from bench.io import PathError
    from bench.training.runs import StoreError
    from bench.training.train import TrainingError
    from bench.report import ReportError

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (ConfigError, DataError, TrainingError, StoreError, PathError, ExecutorError) as exc:
            raise click.ClickException(str(exc)) from None
        except ReportError as exc:
            if exc.option:
                raise click.BadParameter(str(exc), param_hint=exc.option) from None
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a file-system fault the checks above could not foresee (disk full, ...)
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc} (nothing already written was changed)") from None

    return guard()


def _overrides(items, models) -> dict:
    """Parse ``--set`` items and refuse keys that no model of the command knows."""
    from bench.training.config import check_overrides, parse_overrides

    extra = parse_overrides(items)
    check_overrides(extra, list(models))
    return extra


def _echo(output) -> None:
    """Print a command's :class:`bench.report.Output`: its text, then the files it wrote."""
    for line in output.lines():
        click.echo(line)


#: tables of the protocol use this many seeds (PROTOCOL section 3)
PROTOCOL_SEEDS = 5
#: upper bound of --seeds (a study of 1000 seeds x 8 models is already 8000 runs)
MAX_SEEDS = 1000


def _study_storage(results: Path) -> str:
    """The Optuna storage URL of the tuning studies, results/tuning/studies.db (its folder made);
    ClickException naming the folder when it cannot be created."""
    from bench.training.tuning import STUDY_DB

    db = results / STUDY_DB
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{db.parent}: cannot be created ({exc.strerror or exc})") from None
    return f"sqlite:///{db.resolve()}"


def _tuned_options(f):
    """--tuned and --trials of the table commands (the tuned protocol, issue 15)."""
    f = click.option("--trials", type=click.IntRange(1, 1000), default=None,
                     help="With --tuned: the tuning budget the best configuration is chosen among (default 20, "
                          "`tune`'s; every study needs that many finished trials; another value: tables under "
                          "tuned/subsets/trials<N>/).")(f)
    return click.option("--tuned", is_flag=True,
                        help="The tuned protocol: each model in the best configuration of its tuning study "
                             "(`python cli.py tune`; best validation AUC among its first --trials trials), on seeds "
                             "0..N-1 (never the tuning seed); tables go to results/<dataset>/tuned/.")(f)


def _tuned_configs(runner, results: Path, datasets, models: list[str], trials: int | None, seeds: int,
                   overrides) -> dict:
    """{dataset: {model: TunedConfig}} of ``--tuned`` (every dataset checked before anything trains;
    TuningError naming each incomplete study and the `tune` command that completes it)."""
    from bench.training.tuned import best_configs, check_seeds
    from bench.training.tuning import DEFAULT_TRIALS

    if overrides:
        raise click.BadParameter("the tuned protocol is the protocol's config plus each study's best values; "
                                 "it takes no --set", param_hint="'--set'")
    storage = _study_storage(results)
    records = list(runner.store.records())
    out = {}
    for ds in datasets:
        out[ds] = best_configs(runner, storage, ds, models, trials or DEFAULT_TRIALS, records)
        check_seeds(out[ds], range(seeds))
    for ds, configs in out.items():
        for m, c in configs.items():
            click.echo(f"{ds} {m}: tuned configuration = trial {c.trial} of {c.budget} (validation AUC {c.value:.4f}, "
                       f"run {c.trial_run_id}): " + ("; ".join(f"{k}={v}" for k, v in c.params.items()) or "-"))
    return out


def _tuned_tag(tag: str | None, trials: int | None) -> str | None:
    """The subsets/ tag of a tuned study: ``tag`` plus ``trials<N>`` for another budget than the default."""
    from bench.training.tuning import DEFAULT_TRIALS

    parts = ([tag] if tag else []) + ([f"trials{trials}"] if trials not in (None, DEFAULT_TRIALS) else [])
    return "_".join(parts) or None


def _subset(models: list[str] | None, seeds: int) -> str | None:
    """Tag of a study that is not the protocol's full one (None when it is)."""
    from bench.training.registry import MODEL_NAMES

    parts = []
    if models is not None and list(models) != list(MODEL_NAMES):
        parts.append("+".join(models))
    if seeds != PROTOCOL_SEEDS:
        parts.append(f"seeds{seeds}")
    return "_".join(parts) or None


@cli.command()
@click.option("--model", "model", type=_model_choice(), required=True)
@click.option("--dataset", type=_dataset_choice(), default="movielens-100k", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@_run_options
def train(model, dataset, seed, data_dir, raw_dir, results_dir, device, threads, force, overrides):
    """Train one model on one dataset with one seed and print its metrics."""
    from bench.training.train import RunSpec

    with _errors():
        runner, _ = _runner(data_dir, raw_dir, results_dir, device, threads, force, datasets=(dataset,))
        spec = RunSpec(dataset, model, seed, overrides=_overrides(overrides, [model]))
        rid, _ = runner.resolve(spec)
        cached = not force and runner.store.load(rid) is not None
        record, _ = runner.run(spec)
    if cached:
        click.echo(f"run {rid} was already done: its record is shown (use --force to train it again)")
    rows = [["valid (best epoch)", *(f"{record['valid'][m]:.4f}" for m in ("auc", "logloss", "gauc"))],
            ["test", *(f"{record['test'][m]:.4f}" for m in ("auc", "logloss", "gauc"))]]
    from tabulate import tabulate

    click.echo(tabulate(rows, headers=["split", "AUC", "logloss", "gAUC"], tablefmt="github"))
    click.echo(
        f"run {record['run_id']}: {model} on {dataset}, seed {seed}, best epoch {record['best_epoch']} "
        f"of {record['epochs_run']}, {record['n_params']:,} parameters, "
        f"train {record['wall_seconds']['train']:.1f} s, eval {record['wall_seconds']['eval']:.1f} s"
    )


@cli.command()
@click.option("--table", type=click.Choice(["main"]), default="main", show_default=True,
              help="Which of the paper's tables: main = Table 2.")
@_datasets_option
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS), default=5, show_default=True,
              help=f"Seeds 0..N-1 per model (at most {MAX_SEEDS}).")
@_models_option("Model(s) (comma-separated or repeated; default all eight; the table keeps the paper's order).")
@_tuned_options
@_run_options
@_backfill_option
@_workers_option
def reproduce(table, datasets, seeds, models, tuned, trials, data_dir, raw_dir, results_dir, device, threads, force,
              overrides, backfill, workers, cluster):
    """Reproduce one of the paper's tables on real data; writes results/<dataset>/main_table.*
    (with --tuned: results/<dataset>/tuned/main_table.*, every model in its tuned configuration)."""
    from bench.training.registry import MODEL_NAMES
    from bench.report.studies import main_table_study

    datasets = datasets or ("movielens-100k",)
    models = [m for m in MODEL_NAMES if m in models] if models else list(MODEL_NAMES)
    if trials is not None and not tuned:
        raise click.BadParameter("applies with --tuned only", param_hint="'--trials'")
    with _errors():
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, force, workers, datasets, cluster,
                                  backfill=backfill)
        configs = _tuned_configs(runner, results, datasets, models, trials, seeds, overrides) if tuned else None
        extra = {} if tuned else _overrides(overrides, models)
        for ds in datasets:
            tag = _tuned_tag(_subset(models, seeds), trials) if tuned else _subset(models, seeds)
            _echo(main_table_study(runner, results, ds, models, seeds, extra, tag,
                                   tuned=configs[ds] if tuned else None))


@cli.command()
@click.option("--study", type=click.Choice(["ablation", "transformer", "readings"]), default="ablation",
              show_default=True, help="ablation = Table 3; transformer = Table 4 + Figure 5; readings = MIAN's "
                                      "readings of the paper's unspecified details, with their Figure 6 statistics.")
@_datasets_option
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS), default=5, show_default=True,
              help=f"Seeds 0..N-1 (at most {MAX_SEEDS}).")
@click.option("--variants", "variants", multiple=True, callback=_join_names,
              type=NameList(_variant_names(), "variant"),
              help="MIAN variants of the study to run (comma-separated or repeated; default all of the study's; "
                   "the full MIAN, 'default', is always run: the table compares every row with it). Ablation: "
                   "no_iuim, no_icim, no_ibim, no_gim, no_iuim_icim; transformer: post_ln, no_transformer, "
                   "shared_score; readings: gim_concat, gim_sum_concat, gim_uniform, shared_score, bilinear_score, "
                   "mlp_prelu, mlp_dice.")
@_models_option("Baseline pool of --study ablation's best-baseline row (comma-separated or repeated; default the "
                "seven baselines; 'none': no baseline row, no baseline trained).", none="none", baselines_only=True)
@click.option("--reading", default=None, metavar="NAME|best",
              help="Build every MIAN variant of --study ablation / transformer on this reading of MIAN (a readings "
                   "variant, e.g. gim_sum_concat; 'best': per dataset, the reading with the highest mean validation "
                   "AUC among the readings study's protocol records in --results-dir, controls excluded); tables go "
                   "to results/<dataset>/readings/<reading>/.")
@_tuned_options
@_run_options
@_backfill_option
@_workers_option
def ablate(study, datasets, seeds, variants, models, reading, tuned, trials, data_dir, raw_dir, results_dir, device,
           threads, force, overrides, backfill, workers, cluster):
    """The paper's ablation (Table 3), Transformer-variant study (Table 4, Figure 5) or the
    readings of MIAN (readings.md and readings_gim.md: each reading of an unspecified detail
    against the default, and the Figure 6 statistics of its seeds' models).

    With --variants, --models or another number of seeds than 5 the tables go to
    results/<dataset>/subsets/<tag>/, never over the full study's. With --tuned (ablation,
    transformer): every MIAN variant starts from MIAN's tuned configuration (and the baselines are
    in theirs), into results/<dataset>/tuned/."""
    from bench.training.registry import MODEL_NAMES
    from bench.report.studies import ablation_study, readings_study, transformer_study
    from bench.training.studies import ABLATION_VARIANTS, READINGS_VARIANTS, TRANSFORMER_VARIANTS

    datasets = datasets or ["movielens-100k"]
    study_variants = {"ablation": ABLATION_VARIANTS, "transformer": TRANSFORMER_VARIANTS,
                      "readings": READINGS_VARIANTS}[study]
    chosen, tag = _study_selection(study, study_variants, variants, models, seeds)
    if reading is not None and study == "readings":
        raise click.BadParameter("applies to --study ablation and transformer (the readings study is the "
                                 "readings themselves)", param_hint="'--reading'")
    if reading == "default":
        raise click.BadParameter("the default reading is the protocol's own study: leave --reading out",
                                 param_hint="'--reading'")
    if reading not in (None, "best") and reading not in READINGS_VARIANTS:
        raise click.BadParameter(f"{reading!r} is not a reading; readings: best, "
                                 f"{', '.join(v for v in READINGS_VARIANTS if v != 'default')}", param_hint="'--reading'")
    if tuned and study == "readings":
        raise click.BadParameter("applies to --study ablation and transformer", param_hint="'--tuned'")
    if tuned and reading is not None:
        raise click.BadParameter("--reading and --tuned exclude each other (the tuning study of MIAN searches "
                                 "its readings: gim_mode, ibim_score, mlp_activation)", param_hint="'--tuned'")
    if trials is not None and not tuned:
        raise click.BadParameter("applies with --tuned only", param_hint="'--trials'")
    with _errors():
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, force, workers, datasets, cluster,
                                  backfill=backfill)
        if tuned:
            pool = ([m for m in MODEL_NAMES if m != "mian" and (models is None or m in models)]
                    if study == "ablation" else [])
            configs = _tuned_configs(runner, results, datasets, ["mian", *pool], trials, seeds, overrides)
            extra, tag = {}, _tuned_tag(tag, trials)
        else:
            configs, extra = None, _overrides(overrides, list(MODEL_NAMES) if study == "ablation" else ["mian"])
        on_reading = {ds: _resolve_reading(reading, results, ds) for ds in datasets}  # every dataset before training
        for ds in datasets:
            on, tc = on_reading[ds], configs[ds] if configs is not None else None
            if study == "ablation":
                _echo(ablation_study(runner, results, ds, chosen, seeds, extra, tag, pool=models, reading=on, tuned=tc))
            elif study == "transformer":
                _echo(transformer_study(runner, results, ds, chosen, seeds, extra, tag, reading=on, tuned=tc))
            else:
                _echo(readings_study(runner, results, ds, chosen, seeds, extra, tag, progress=click.echo))


def _resolve_reading(reading: str | None, results: Path, dataset: str) -> str | None:
    """``--reading`` for ``dataset``: None, a reading name, or for 'best' the reading with the highest
    mean validation AUC among the protocol records under ``results/runs`` (ReportError naming the
    option when the readings study of ``dataset`` is not complete)."""
    from bench.report import ReportError
    from bench.training.runs import RunStore
    from bench.training.studies import chosen_reading, protocol_records

    if reading != "best":
        return reading
    records, _ = protocol_records(list(RunStore(Path(results) / "runs").records()))
    best, means = chosen_reading(records, dataset)
    if best is None:
        raise ReportError(f"'best': the readings study of {dataset} is not complete (every reading needs "
                          f"seeds 0-4); run `python cli.py ablate --study readings --dataset {dataset}` first",
                          option="--reading")
    click.echo(f"{dataset}: reading chosen on validation AUC: {best} ("
               + ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items(), key=lambda kv: -kv[1])) + ")")
    return best


def _study_selection(study: str, study_variants: dict, variants: list[str] | None, models: list[str] | None,
                     seeds: int) -> tuple[dict, str | None]:
    """(the variants to run, in the study's order, the full MIAN always included; the subsets/ tag
    of the selection, None for the full study). Refuses variants of the other study and --models
    with --study transformer (click errors)."""
    from bench.training.registry import MODEL_NAMES

    if variants is not None:
        foreign = [v for v in variants if v not in study_variants]
        if foreign:
            raise click.BadParameter(
                f"{', '.join(foreign)} {'is not a variant' if len(foreign) == 1 else 'are not variants'} of "
                f"--study {study}; its variants: {', '.join(study_variants)}", param_hint="'--variants'")
    if models is not None and study != "ablation":
        raise click.BadParameter(f"the baseline pool only applies to --study ablation (the {study} study has "
                                 "no baseline row)", param_hint="'--models'")
    chosen = {v: study_variants[v] for v in study_variants if variants is None or v == "default" or v in variants}
    parts = []
    if len(chosen) != len(study_variants):
        parts.append("+".join(chosen))
    pool = [m for m in MODEL_NAMES if m != "mian"]
    if models is not None and [m for m in pool if m in models] != pool:
        parts.append("base-" + "+".join(m for m in pool if m in models) if models else "nobase")
    if seeds != PROTOCOL_SEEDS:
        parts.append(f"seeds{seeds}")
    return chosen, "_".join(parts) or None


@cli.command()
@_datasets_option
@_models_option("Model(s) to tune (comma-separated or repeated; default all eight).")
@click.option("--trials", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Finished trials per model (the same for every model: equal budget).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared-data cache (default: ./data or $MIAN_DATA_DIR).")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the raw dataset files (else they are downloaded).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where run records, the studies (tuning/studies.db) and the tables go (default: ./results).")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, ...")
@click.option("--threads", type=click.IntRange(1, None), default=None,
              help="torch intra-op threads of each training process (default on the CPU: 1).")
@_workers_option
def tune(datasets, models, trials, data_dir, raw_dir, results_dir, device, threads, workers, cluster):
    """Tune every model's hyper-parameters on validation AUC (issue 15): one Optuna study (TPESampler,
    fixed study seed) per dataset, protocol, data fingerprint, model and search space, the spaces
    being the [tuning] table of the dataset's TOML (printed first). Every trial is an ordinary run
    record (resumable: a trial with a record is never trained again) that never scores the test
    split; the same number of trials, epoch cap, patience and pruner (none) for every model.

    Writes results/<dataset>/tuning/<model>.{md,csv}, summary.md and tuning.png (another --trials or
    a subset of the models: under results/<dataset>/subsets/<tag>/tuning/); the studies are kept in
    results/tuning/studies.db (git-ignored: rebuilt from the run records when missing)."""
    from bench.report.studies import out_dir
    from bench.training.registry import MODEL_NAMES
    from bench.report.tuning import write_outputs
    from bench.training.tuning import DEFAULT_TRIALS, model_space, tune_model

    datasets = datasets or ["movielens-100k"]
    models = [m for m in MODEL_NAMES if m in models] if models else list(MODEL_NAMES)
    parts = ([_subset(models, PROTOCOL_SEEDS)] if _subset(models, PROTOCOL_SEEDS) else []) + (
        [f"trials{trials}"] if trials != DEFAULT_TRIALS else [])
    tag = "_".join(parts) or None
    with _errors():
        spaces = {ds: {m: model_space(ds, m) for m in models} for ds in datasets}  # every space checked first
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, False, workers, tuple(datasets),
                                  cluster)
        storage = _study_storage(results)
        for ds_name in datasets:
            click.echo(f"{ds_name}: {trials} trials per model; search spaces (bench/training/configs/{ds_name}.toml "
                       "[tuning]):")
            for m, space in spaces[ds_name].items():
                click.echo(f"  {m}: " + "; ".join(space.lines()))
            ds = runner.dataset(ds_name)
            out = out_dir(results, ds_name, {}, tag) / "tuning"
            done = []
            records = list(runner.store.records())
            for i, m in enumerate(models):
                done.append(tune_model(runner, spaces[ds_name][m], trials, storage, records, progress=click.echo))
                r = done[-1]
                best = r.best()
                click.echo(f"{ds_name} {m}: {len(r.trials)}/{trials} trials ({r.trained} trained now"
                           + (", study rebuilt from its run records" if r.rebuilt else "") + "); best validation AUC "
                           + (f"{best['value']:.4f} (trial {best['number']})" if best else "none"))
                # Published after every model, so a tune stopped later keeps its finished studies' tables
                # (the summary names the studies still to run).
                records = list(runner.store.records())  # with this study's new trials; the next study reads them too
                paths = write_outputs(out, done, ds, records, pending=models[i + 1:])
            click.echo("wrote " + ", ".join(str(p) for p in paths))


@cli.command("visualize-attention")
@click.option("--cases", type=click.IntRange(1, 200), default=14, show_default=True,
              help="Number of test cases (heatmap columns).")
@click.option("--dataset", type=_dataset_choice(), default="movielens-100k", show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help="Which seed's trained MIAN.")
@click.option("--case-seed", type=click.IntRange(0, None), default=2021, show_default=True,
              help="Seed of the random draw of the cases among the test positives.")
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS), default=5, show_default=True,
              help="The whole-split statistics (share of test samples where an interactive representation "
                   "outweighs its original, with its interval) are over the models of seeds 0..N-1.")
@click.option("--redraw", is_flag=True,
              help="Only draw gim_heatmap.png again from the folder's gim_weights.csv and gim_summary.json "
                   "(the weights of the run they name; no model, nothing else written).")
@_run_options
@_workers_option
def visualize_attention(cases, dataset, seed, case_seed, seeds, redraw, data_dir, raw_dir, results_dir, device, threads,
                        force, overrides, workers, cluster):
    """Figure 6: the GIM weights of MIAN on test cases, as a heatmap, plus whole-split statistics
    over the models of seeds 0..N-1 (gim_summary.json: per-seed shares, their mean and a 95 %
    interval from a bootstrap over test users and seeds).

    Each model is its run's best-epoch checkpoint (data/checkpoints/), else the run is retrained
    (a run without a record trains first, on --workers). A model that is not exactly its run
    record's (another machine's retrain: other validation or test metrics) never writes over the
    figure: the files go to <folder>/local/ beside it. --force retrains the runs and replaces their
    records and the figure. With another --seed, --cases, --case-seed or --seeds the files go to
    results/<dataset>/subsets/<tag>/."""
    from bench.training.config import parse_overrides
    from bench.report.studies import figure6, redraw_figure6
    from bench.training.runs import DEFAULT_RESULTS_DIR

    with _errors():
        if redraw:
            extra = parse_overrides(overrides)
            _echo(redraw_figure6(Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR, dataset, extra, seed, cases,
                                 case_seed, seeds))
            return
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, force, workers, (dataset,), cluster)
        extra = _overrides(overrides, ["mian"])
        _echo(figure6(runner, results, dataset, extra, seed, cases, case_seed, seeds, progress=click.echo))


@cli.command()
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where run records are read and CLAIMS.md is written (default: ./results).")
def report(results_dir):
    """results/CLAIMS.md: each claim of the paper, the paper's figure, ours and a verdict; per dataset
    the same claims under the tuned protocol beside them (from results/<dataset>/tuned/tuned.json and
    its tuned runs: `reproduce --tuned`, `ablate --tuned`) and the claims whose verdict changes."""
    from bench.report.claims import claims_report
    from bench.training.runs import DEFAULT_RESULTS_DIR

    _output_dirs(results_dir, None, data=False, training=False)
    with _errors():  # a record failing its check is refused, never used
        _echo(claims_report(Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR))


@cli.command()
@click.option("--other", "other_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Results folder (or its runs/ folder) of the same runs trained on another machine, e.g. made "
                   "there with `reproduce --force --results-dir DIR`.")
@click.option("--name", "tag", default=None, metavar="TAG",
              help="Short name of the other machine (default: from its records' CPU and kernel ISA).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Our records and where the tables go (default: ./results).")
def crosscheck(other_dir, tag, results_dir):
    """Compare runs trained on another machine with ours, run id by run id; writes
    results/<dataset>/cross_machine/<TAG>.{md,csv,tex} and keeps their records in results/machines/<TAG>/runs/."""
    from bench.report.crosscheck import crosscheck_report
    from bench.training.runs import DEFAULT_RESULTS_DIR

    with _errors():
        for output in crosscheck_report(other_dir, tag, Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR):
            _echo(output)


# --------------------------------------------------------------------------- efficiency

@cli.command()
@click.option("--dataset", type=_dataset_choice(), default="movielens-100k", show_default=True)
@_models_option("Model(s) (comma-separated or repeated; default all eight; the table keeps the paper's order).")
@click.option("--peer", type=click.Choice(["deepctr-torch"]), default=None,
              help="Also measure DeepCTR-Torch's models on the same arrays (pip install -e '.[peer]').")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1, ...")
@click.option("--threads", type=click.IntRange(1, None), default=None,
              help="torch intra-op threads in every measuring process (default: torch's, all cores).")
@click.option("--steps", type=click.IntRange(1, None), default=30, show_default=True,
              help="Timed full-batch training steps per model (median).")
@click.option("--warmup", type=click.IntRange(0, None), default=5, show_default=True,
              help="Untimed training steps before them.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Model seed (ours and the peer's).")
@click.option("--accuracy/--no-accuracy", default=True, show_default=True,
              help="Add test metrics: ours from the run records (trained if missing), the peer trained "
                   "to early stopping.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where efficiency.{md,csv} (under <dataset>/) and run records go (default: ./results).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared-data cache (default: ./data or $MIAN_DATA_DIR).")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the raw dataset files (else they are downloaded).")
@click.option("--scale", is_flag=True,
              help="The scale benchmark instead (issue 16): synthetic McAuley-format reviews at each of --sizes, "
                   "prepare and one training epoch of each model (default din,mian), each in a fresh process; "
                   "writes results/scale.{md,csv,png} (docs/EFFICIENCY.md).")
@click.option("--sizes", default="1M,5M,20M", show_default=True, metavar="SIZE[,SIZE...]",
              help="With --scale: numbers of reviews, comma-separated, k/M/G suffixes allowed. Other sizes than "
                   "the default write under results/subsets/<tag>/.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --scale: where the synthetic raw files and caches go (default: a temporary folder "
                   "under the data folder), removed after each size unless --keep.")
@click.option("--keep", is_flag=True, help="With --scale: keep the synthetic raw files, caches and step logs.")
@click.option("--max-steps", type=click.IntRange(1, None), default=None,
              help="With --scale: time only the first N steps of each training epoch (default: the whole epoch).")
@click.pass_context
def bench(ctx, dataset, models, peer, device, threads, steps, warmup, seed, accuracy, results_dir, data_dir, raw_dir,
          scale, sizes, work_dir, keep, max_steps):
    """Speed and memory of every model (optionally beside DeepCTR-Torch); writes results/<dataset>/efficiency.{md,csv}.

    Only the full measurement (all eight models, --peer deepctr-torch, the default --steps,
    --warmup, --seed and --accuracy) writes there; any other goes to results/<dataset>/subsets/<tag>/.
    With --scale: the scale benchmark (results/scale.{md,csv,png}; another --sizes, --seed,
    --models or a --max-steps: results/subsets/<tag>/)."""
    from bench.perf.efficiency import PeerUnavailable, BenchOptions, peer_installed, PEER_INSTALL, run_bench
    from bench.report.studies import out_dir
    from bench.training.registry import MODEL_NAMES

    given = {name for name in ("dataset", "peer", "steps", "warmup", "accuracy", "raw_dir", "sizes", "work_dir",
                               "keep", "max_steps")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    if scale:
        bad = sorted(given & {"dataset", "peer", "steps", "warmup", "accuracy", "raw_dir"})
        if bad:
            raise click.UsageError(f"--{bad[0].replace('_', '-')} does not apply to --scale (it writes and prepares "
                                   "its own synthetic amazon-books files and times one epoch per model).")
        try:
            from bench.perf.scale import parse_sizes

            size_list = parse_sizes(sizes)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--sizes") from None
        _bench_scale(size_list, models, seed, threads, max_steps, device, keep, work_dir, results_dir, data_dir)
        return
    bad = sorted(given & {"sizes", "work_dir", "keep", "max_steps"})
    if bad:
        raise click.UsageError(f"--{bad[0].replace('_', '-')} applies only with --scale.")
    if peer is not None and not peer_installed(peer):
        raise click.ClickException(f"--peer {peer}: DeepCTR-Torch is not installed; install it with {PEER_INSTALL}")
    models = [m for m in MODEL_NAMES if m in models] if models else list(MODEL_NAMES)
    with _errors():
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, False, datasets=(dataset,))
        ds = runner.dataset(dataset)
        opts = BenchOptions(dataset=dataset, cache=str(ds.path), device=device, threads=threads, steps=steps,
                            warmup=warmup, seed=seed, accuracy=accuracy)
        try:
            table, paths = run_bench(opts, models, ds, peer=peer, runner=runner if accuracy else None,
                                     out_dir=out_dir(results, dataset, {}, _bench_subset(opts, models, peer)),
                                     progress=click.echo)
        except PeerUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(table.markdown())
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _bench_scale(sizes, models, seed, threads, max_steps, device, keep, work_dir, results_dir, data_dir) -> None:
    """``bench --scale``: :func:`bench.perf.scale.run_scale` with a work folder that is removed
    afterwards (a temporary one under the data folder by default) unless ``keep``."""
    import shutil

    from bench.data import default_data_dir
    from bench.perf.scale import (DEFAULT_MODELS, ScaleError, ScaleOptions, remove_dead_work_folders, run_scale,
                                  scale_command, subset_tag, work_folder)
    from bench.perf.synthetic import SyntheticError
    from bench.training.registry import MODEL_NAMES
    from bench.training.runs import DEFAULT_RESULTS_DIR

    _output_dirs(results_dir, data_dir, results=True, training=False)
    chosen = tuple(m for m in MODEL_NAMES if m in models) if models else DEFAULT_MODELS
    opts = ScaleOptions(sizes=sizes, seed=seed, models=chosen, threads=threads, max_steps=max_steps,
                        device=device, keep=keep)
    results = Path(results_dir) if results_dir else DEFAULT_RESULTS_DIR
    tag = subset_tag(opts)
    out = results / "subsets" / tag if tag else results
    data_root = Path(data_dir) if data_dir else default_data_dir()
    remove_dead_work_folders(data_root)  # the work folders of killed scale runs
    folder, temporary = work_folder(data_root, work_dir)
    command = scale_command(opts)
    import signal

    def _terminated(signum, frame):  # SIGTERM (kill, timeout) ends the run as Ctrl-C does: step killed, folder removed
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with _errors():
            try:
                table, paths, _ = run_scale(opts, folder, out, command, progress=click.echo)
            except (ScaleError, SyntheticError) as exc:
                raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if temporary and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if keep:
        click.echo(f"kept the synthetic files, caches and step logs in {folder}")
    click.echo(table.markdown())
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _bench_subset(opts, models: list[str], peer: str | None) -> str | None:
    """Tag of a ``bench`` that is not the full one of results/<dataset>/efficiency.* (None when it
    is): all eight models, the peer, the default steps, warm-up, seed and test metrics."""
    from bench.perf.efficiency import BenchOptions

    ref = BenchOptions(dataset=opts.dataset, cache=opts.cache)
    parts = [_subset(models, PROTOCOL_SEEDS)] if _subset(models, PROTOCOL_SEEDS) else []
    if peer is None:
        parts.append("nopeer")
    parts += [f"{name}{getattr(opts, name)}" for name in ("steps", "warmup", "seed")
              if getattr(opts, name) != getattr(ref, name)]
    if not opts.accuracy:
        parts.append("noaccuracy")
    return "_".join(parts) or None


# --------------------------------------------------------------------------- data

def _datasets_epilog() -> str:
    from bench.data import DATASETS

    return "DATASET: " + ", ".join(sorted(DATASETS)) + " (raw inputs: docs/DATA.md)."


@cli.command(epilog=_datasets_epilog())
@click.argument("dataset", type=_dataset_choice(), metavar="DATASET")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared-data cache (default: ./data or $MIAN_DATA_DIR).")
@click.option("--raw-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding the raw dataset files (else they are found in <data-dir>/raw or downloaded).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache already holds these inputs.")
def prepare(dataset, data_dir, raw_dir, force):
    """Fetch (or read from --raw-dir), verify and prepare DATASET; cache its splits."""
    import time

    from bench.data import prepare as prepare_dataset
    from bench.data.stats import split_table

    _output_dirs(None, data_dir, (dataset,), results=False, training=False)
    with _errors():
        t0 = time.perf_counter()
        info = prepare_dataset(dataset, data_dir=data_dir, raw_dir=raw_dir, force=force)
    status = "cache hit (nothing rebuilt)" if info.cache_hit else "prepared"
    click.echo(f"{info.name} ({info.protocol}): {status} in {time.perf_counter() - t0:.1f} s")
    click.echo(f"path:        {info.path}")
    click.echo(f"fingerprint: {info.fingerprint}")
    click.echo("samples:     " + ", ".join(f"{s} {n:,}" for s, n in info.counts.items()))
    click.echo(split_table(info.stats))


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Prepared-data cache (default: ./data or $MIAN_DATA_DIR).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where datasets.csv is written (default: ./results).")
def datasets(data_dir, results_dir):
    """Statistics of every prepared dataset (the paper's Table 1); writes results/datasets.csv."""
    from bench.data import prepared_metas
    from bench.training.runs import DEFAULT_RESULTS_DIR
    from bench.data.stats import render_tables, stats_rows, write_csv_atomic

    _output_dirs(results_dir, None, data=False, training=False)
    with _errors():
        metas = prepared_metas(data_dir)
    if not metas:
        raise click.ClickException(
            f"no prepared dataset under {data_dir or 'the data folder'}; run `python cli.py prepare movielens-100k` first")
    click.echo(render_tables(metas))
    path = write_csv_atomic(stats_rows(metas), Path(results_dir or DEFAULT_RESULTS_DIR) / "datasets.csv")
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    cli()
