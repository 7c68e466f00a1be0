"""The tuned protocol (issue 15, second half; PROTOCOL section 3 "Tuned protocol"): each model's
best configuration from its tuning study (:mod:`bench.training.tuning`), trained on the tables'
seeds 0-4 -- never the tuning seed -- into ``results/<dataset>/tuned/``, next to the default
protocol's tables, never instead of them.

The best configuration of a study is its finished trial (among the first ``trials``, the budget
every model got) with the highest best-epoch validation AUC (a tie keeps the earlier trial); the
test split plays no part in it. A study with fewer finished trials than the budget (failed trials
count, as in ``tune``) is refused: every model gets the same budget or no tuned table is made
(:func:`best_configs`).

A tuned run is an ordinary run record: its config is the protocol's config with the best
trial's values (so it has its own content hash), its variant ``tuned-<space digest[:12]>-t<trial>``
names the study (the digest of its search space, :attr:`bench.training.tuning.Space.digest`) and
the trial it came from; a MIAN study variant on top of it is ``tuned-<...>-t<trial>+<variant>``
(``no_iuim``, ``post_ln``, ...), the variant's own overrides applied after the tuned values. The
default protocol's tables and claims never pick these runs up
(:func:`bench.training.studies.protocol_records`), and the tuned tables never pick default runs
(they are built from tuned specs only). ``results/<dataset>/tuned/tuned.json`` records, per model,
the study, the best trial, its run id and its values (:data:`TUNED_FILE`): the report reads it to
pick the tuned runs (:func:`tuned_protocol_records`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.training.config import resolve_config
from bench.training.runs import RESULTS_VERSION
from bench.training.train import RunSpec
from bench.training.tuning import TuningError

#: variant prefix of the tuned protocol's runs (the tuning trials' is ``tune-``)
TUNED_PREFIX = "tuned-"
#: joins the tuned variant and a MIAN study variant on top of it
TUNED_SEP = "+"
#: the manifest of a tuned folder: the best configuration of each model's study
TUNED_FILE = "tuned.json"


@dataclass(frozen=True)
class TunedConfig:
    """The best configuration of one model's tuning study on one dataset.

    study: the Optuna study name (:func:`bench.training.tuning.study_name`); digest: its search
    space's digest; trial: the best trial's number (0-based, in trial order); trial_run_id: that
    trial's run record; value: its best-epoch validation AUC; params: its config overrides
    ({"train.lr": ..., "mlp_dropout": ...}); tuning_seed: the model seed of every trial;
    budget: the trials per model the best was chosen among."""

    dataset: str
    model: str
    study: str
    digest: str
    trial: int
    trial_run_id: str
    value: float
    params: dict[str, Any]
    tuning_seed: int
    budget: int

    @property
    def variant(self) -> str:
        """The variant of this configuration's runs: ``tuned-<digest[:12]>-t<trial>``."""
        return f"{TUNED_PREFIX}{self.digest[:12]}-t{self.trial}"

    @property
    def model_params(self) -> dict[str, Any]:
        """The model keys of :attr:`params` (variant overrides of the run)."""
        return {k: v for k, v in self.params.items() if not k.startswith("train.")}

    @property
    def train_params(self) -> dict[str, Any]:
        """The ``train.<key>`` entries of :attr:`params` (the run's config overrides)."""
        return {k: v for k, v in self.params.items() if k.startswith("train.")}

    def spec(self, seed: int, variant: str = "default", overrides: dict[str, Any] | None = None) -> RunSpec:
        """The run of this configuration with model seed ``seed``; for MIAN, ``variant`` (a study
        variant name, "default": none) with its MIAN ``overrides`` applied after the tuned values."""
        name = self.variant if variant == "default" else f"{self.variant}{TUNED_SEP}{variant}"
        return RunSpec(self.dataset, self.model, seed, variant=name,
                       variant_overrides={**self.model_params, **(overrides or {})}, overrides=self.train_params)

    def config(self, variant_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The resolved config of this configuration's runs (with a study variant's overrides)."""
        return resolve_config(self.dataset, self.model, {**self.model_params, **(variant_overrides or {})},
                              self.train_params, skip_foreign=True)

    def as_json(self) -> dict[str, Any]:
        return {"study": self.study, "digest": self.digest, "trial": self.trial, "trial_run_id": self.trial_run_id,
                "valid_auc": self.value, "params": self.params, "variant": self.variant,
                "tuning_seed": self.tuning_seed, "budget": self.budget}

    @classmethod
    def from_json(cls, dataset: str, model: str, data: dict[str, Any]) -> "TunedConfig":
        return cls(dataset, model, data["study"], data["digest"], int(data["trial"]), data["trial_run_id"],
                   float(data["valid_auc"]), dict(data["params"]), int(data["tuning_seed"]), int(data["budget"]))


def split_tuned_variant(name: str) -> tuple[str, str] | None:
    """(the tuned variant ``tuned-<digest>-t<trial>``, the study variant on top of it or "default")
    of a tuned run's variant name; None for any other name."""
    if not str(name).startswith(TUNED_PREFIX):
        return None
    head, sep, base = str(name).partition(TUNED_SEP)
    return head, (base if sep else "default")


def tune_command(dataset: str, models: Sequence[str], trials: int) -> str:
    """The ``tune`` command line that makes the studies of ``models`` on ``dataset``."""
    from bench.training.tuning import DEFAULT_TRIALS

    return (f"python cli.py tune --dataset {dataset} --models {','.join(models)}"
            + (f" --trials {trials}" if trials != DEFAULT_TRIALS else ""))


def best_configs(runner, storage: str, dataset: str, models: Sequence[str], trials: int,
                 records: Sequence[dict[str, Any]]) -> dict[str, TunedConfig]:
    """{model: :class:`TunedConfig`} of the tuning studies of ``models`` on ``dataset`` (the
    current search spaces of the dataset's TOML; the Optuna studies in ``storage``, reconciled
    with the store's trial ``records`` as ``tune`` does: :func:`bench.training.tuning.open_study`).

    Nothing trains. Raises TuningError, one message for every model at fault, naming the dataset,
    each model and how many of the ``trials`` its study has finished, and the ``tune`` command that
    completes them, when a study is missing, has fewer finished trials than ``trials``, or has no
    completed trial (every trial failed)."""
    from bench.training.tuning import _trial_rows, model_space, open_study, study_name

    ds = runner.dataset(dataset)
    spaces = {m: model_space(dataset, m) for m in models}
    out, short, failed = {}, [], []
    for m, space in spaces.items():
        study, _ = open_study(storage, space, ds, records)
        rows = _trial_rows(study, space, runner.store, trials)
        if len(rows) < trials:
            short.append(f"{m} ({len(rows)}/{trials} trials)")
            continue
        ok = [t for t in rows if t["state"] == "complete" and math.isfinite(t["value"])]
        if not ok:
            failed.append(m)
            continue
        best = max(ok, key=lambda t: (t["value"], -t["number"]))
        out[m] = TunedConfig(dataset, m, study_name(space, ds), space.digest, int(best["number"]), best["run_id"],
                             float(best["value"]), dict(best["params"]), space.seed, trials)
    problems = []
    if short:
        problems.append(f"the tuning studies of {', '.join(short)} on {dataset} are not complete (every model needs "
                        f"{trials} finished trials: the same budget for all); run "
                        f"`{tune_command(dataset, [s.split(' ')[0] for s in short], trials)}` first")
    if failed:
        problems.append(f"every trial of {', '.join(failed)} on {dataset} failed: no configuration to train")
    if problems:
        raise TuningError("; ".join(problems))
    return out


def check_seeds(configs: dict[str, TunedConfig], seeds: Sequence[int]) -> None:
    """Refuse (TuningError) table seeds that include a study's tuning seed: the tuned tables use
    seeds distinct from the tuning seed (PROTOCOL section 3)."""
    clash = sorted({c.tuning_seed for c in configs.values()} & set(seeds))
    if clash:
        raise TuningError(f"the table seeds 0..{max(seeds)} include the tuning seed {clash[0]} (the [tuning] seed of "
                          f"{next(iter(configs.values())).dataset}'s TOML): the tuned tables must use seeds distinct from "
                          "the tuning seed; use fewer --seeds")


def write_manifest(folder: Path, configs: dict[str, TunedConfig], ds: Any) -> Path:
    """Add ``configs`` to ``<folder>/tuned.json`` (atomically; the entries of other models kept
    unless the data fingerprint changed). Returns its path."""
    from bench.io import atomic_write_text

    path = Path(folder) / TUNED_FILE
    old = read_manifest(path)
    models = dict(old["models"]) if old and old.get("fingerprint") == ds.fingerprint else {}
    models.update({m: c.as_json() for m, c in configs.items()})
    data = {"dataset": ds.name, "protocol": ds.protocol, "fingerprint": ds.fingerprint,
            "results_version": RESULTS_VERSION, "models": dict(sorted(models.items()))}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path`` (:func:`write_manifest`), None when there is none or it does not parse."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("models"), dict) else None


def tuned_protocol_records(records: Sequence[dict[str, Any]], dataset: str, manifest: dict[str, Any],
                           variants: Callable[[str], tuple[str, dict[str, Any]] | None]
                           ) -> tuple[list[dict[str, Any]], list[str]]:
    """The tuned runs of ``dataset`` that the tuned tables of ``manifest`` (:func:`read_manifest`)
    are made of, each shown under its plain variant name ("default", "no_iuim", ...), and one note
    per kind of run left out.

    A record is kept when its variant is the tuned variant of its model's entry (plus, for MIAN, a
    study variant known to ``variants``: name -> (label, overrides), e.g.
    :func:`bench.training.studies.study_variant`), it is of this code's RESULTS_VERSION and the
    manifest's data fingerprint, the entry's trial record is in ``records``, and its config is
    the protocol's config with the entry's values and the variant's overrides (a changed config
    file leaves it out)."""
    from collections import Counter

    entries = {m: TunedConfig.from_json(dataset, m, e) for m, e in manifest.get("models", {}).items()}
    ids = {r["run_id"] for r in records}
    kept, dropped, cache = [], Counter(), {}
    for r in records:
        parts = split_tuned_variant(r.get("variant", "")) if r.get("dataset") == dataset else None
        if parts is None:
            continue
        head, base = parts
        entry = entries.get(r["model"])
        if entry is None:
            dropped["tuned runs of a model tuned.json does not list"] += 1
            continue
        if head != entry.variant:
            dropped["tuned runs of another study or trial than tuned.json's"] += 1
            continue
        if r.get("results_version", 1) != RESULTS_VERSION or r.get("fingerprint") != manifest.get("fingerprint"):
            dropped["tuned runs of another RESULTS_VERSION or data fingerprint"] += 1
            continue
        if entry.trial_run_id not in ids:
            dropped["tuned runs whose best trial has no run record here"] += 1
            continue
        over = {} if base == "default" else (variants(base) or (None, None))[1] if r["model"] == "mian" else None
        if over is None:
            dropped["tuned runs of an unknown study variant"] += 1
            continue
        key = (r["model"], base)
        if key not in cache:
            try:
                cache[key] = entry.config(over)
            except Exception:  # noqa: BLE001 - a model or key this version no longer knows
                cache[key] = None
        if cache[key] != r["config"]:
            dropped["tuned runs made with another config than the protocol's plus the best values"] += 1
            continue
        kept.append({**r, "variant": base})
    return kept, [f"{n} tuned run record(s) of {dataset} left out: {why}." for why, n in dropped.items()]
