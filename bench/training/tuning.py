"""Hyper-parameter tuning (issue 15, the tuned protocol of PROTOCOL section 3): one Optuna study
per (dataset, protocol, data fingerprint, model, search space), driven by this process with ask /
tell, each trial an ordinary content-hashed run record trained on the executor of every other study.

Search spaces are data: the ``[tuning]`` table of the dataset's TOML (bench/training/configs)::

    [tuning]
    study_seed = 2021      # seed of the TPE sampler (Optuna's TPESampler)
    seed = 100             # model seed of every trial (the tables use seeds 0-4)
    [tuning.shared]        # every model whose config has the key ("train.<key>": every model)
    "train.lr" = { log_uniform = [1e-4, 1e-2] }
    "train.embedding_regularizer" = { zero_or_log_uniform = [1e-7, 1e-3] }
    "train.batch_size" = { choice = [256, 1024] }
    dropout = { uniform = [0.0, 0.5] }
    [tuning.models.dcn]    # one model's own keys; ``skip``: shared keys it leaves out
    cross_layers = { int = [1, 6] }

Kinds: ``log_uniform = [lo, hi]`` (0 < lo < hi), ``uniform = [lo, hi]``, ``int = [lo, hi]``
(integers, both ends included), ``choice = [v, ...]`` (categorical; lists such as CIN widths
allowed), ``zero_or_log_uniform = [lo, hi]`` (a categorical "is it 0" and, when not, a
log-uniform value: BARS/FuxiCTR search regularisation strengths this way).

Equal budget by construction: every model gets the same number of trials, the protocol's epoch
cap and patience (``[train]``: spaces may not name them), the protocol's embedding size (spaces may
not name ``embed_dim``) and the same pruner: none (a median pruner would need epoch-end reports from
the workers to this process mid-run; no model gets one).

The objective is the trial's best-epoch validation AUC (``record["valid"]["auc"]``). Trials never
score the test split (:func:`bench.training.train.train_run` with ``score_test=False``): their
records have NaN test metrics and ``test_scored: false``.

Trial runs have variant ``tune-<space digest>`` (so the protocol's tables and claims never pick
them up, :func:`bench.training.studies.protocol_records`) and the trial seed of the space; their
config is the protocol's config with the sampled values, so the run id is the usual hash of it.
Each record also holds ``tuning`` = {study, trial, params} (outside the run key). The study lives
in ``results/tuning/studies.db`` (SQLite, Optuna's RDB storage; git-ignored): on every start it is
checked against the records and rebuilt from them, in trial order, when it differs (missing
database, a trial left running by a killed command). Each ask uses a TPESampler seeded from
(study seed, trial number), so with one worker the same study seed gives the same trials, with or
without interruptions; a killed tune started again retrains nothing it has a record of.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bench.training.config import ConfigError, TrainConfig, config_path, load_dataset_config, resolve_config
from bench.training.registry import MODEL_NAMES, config_class
from bench.training.runs import canonical_json

log = logging.getLogger(__name__)

#: the kinds of a search-space entry
KINDS = ("log_uniform", "uniform", "int", "choice", "zero_or_log_uniform")
#: keys of the ``[tuning]`` table
TUNING_KEYS = ("study_seed", "seed", "shared", "models")
#: what a space may not tune: the budget (epoch cap, patience, validation cadence), the protocol's
#: embedding size, the scoring batch
FIXED_KEYS = ("train.max_epochs", "train.patience", "train.eval_every_steps", "train.eval_batch_size", "embed_dim")
#: defaults of ``[tuning]``: TPE's seed, and the model seed of every trial (distinct from the tables' 0-4)
DEFAULT_STUDY_SEED, DEFAULT_TRIAL_SEED = 2021, 100
#: the default number of trials per model (issue 15)
DEFAULT_TRIALS = 20
#: file of the studies under the results folder
STUDY_DB = Path("tuning") / "studies.db"


class TuningError(ConfigError):
    """A search space or study that cannot be used; one sentence naming the file, table and key."""


# --------------------------------------------------------------------------- search spaces

@dataclass(frozen=True)
class Param:
    """One tuned config key: ``key`` ("train.lr" or a model key), ``kind`` (:data:`KINDS`),
    ``args`` ([lo, hi] or the choices)."""

    key: str
    kind: str
    args: tuple

    @property
    def zero_flag(self) -> str:
        """Name of the categorical "is it 0" of a ``zero_or_log_uniform`` entry."""
        return f"{self.key}:zero"

    def _encoded(self) -> list:
        return [json.dumps(c) if isinstance(c, (list, tuple)) else c for c in self.args]

    def distributions(self) -> dict[str, Any]:
        """The Optuna distributions this entry may put into a trial's params (name -> distribution)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        lo_hi = self.args
        if self.kind == "log_uniform":
            return {self.key: FloatDistribution(lo_hi[0], lo_hi[1], log=True)}
        if self.kind == "uniform":
            return {self.key: FloatDistribution(lo_hi[0], lo_hi[1])}
        if self.kind == "int":
            return {self.key: IntDistribution(lo_hi[0], lo_hi[1])}
        if self.kind == "choice":
            return {self.key: CategoricalDistribution(self._encoded())}
        return {self.zero_flag: CategoricalDistribution([True, False]),
                self.key: FloatDistribution(lo_hi[0], lo_hi[1], log=True)}

    def suggest(self, trial) -> None:
        """Ask ``trial`` (an ``optuna.Trial``) for this entry's value(s)."""
        dist = self.distributions()
        if self.kind == "zero_or_log_uniform":
            if trial.suggest_categorical(self.zero_flag, [True, False]):
                return
        d = dist[self.key]
        if self.kind == "choice":
            trial.suggest_categorical(self.key, d.choices)
        elif self.kind == "int":
            trial.suggest_int(self.key, d.low, d.high)
        else:
            trial.suggest_float(self.key, d.low, d.high, log=d.log)

    def value(self, params: dict[str, Any]) -> Any:
        """The config value of this entry in a trial's Optuna ``params``."""
        if self.kind == "zero_or_log_uniform" and params.get(self.zero_flag):
            return 0.0
        v = params[self.key]
        if self.kind == "choice" and isinstance(v, str) and any(isinstance(c, (list, tuple)) for c in self.args):
            return json.loads(v)
        return v

    def corners(self) -> list:
        """The values that check the entry against the config: both ends, every choice, 0."""
        if self.kind == "choice":
            return list(self.args)
        return ([0.0] if self.kind == "zero_or_log_uniform" else []) + list(self.args)

    def describe(self) -> str:
        a = self.args
        if self.kind == "choice":
            return "one of " + ", ".join(json.dumps(c) for c in a)
        if self.kind == "int":
            return f"integer {a[0]}..{a[1]}"
        what = {"log_uniform": "log-uniform", "uniform": "uniform", "zero_or_log_uniform": "0 or log-uniform"}[self.kind]
        return f"{what} [{a[0]:g}, {a[1]:g}]"

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "args": list(self.args)}


@dataclass(frozen=True)
class Space:
    """The search space of one model on one dataset, with the study's seeds."""

    dataset: str
    model: str
    params: tuple[Param, ...]
    study_seed: int
    seed: int
    #: 16 hex digits of sha256 over the entries, the seeds and the protocol config of the model (so a
    #: change of any of them is another study); :func:`space_digest`
    digest: str = ""

    @property
    def variant(self) -> str:
        """The run variant of this study's trials."""
        return f"tune-{self.digest[:12]}"

    def distributions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            out.update(p.distributions())
        return out

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """The ``--set``-style config overrides of a trial's Optuna ``params``."""
        return {p.key: p.value(params) for p in self.params}

    def lines(self) -> list[str]:
        """The space as text, one entry a line (printed by ``tune`` and under its tables)."""
        return [f"{p.key}: {p.describe()}" for p in self.params] or ["(nothing to tune)"]


def space_digest(dataset: str, model: str, params: Sequence[Param], study_seed: int, seed: int) -> str:
    """The :attr:`Space.digest` of these entries and seeds for ``model`` on ``dataset``."""
    base = resolve_config(dataset, model)
    text = canonical_json({"params": [p.as_json() for p in params], "study_seed": study_seed, "seed": seed,
                           "base": base})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _where(dataset: str, table: str, key: str | None = None) -> str:
    return f"{config_path(dataset)} [{table}]" + (f" {key}" if key is not None else "")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _param(dataset: str, table: str, key: Any, spec: Any) -> Param:
    """One entry ``key = { kind = args }`` of ``[table]``; TuningError naming file, table and key."""
    where = _where(dataset, table, key)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise TuningError(f"{where}: expected a table with one kind, e.g. {{ log_uniform = [1e-4, 1e-2] }}; kinds: "
                          f"{', '.join(KINDS)}; got {spec!r}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        raise TuningError(f"{where}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise TuningError(f"{where}: {kind} expects a non-empty list, got {args!r}")
    if kind == "choice":
        encoded = [canonical_json(a) for a in args]
        if len(set(encoded)) != len(encoded):
            raise TuningError(f"{where}: choice lists a value twice: {args!r}")
        return Param(key, kind, tuple(tuple(a) if isinstance(a, list) else a for a in args))
    if len(args) != 2 or not all(_number(a) for a in args) or not args[0] < args[1]:
        raise TuningError(f"{where}: {kind} expects [low, high] with low < high, got {args!r}")
    if kind == "int":
        if not all(isinstance(a, int) for a in args):
            raise TuningError(f"{where}: int expects two integers [low, high], got {args!r}")
        return Param(key, kind, tuple(args))
    if kind in ("log_uniform", "zero_or_log_uniform") and args[0] <= 0:
        raise TuningError(f"{where}: {kind} expects 0 < low < high, got {args!r}")
    return Param(key, kind, tuple(float(a) for a in args))


def _key_kind(key: str, where: str) -> str:
    """"train" or "model" for a space key; TuningError for a fixed or data key."""
    if key in FIXED_KEYS:
        raise TuningError(f"{where}: {key} is fixed by the protocol (equal budget and embedding size for every "
                          "model); it cannot be tuned")
    if key.startswith("data.") or key.startswith("model."):
        raise TuningError(f"{where}: write train keys as train.<key> and model keys bare (got {key!r}); data-protocol "
                          "keys cannot be tuned")
    if key.startswith("train."):
        if key[6:] not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise TuningError(f"{where}: {key[6:]!r} is not a train key; known: "
                              f"{', '.join(f.name for f in dataclasses.fields(TrainConfig))}")
        return "train"
    return "model"


def tuning_table(dataset: str) -> dict[str, Any]:
    """The checked ``[tuning]`` table of ``dataset``'s TOML (TuningError when it is missing or has
    an unknown key, a seed that is not an integer >= 0, a model that does not exist)."""
    data = load_dataset_config(dataset)["tuning"]
    if not data:
        raise TuningError(f"{config_path(dataset)}: no [tuning] table (the search spaces of `tune`)")
    bad = sorted(set(data) - set(TUNING_KEYS))
    if bad:
        raise TuningError(f"{_where(dataset, 'tuning')}: unknown key(s) {bad}; known: {', '.join(TUNING_KEYS)}")
    for k in ("study_seed", "seed"):
        v = data.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise TuningError(f"{_where(dataset, 'tuning', k)}: expected an integer >= 0, got {v!r}")
    for k in ("shared", "models"):
        if not isinstance(data.get(k, {}), dict):
            raise TuningError(f"{_where(dataset, 'tuning.' + k)}: expected a table")
    unknown = sorted(set(data.get("models", {})) - set(MODEL_NAMES))
    if unknown:
        raise TuningError(f"{_where(dataset, 'tuning.models')}: unknown model(s) {unknown}; known: {', '.join(MODEL_NAMES)}")
    return data


def model_space(dataset: str, model: str) -> Space:
    """The search space of ``model`` on ``dataset``: the ``[tuning.shared]`` entries whose key the
    model has (train keys: every model) less its ``skip`` list, then its ``[tuning.models.<model>]``
    entries (which replace a shared entry of the same key). Every entry is checked: its kind and
    bounds, and that each of its end values or choices (and 0 for zero_or_log_uniform) resolves to a
    valid config of the model. Raises TuningError naming the file, the table and the key."""
    data = tuning_table(dataset)
    model_keys = {f.name for f in dataclasses.fields(config_class(model))}
    shared = data.get("shared", {})
    own = dict(data.get("models", {}).get(model, {}))
    table = f"tuning.models.{model}"
    skip = own.pop("skip", [])
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise TuningError(f"{_where(dataset, table, 'skip')}: expected a list of shared keys, got {skip!r}")
    for s in skip:
        if s not in shared:
            raise TuningError(f"{_where(dataset, table, 'skip')}: {s!r} is not a key of [tuning.shared]")
    every_model_key = set().union(*({f.name for f in dataclasses.fields(config_class(m))} for m in MODEL_NAMES))
    entries: dict[str, tuple[str, Any]] = {}
    for key, spec in shared.items():
        kind = _key_kind(key, _where(dataset, "tuning.shared", key))
        if kind == "model" and key not in every_model_key:
            raise TuningError(f"{_where(dataset, 'tuning.shared', key)}: no model has a key {key!r}")
        if key in skip or (kind == "model" and key not in model_keys):
            continue
        entries[key] = ("tuning.shared", spec)
    for key, spec in own.items():
        kind = _key_kind(key, _where(dataset, table, key))
        if kind == "model" and key not in model_keys:
            raise TuningError(f"{_where(dataset, table, key)}: {key!r} is not a parameter of {model}; known: "
                              f"{', '.join(sorted(model_keys))}")
        entries[key] = (table, spec)
    params = []
    for key, (tab, spec) in entries.items():
        p = _param(dataset, tab, key, spec)
        for v in p.corners():
            try:
                resolve_config(dataset, model, overrides={key: list(v) if isinstance(v, tuple) else v})
            except ConfigError as exc:
                raise TuningError(f"{_where(dataset, tab, key)}: the value {json.dumps(v)} is not valid for {model} "
                                  f"({exc})") from None
        params.append(p)
    study_seed, seed = int(data.get("study_seed", DEFAULT_STUDY_SEED)), int(data.get("seed", DEFAULT_TRIAL_SEED))
    return Space(dataset, model, tuple(params), study_seed, seed,
                 space_digest(dataset, model, params, study_seed, seed))


# --------------------------------------------------------------------------- studies

def study_name(space: Space, ds: Any) -> str:
    """The study of ``space`` on the prepared ``ds``: dataset, protocol, data fingerprint, model, space."""
    return f"{ds.name}/{ds.protocol}/{ds.fingerprint[:16]}/{space.model}/{space.digest}"


def trial_sampler(study_seed: int, number: int):
    """The TPESampler (Optuna's default sampler; 10 random start-up trials) of trial ``number``,
    seeded from (study seed, trial number): the trial's params depend only on the study's
    finished trials and its number, not on how often the command was started."""
    import optuna

    seed = int.from_bytes(hashlib.sha256(f"{study_seed}/{number}".encode()).digest()[:4], "little")
    return optuna.samplers.TPESampler(seed=seed)


def trial_records(records: Sequence[dict[str, Any]], space: Space, ds: Any) -> list[dict[str, Any]]:
    """The run records of the study of ``space`` on ``ds``, in trial order (trial number, then
    creation time)."""
    name = study_name(space, ds)
    mine = [r for r in records if r.get("variant") == space.variant and r.get("model") == space.model
            and r.get("fingerprint") == ds.fingerprint and isinstance(r.get("tuning"), dict)
            and r["tuning"].get("study") == name]
    return sorted(mine, key=lambda r: (int(r["tuning"].get("trial", 0)), str(r.get("created_at", ""))))


def objective(record: dict[str, Any]) -> float:
    """The objective of a trial: its run's best-epoch validation AUC (NaN when undefined)."""
    return float(record["valid"]["auc"])


def open_study(storage: str, space: Space, ds: Any, records: Sequence[dict[str, Any]]):
    """The Optuna study of ``space`` on ``ds`` in ``storage``, made to hold exactly the trials of
    its run ``records`` (in trial order) and the failed trials it recorded itself: kept when it
    does, else deleted and rebuilt from them (a missing database, a trial left running by a
    killed command). Returns (study, rebuilt): rebuilt is False for a study kept as it was and for
    a new one with no trial yet."""
    import optuna
    from optuna.trial import TrialState, create_trial

    name = study_name(space, ds)
    mine = trial_records(records, space, ds)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
    except KeyError:
        study, trials = None, []
    recorded = {r["run_id"] for r in mine}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("error")]
    done = [t.user_attrs.get("run_id") for t in trials
            if t.state == TrialState.COMPLETE or (t in failed and t.user_attrs.get("run_id") in recorded)]
    clean = all(t.state == TrialState.COMPLETE or t in failed for t in trials)
    if study is not None and clean and done == [r["run_id"] for r in mine]:
        return study, False
    failed = [t for t in failed if t.user_attrs.get("run_id") not in recorded]  # a record says it all
    existed = study is not None
    if existed:
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=trial_sampler(space.study_seed, 0))
    dists = space.distributions()
    entries = [(int(r["tuning"]["trial"]), 0, r) for r in mine] + [(t.number, 1, t) for t in failed]
    for _, kind, item in sorted(entries, key=lambda e: (e[0], e[1])):
        if kind == 0:
            params = item["tuning"]["params"]
            value = objective(item)
            ok = math.isfinite(value)
            study.add_trial(create_trial(
                params=params, distributions={k: dists[k] for k in params},
                value=value if ok else None, state=TrialState.COMPLETE if ok else TrialState.FAIL,
                user_attrs={"run_id": item["run_id"], **({} if ok else {"error": "validation AUC undefined"})}))
        else:
            study.add_trial(create_trial(params=item.params, distributions=item.distributions, value=None,
                                         state=TrialState.FAIL, user_attrs=dict(item.user_attrs)))
    return study, existed or bool(entries)


@dataclass(frozen=True)
class TrialFailure:
    """What a worker returns for a trial whose training failed (a non-finite loss: a learning rate
    too high for the model is an outcome of the trial, not an error of the command)."""

    error: str


def _trial_job(template, in_process: bool, job):
    """A trial in a worker (``in_process``: in this process, with the parent's runner itself):
    the TrainedRun of ``job``, or a TrialFailure."""
    from bench.training.studies import _train_in_worker
    from bench.training.train import TrainingError

    try:
        return template._trained_run(job) if in_process else _train_in_worker(template, job)
    except TrainingError as exc:
        return TrialFailure(str(exc).splitlines()[0])


@dataclass
class StudyResult:
    """The finished trials of one study: one dict per trial in trial order (number, state
    "complete" | "fail", value, params (config overrides), epochs, best_epoch, run_id, error)."""

    space: Space
    name: str
    budget: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0
    rebuilt: bool = False

    def best(self) -> dict[str, Any] | None:
        ok = [t for t in self.trials if t["state"] == "complete"]
        return max(ok, key=lambda t: (t["value"], -t["number"])) if ok else None


def check_buildable(space: Space, ds: Any) -> None:
    """Build the model once per corner value of every entry on ``ds``'s schema (a value the
    model refuses at construction, e.g. MIAN's n_heads not dividing its width): TuningError
    naming the file and key."""
    from bench.training.registry import build_model

    for p in space.params:
        if p.key.startswith("train."):
            continue
        for v in p.corners():
            config = resolve_config(space.dataset, space.model, overrides={p.key: list(v) if isinstance(v, tuple) else v})
            try:
                build_model(space.model, ds.schema, config["model"], item_table=ds.item_table)
            except ConfigError as exc:
                raise TuningError(f"{config_path(space.dataset)} [tuning] {p.key}: the value {json.dumps(v)} cannot "
                                  f"be built for {space.model} on {ds.name} ({exc})") from None


def tune_model(runner, space: Space, trials: int, storage: str, records: Sequence[dict[str, Any]],
               progress: Callable[[str], None] | None = None) -> StudyResult:
    """Run the study of ``space`` until it has ``trials`` finished trials (complete or failed).

    This process asks Optuna for each trial's params (a TPESampler of :func:`trial_sampler`),
    resolves the trial's run (the protocol config with those values, variant ``space.variant``,
    seed ``space.seed``) and, when ``runner.store`` has its record, tells the record's validation
    AUC without training; otherwise the run trains on the runner's executor (``--workers`` /
    ``--cluster``; the generator of trials is consumed as slots free up), the test split never
    scored, and its record (with ``tuning``: study, trial, params) is written by this process
    before the study is told. ``records``: the store's records (for :func:`open_study`).

    Raises TuningError for a space the model cannot be built with, the executor's and the
    store's errors (ExecutorError, StoreError) as :meth:`bench.training.studies.Runner.run_all`."""
    import functools

    import optuna
    from optuna.trial import TrialState

    from bench.training.executor import make_executor
    from bench.training.studies import Job
    from bench.training.train import RunSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ds = runner.dataset(space.dataset)
    check_buildable(space, ds)
    name = study_name(space, ds)
    study, rebuilt = open_study(storage, space, ds, records)
    result = StudyResult(space, name, trials, rebuilt=rebuilt)
    inflight: dict[str, list] = {}  # run id -> the trials waiting for it (the first one trains it)
    jobs: list[Job] = []

    def finished() -> int:
        return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.get_trials(deepcopy=False))

    def tell(trial, rid: str, record: dict[str, Any] | None, error: str | None = None) -> None:
        value = objective(record) if record is not None else math.nan
        if record is not None and not math.isfinite(value):
            error = "validation AUC undefined"
        if error is None:
            study.tell(trial, value)
        else:
            trial.set_user_attr("error", error)
            study.tell(trial, state=TrialState.FAIL)
        if progress:
            what = f"validation AUC {value:.4f}" if error is None else f"failed: {error}"
            progress(f"{space.dataset} {space.model} trial {trial.number + 1}/{trials}: {what} (run {rid})")

    def asked() -> Iterator[Job]:
        while finished() + sum(len(v) for v in inflight.values()) < trials:
            number = len(study.get_trials(deepcopy=False))
            study.sampler = trial_sampler(space.study_seed, number)
            trial = study.ask()
            for p in space.params:
                p.suggest(trial)
            overrides = space.overrides(trial.params)
            spec = RunSpec(space.dataset, space.model, space.seed, variant=space.variant, overrides=overrides)
            rid, config = runner.resolve(spec)
            trial.set_user_attr("run_id", rid)
            if rid in inflight:
                inflight[rid].append(trial)
                continue
            record = runner.store.load(rid)
            if record is not None:
                tell(trial, rid, record)
                continue
            inflight[rid] = [trial]
            job = Job(spec, rid, config, score_test=False)
            jobs.append(job)
            yield job

    slots = max(1, min(runner.workers, trials))
    with make_executor(slots, runner.threads, runner.cluster) as ex:
        fn = functools.partial(_trial_job, runner if ex.in_process else runner._worker_copy(), ex.in_process)
        for k, out in ex.completed(fn, asked()):
            job = jobs[k]
            waiting = inflight.pop(job.run_id)
            if isinstance(out, TrialFailure):
                for trial in waiting:
                    tell(trial, job.run_id, None, out.error)
                continue
            if out.record.get("run_id") != job.run_id:
                from bench.training.executor import ExecutorError

                raise ExecutorError(f"trial run {job.run_id} trained as run {out.record.get('run_id')}: the worker's "
                                    "prepared data is not this one's; give every worker the same --data-dir")
            first = waiting[0]
            record = runner._save({**out.record, "tuning": {"study": name, "trial": first.number,
                                                            "params": dict(first.params)}})
            result.trained += 1
            for trial in waiting:
                tell(trial, job.run_id, record)
    result.trials = _trial_rows(study, space, runner.store, trials)
    return result


def _trial_rows(study, space: Space, store, trials: int) -> list[dict[str, Any]]:
    """The first ``trials`` finished trials of ``study`` as rows (see :class:`StudyResult`)."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        rid = t.user_attrs.get("run_id")
        record = store.load(rid) if rid and t.state == TrialState.COMPLETE else None
        try:
            params = space.overrides(t.params)
        except KeyError:  # not a trial of this space's entries (cannot happen for trials asked here)
            params = {}
        rows.append({"number": len(rows), "state": "complete" if t.state == TrialState.COMPLETE else "fail",
                     "value": t.value if t.state == TrialState.COMPLETE else math.nan,
                     "params": params, "run_id": rid or "",
                     "epochs": record["epochs_run"] if record else None,
                     "best_epoch": record["best_epoch"] if record else None,
                     "error": t.user_attrs.get("error", "")})
        if len(rows) == trials:
            break
    return rows
