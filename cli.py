"""Command-line interface of the MIAN reproduction harness: a thin click layer over bench/.

    python cli.py prepare movielens-100k
    python cli.py reproduce --table main
    python cli.py ablate
    python cli.py visualize-attention --cases 14
"""
from __future__ import annotations

import logging
import sys

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


@cli.command()
@click.option("--table", type=click.Choice(["main"]), default="main", show_default=True)
def reproduce(table: str) -> None:
    """Reproduce one of the paper's tables (not built yet)."""
    click.echo(f"reproduce --table {table}: not built yet (see issue 5).")


if __name__ == "__main__":
    cli()
