"""Training-step time (ms, samples/s) of registered models on MovieLens-100K-shaped or real batches.

A developer report, not a test; the user-facing benchmark is ``python cli.py bench``
(``bench.perf.efficiency``: child processes, epochs, inference, memory, accuracy).

Run::

    python -m bench.perf.stepbench [--models din,dien,mian] [--threads 2] [--steps 30] [--warmup 5]
        [--batch 256] [--partial] [--dataset movielens-100k [--data-dir DIR]] [--threads 1 --cpu-time]
        [--set model.transformer=none ...] [--option length_buckets=1 gru_impl=torch ...]

What is timed: one training step = :func:`bench.training.train.train_step` (the trainer's own step):
forward, loss (mean BCE on the logits plus the model's auxiliary loss, DIEN's), zero_grad,
backward, Adam update (lr 1e-3). Batch gathering and the non-finite-loss check lie outside the
timed region. Each model is built by :func:`bench.training.registry.build_model` with its ``Config``
defaults (not the dataset's TOML file) overridden by the ``--set`` keys it has and its speed
options (keyword-only constructor arguments, :func:`bench.training.registry.speed_options`: MIAN's
``trim_padding`` / ``length_buckets``, DIEN's ``gru_impl``) set by the ``--option`` keys it has,
seeded with ``torch.manual_seed(0)``.

Batches: without ``--dataset``, one synthetic batch on the ml100k-ctr-v1 field vocabularies
(:func:`ml100k_schema`; padding and OOV included), every history full (T = 50 real behaviours,
the worst case for DIN/DIEN/MIAN) or with ``--partial`` lengths U[0, 50]; with ``--dataset``,
``steps + warmup`` full shuffled training batches of the prepared dataset, cycled.

Models take turns step by step (round robin) so that load from other processes affects them
alike. Reported per model: median and minimum step time in ms over ``steps`` steps after
``warmup`` untimed steps, samples/s = batch rows / median step time, trainable parameter count;
and the DIEN/DIN step-time ratio when both are timed. Wall time by default; ``--cpu-time`` (with
``--threads 1``) measures this process's CPU time, which other processes barely disturb.

Errors: an unknown model name, a ``--set`` key no listed model's Config has (a speed option given
as ``--set`` included), an ``--option`` key no listed model's constructor has, a ``train.*`` key, or a bad
option combination stop with a usage error (exit status 2) naming it, before anything is loaded;
``--dataset`` raises ``bench.data.DataError`` when the dataset cannot be loaded (without a current
cache ``load_prepared`` prepares it first, which needs its raw files); a non-finite loss raises
RuntimeError naming the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bench.training.config import ConfigError, parse_overrides
from bench.nn.contract import Batch, FeatureSchema, Field, Split
from bench.training.registry import MODEL_NAMES, build_model, config_class, count_params, speed_options
from bench.training.config import TrainConfig
from bench.training.train import make_optimizer, train_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepTime:
    """One model's training-step figures: ``median_ms`` / ``min_ms`` over the timed steps (ms of
    the chosen clock), ``samples_per_s`` = mean batch rows / median seconds, ``n_params``
    trainable parameters, ``params`` the Config overrides and ``options`` the speed options it was
    built with."""

    median_ms: float
    min_ms: float
    samples_per_s: float
    n_params: int
    params: dict[str, Any]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


def ml100k_schema(max_len: int = 50) -> FeatureSchema:
    """Field vocabularies of MovieLens-100K (ml100k-ctr-v1), padding and OOV included: item
    movie_id 1650, genre 20, year 20; user user_id 760, gender 4, age 9, occupation 23, zip1 12;
    context hour 26, weekday 9, gap 9; histories of ``max_len`` slots."""
    return FeatureSchema(
        item_fields=(Field("movie_id", 1650), Field("genre", 20), Field("year", 20)),
        user_fields=(Field("user_id", 760), Field("gender", 4), Field("age", 9), Field("occupation", 23), Field("zip1", 12)),
        context_fields=(Field("hour", 26), Field("weekday", 9), Field("gap", 9)),
        max_len=max_len,
    )


def synthetic_batch(schema: FeatureSchema, batch_size: int, seed: int = 0, full: bool = True) -> Batch:
    """A random batch on ``schema``: ids drawn from [2, vocab) of each field (0 padding and 1 OOV
    never drawn), left-padded histories; ``full`` gives every row T real behaviours, else lengths
    U[0, T]. Empty field groups give [B, 0] tensors."""
    g = torch.Generator().manual_seed(seed)
    T = schema.max_len

    def ids(fields, *shape):
        cols = [torch.randint(2, f.vocab_size, (*shape, 1), generator=g) for f in fields]
        return torch.cat(cols, -1) if cols else torch.zeros(*shape, 0, dtype=torch.long)

    lengths = torch.full((batch_size,), T) if full else torch.randint(0, T + 1, (batch_size,), generator=g)
    mask = torch.arange(T).unsqueeze(0) >= (T - lengths).unsqueeze(1)
    return Batch(
        item=ids(schema.item_fields, batch_size),
        hist=ids(schema.item_fields, batch_size, T) * mask.unsqueeze(-1),
        hist_mask=mask,
        user=ids(schema.user_fields, batch_size),
        context=ids(schema.context_fields, batch_size),
        label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        user_index=torch.zeros(batch_size, dtype=torch.long),
    )


def item_table(schema: FeatureSchema, seed: int = 0) -> torch.Tensor:
    """A random [V_item_id, F_i] item table (row v: item id v and random other item fields)."""
    g = torch.Generator().manual_seed(seed)
    V = schema.item_fields[0].vocab_size
    cols = [torch.arange(V)] + [torch.randint(2, f.vocab_size, (V,), generator=g) for f in schema.item_fields[1:]]
    return torch.stack(cols, -1)


def dataset_batches(split: Split, batch_size: int, n: int, seed: int = 0) -> list[Batch]:
    """The first ``n`` full batches (``min(batch_size, len(split))`` rows) of one shuffled epoch of
    ``split`` (``split.batches(shuffle=True)`` as the trainer draws them, permutation seeded by ``seed``); fewer when the
    epoch has fewer. Raises ValueError for an empty split."""
    if len(split) == 0:
        raise ValueError("empty training split: nothing to time")
    full = min(batch_size, len(split))
    gen = torch.Generator().manual_seed(seed)
    out: list[Batch] = []
    for batch in split.batches(batch_size, shuffle=True, generator=gen):
        if len(batch) == full:
            out.append(batch)
            if len(out) >= n:
                break
    return out


# --------------------------------------------------------------------------- timing


def model_params(names: Sequence[str], overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{model: the Config overrides it has} from ``--set`` keys (``model.<key>`` or a bare key).

    A key applies to every listed model whose Config defines it. Raises KeyError for an unknown
    model name (naming it and the known ones) and ConfigError for a ``train.*`` key (there is no
    training config here: use ``--batch``) or a key that none of ``names`` has."""
    fields = {name: {f.name for f in dataclasses.fields(config_class(name))} for name in names}
    return _per_model(names, overrides, fields, "--set", "a parameter")


def model_options(names: Sequence[str], options: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """{model: the speed options it takes} from ``--option`` keys (keyword-only constructor
    arguments, :func:`bench.training.registry.speed_options`), applied as :func:`model_params`
    applies ``--set`` keys. Raises KeyError for an unknown model name and ConfigError for a key
    that no model of ``names`` takes (naming each model's options)."""
    fields = {name: set(speed_options(name)) for name in names}
    try:
        return _per_model(names, options, fields, "--option", "a speed option")
    except ConfigError as exc:
        known = "; ".join(f"{n}: {', '.join(sorted(f)) or '(none)'}" for n, f in fields.items())
        raise ConfigError(f"{exc} (speed options: {known})") from None


def _per_model(names: Sequence[str], keys: dict[str, Any] | None, fields: dict[str, set[str]], flag: str,
               what: str) -> dict[str, dict[str, Any]]:
    """{model: the ``keys`` (``model.<key>`` or bare) among its ``fields``}; ConfigError for a
    ``train.*`` key or one no model has (``flag`` and ``what`` name them in the message)."""
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in (keys or {}).items():
        if key.startswith("train."):
            raise ConfigError(f"{flag} {key}: train keys do not apply to the step benchmark (batch size: --batch)")
        bare = key[len("model."):] if key.startswith("model.") else key
        takers = [name for name in names if bare in fields[name]]
        if not takers:
            raise ConfigError(f"{flag} {key}: {bare!r} is not {what} of {', '.join(names)}")
        for name in takers:
            out[name][bare] = value
    return out


class _Stepper:
    """One model and its Adam optimiser; :meth:`step` times one :func:`bench.training.train.train_step` on the
    next of ``batches`` (cycled)."""

    def __init__(self, name: str, schema: FeatureSchema, batches: list[Batch], table: torch.Tensor | None,
                 params: dict[str, Any], options: dict[str, Any] | None = None):
        torch.manual_seed(0)
        self.name = name
        self.model = build_model(name, schema, params, item_table=table, options=options).train()
        self.opt = make_optimizer(self.model, TrainConfig(lr=1e-3))
        self.batches = batches
        self.i = 0
        self.n_params = count_params(self.model)

    def step(self, clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds (of ``clock``) of one training step; RuntimeError when its loss is not finite."""
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        t0 = clock()
        loss = train_step(self.model, self.opt, batch)
        dt = clock() - t0
        if not bool(torch.isfinite(loss)):
            raise RuntimeError(f"{self.name}: non-finite loss at step {self.i}")
        return dt


def step_times(
    names: Sequence[str],
    schema: FeatureSchema,
    batches: list[Batch],
    table: torch.Tensor | None = None,
    overrides: dict[str, Any] | None = None,
    steps: int = 30,
    warmup: int = 5,
    clock: Callable[[], float] = time.perf_counter,
    options: dict[str, Any] | None = None,
) -> dict[str, StepTime]:
    """{name: :class:`StepTime`} of one training step (forward, loss incl. aux loss, backward, Adam
    step) per model, in ms of ``clock`` and samples/s.

    Each model first runs ``warmup`` untimed steps; then the models take turns step by step (round
    robin) for ``steps`` timed steps each, cycling over ``batches``, so a change in machine load
    hits them alike and the ratios stay meaningful on a shared machine. ``clock`` is wall time by
    default; ``time.process_time`` with one thread measures this process's CPU time. ``overrides``
    are ``--set`` keys, applied as :func:`model_params` says; ``options`` are ``--option`` keys
    (speed options), applied as :func:`model_options` says. ``table`` is the item table DIEN
    draws negatives from.

    Raises ValueError for ``steps < 1``, ``warmup < 0``, no batches or a model name listed twice;
    KeyError for an unknown model; ConfigError for an override or option no model has; ValueError from
    :func:`bench.training.registry.build_model` for a bad value; RuntimeError for a non-finite loss.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if not batches:
        raise ValueError("no batches to time")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"model(s) listed twice: {', '.join(dup)}")
    params = model_params(names, overrides)
    opts = model_options(names, options)
    steppers = {name: _Stepper(name, schema, batches, table, params[name], opts[name]) for name in names}
    for s in steppers.values():
        for _ in range(warmup):
            s.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name, s in steppers.items():
            times[name].append(s.step(clock))
    rows = statistics.fmean(len(b) for b in batches)
    out = {}
    for name, t in times.items():
        med = statistics.median(t)
        out[name] = StepTime(1e3 * med, 1e3 * min(t), rows / med if med > 0 else float("inf"),
                             steppers[name].n_params, params[name], opts[name])
    return out


# --------------------------------------------------------------------------- command line


def report_lines(res: dict[str, StepTime]) -> list[str]:
    """The table printed by :func:`main`: one line per model, then the DIEN/DIN ratio when both
    were timed."""
    lines = [f"{'model':<10} {'median ms':>10} {'min ms':>10} {'samples/s':>10} {'params':>10}  overrides"]
    for name, r in res.items():
        sets = ", ".join(f"{k}={v!r}" for k, v in {**r.params, **r.options}.items()) or "-"
        lines.append(f"{name:<10} {r.median_ms:10.2f} {r.min_ms:10.2f} {r.samples_per_s:10.0f} {r.n_params:10d}  {sets}")
    if "din" in res and "dien" in res:
        lines.append("DIEN/DIN step-time ratio: %.2f (median), %.2f (min)" % (
            res["dien"].median_ms / res["din"].median_ms, res["dien"].min_ms / res["din"].min_ms))
    return lines


def main(argv: list[str] | None = None) -> dict[str, StepTime]:
    """Command line (see the module docstring); logs the report and returns :func:`step_times`'s
    result. Exits with a usage error naming an unknown model, ``--set`` or ``--option`` key."""
    p = argparse.ArgumentParser(prog="python -m bench.perf.stepbench", description=__doc__.splitlines()[0])
    p.add_argument("--models", "--model", default=",".join(MODEL_NAMES),
                   help=f"comma-separated registry names (default: all, {','.join(MODEL_NAMES)})")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model first")
    p.add_argument("--batch", type=int, default=256, help="batch size")
    p.add_argument("--partial", action="store_true", help="synthetic history lengths U[0, 50] instead of full")
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time (needs --threads 1)")
    p.add_argument("--dataset", default=None, help="time real shuffled training batches of this prepared dataset")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder of --dataset (default: the harness's)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="model Config overrides (model.<key>=value or key=value), applied to the models that have the key")
    p.add_argument("--option", dest="options", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="speed options (constructor arguments outside the Config: MIAN trim_padding, length_buckets; "
                        "DIEN gru_impl), applied to the models that take the key")
    args = p.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        p.error("--cpu-time measures one thread's work; use it with --threads 1")
    if args.partial and args.dataset:
        p.error("--partial shapes synthetic batches; --dataset uses the real history lengths")
    if args.batch < 2 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error("need --batch >= 2 (Dice's batch norm), --steps >= 1, --warmup >= 0, --threads >= 1")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    try:
        if not names:
            raise ValueError("no model named in --models")
        overrides = parse_overrides(args.sets)
        options = parse_overrides(args.options)
        model_params(names, overrides)  # unknown models and keys fail before any data is loaded
        model_options(names, options)
    except (KeyError, ValueError) as exc:  # ConfigError is a ValueError
        p.error(exc.args[0] if exc.args else str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.dataset:
        from bench.data import load_prepared

        ds = load_prepared(args.dataset, args.data_dir)
        schema, table = ds.schema, torch.as_tensor(ds.item_table).long()
        batches = dataset_batches(ds.train, args.batch, args.steps + args.warmup)
        what = f"{args.dataset} training batches ({len(batches)} of {len(batches[0])} rows, cycled)"
    else:
        schema = ml100k_schema()
        table = item_table(schema)
        batches = [synthetic_batch(schema, args.batch, full=not args.partial)]
        what = "synthetic, " + ("history lengths U[0, 50]" if args.partial else "full histories (50)")
    clock = time.process_time if args.cpu_time else time.perf_counter
    res = step_times(names, schema, batches, table, overrides, args.steps, args.warmup, clock, options)
    log.info("threads %d, %s, batch %d, %s; median and min of %d steps after %d warm-up steps",
             args.threads, "CPU time" if args.cpu_time else "wall time", args.batch, what, args.steps, args.warmup)
    for line in report_lines(res):
        log.info("%s", line)
    return res


if __name__ == "__main__":
    main()
