"""Command-line interface of the MIAN reproduction harness: a thin click layer over bench/.

    python cli.py prepare movielens-100k
    python cli.py reproduce --table main
    python cli.py ablate
    python cli.py visualize-attention --cases 14
"""
from __future__ import annotations

import logging
import sys
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
    from bench.registry import MODEL_NAMES

    return click.Choice(list(MODEL_NAMES))


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
                     help="torch intra-op threads (default: all cores).")(f)
    f = click.option("--force", is_flag=True, help="Recompute runs that already have a record.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config key (train.lr=0.01, model.embed_dim=8, or a bare key).")(f)
    return f


def _runner(data_dir, raw_dir, results_dir, device, threads, force):
    import torch

    from bench.runs import DEFAULT_RESULTS_DIR, RunStore
    from bench.studies import Runner

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r} requested but torch sees no CUDA device", param_hint="--device")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
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
    ), results


def _errors():
    """Context manager turning the harness's input errors into one-line click errors."""
    import contextlib

    from bench.config import ConfigError
    from bench.data import DataError
    from bench.train import TrainingError

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (ConfigError, DataError, TrainingError) as exc:
            raise click.ClickException(str(exc)) from None

    return guard()


@cli.command()
@click.option("--model", "model", type=_model_choice(), required=True)
@click.option("--dataset", type=_dataset_choice(), default="movielens-100k", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_run_options
def train(model, dataset, seed, data_dir, raw_dir, results_dir, device, threads, force, overrides):
    """Train one model on one dataset with one seed and print its metrics."""
    from bench.config import parse_overrides
    from bench.train import RunSpec

    with _errors():
        runner, _ = _runner(data_dir, raw_dir, results_dir, device, threads, force)
        spec = RunSpec(dataset, model, seed, overrides=parse_overrides(overrides))
        record, _ = runner.run(spec)
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
@click.option("--dataset", "datasets", type=_dataset_choice(), multiple=True,
              help="Dataset(s) (repeatable; default movielens-100k).")
@click.option("--seeds", type=click.IntRange(1, None), default=5, show_default=True,
              help="Seeds 0..N-1 per model.")
@click.option("--models", "models", type=_model_choice(), multiple=True,
              help="Model(s) (repeatable; default all eight in the paper's order).")
@_run_options
def reproduce(table, datasets, seeds, models, data_dir, raw_dir, results_dir, device, threads, force, overrides):
    """Reproduce one of the paper's tables on real data; writes results/<dataset>/main_table.*"""
    from bench.config import parse_overrides
    from bench.registry import MODEL_NAMES
    from bench.report import main_table
    from bench.studies import main_specs

    datasets = datasets or ("movielens-100k",)
    models = [m for m in MODEL_NAMES if m in models] if models else list(MODEL_NAMES)
    with _errors():
        runner, results = _runner(data_dir, raw_dir, results_dir, device, threads, force)
        extra = parse_overrides(overrides)
        for ds in datasets:
            records = runner.run_all(main_specs(ds, models, range(seeds), extra), desc=f"{ds} main table")
            tab = main_table(records, ds, models)
            paths = tab.write(results / ds / "main_table")
            click.echo(tab.markdown())
            click.echo("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    cli()
