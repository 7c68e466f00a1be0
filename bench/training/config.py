"""Per-dataset configuration: one TOML file per dataset in ``bench/training/configs/`` holding every
hyper-parameter (PROTOCOL section 3), resolved per model into a plain dict stored in each run record.

File layout::

    [train]            # TrainConfig fields
    lr = 1e-3
    [model]            # shared defaults: applied to every model whose Config defines the key
    embed_dim = 16
    mlp = [200, 80]
    [models.dcn]       # model-specific values (keys of that model's Config)
    n_cross = 3
    [curves]           # the runs that draw convergence curves (bench.training.studies.draws_curves)
    eval_every_steps = 50
    [tuning]           # the search spaces of ``python cli.py tune`` (parsed by bench.training.tuning)

``[curves] eval_every_steps`` is the mid-epoch validation cadence of the runs that draw curves
(Figure 5): :func:`resolve_config` with ``curves=True`` sets ``train.eval_every_steps`` from it;
every other run validates at epoch ends only (early stopping looks at epoch ends anyway).

Precedence (lowest first): the model's Config defaults, ``[model]``, ``[models.<name>]``, the
variant's overrides (studies), ``--set`` overrides.

Data-protocol parameters (:data:`DATA_KEYS`: ``max_len``) are ``--set`` keys too
(``data.max_len=5`` or ``max_len=5``), but they are not part of the resolved config: they select
the prepared dataset (:func:`data_params`), which has its own cache and fingerprint.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from bench.training.registry import config_class, make_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


from bench.nn.config import ConfigError, omitted_at_default, recorded_fields  # noqa: E402,F401  (ConfigError re-exported for the CLI)


@dataclass(frozen=True)
class TrainConfig:
    """Training protocol (PROTOCOL section 3).

    lr: Adam learning rate. batch_size: training batch. max_epochs: epoch cap. patience: epochs
    without a validation-AUC gain before stopping. eval_batch_size: batch for scoring.
    eval_every_steps: extra validation evaluations every this many optimiser steps (0 = only at
    epoch ends; the runs that draw curves take it from the dataset's ``[curves]`` section). Early stopping only looks at epoch-end evaluations.
    weight_decay: Adam L2 (0 by default).
    embedding_regularizer: lambda of the L2 penalty on the embedding rows a batch looks up,
        lambda * sum of their squared entries, added to the training loss
        (:func:`bench.nn.embedding.embedding_penalty`; BARS/FuxiCTR's ``embedding_regularizer``,
        on the rows used as DIN's mini-batch aware regularisation, Zhou et al. 2018 Sec. 4.3).
        0 (default) = off, and then left out of the resolved config and the run id
        (:func:`bench.nn.config.omitted_at_default`).
    """

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 20
    patience: int = 2
    eval_batch_size: int = 4096
    eval_every_steps: int = 0
    weight_decay: float = 0.0
    embedding_regularizer: float = omitted_at_default(0.0)

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr must be a finite number > 0, got {self.lr}")
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every_steps < 0:
            raise ValueError(f"train.eval_every_steps must be >= 0 (0 = epoch ends only), got {self.eval_every_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not math.isfinite(self.weight_decay):
            raise ValueError(f"train.weight_decay must be finite, got {self.weight_decay}")
        reg = self.embedding_regularizer
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not (math.isfinite(reg) and reg >= 0):
            raise ValueError(f"train.embedding_regularizer must be a finite number >= 0 (0 = off), got {reg!r}")


def config_path(dataset: str) -> Path:
    return CONFIG_DIR / f"{dataset}.toml"


#: the sections of a dataset TOML
SECTIONS = ("train", "model", "models", "curves", "tuning")
#: the keys of its ``[curves]`` section
CURVES_KEYS = ("eval_every_steps",)


def load_dataset_config(dataset: str) -> dict[str, Any]:
    """The parsed TOML of ``dataset``; an empty config when the dataset has no file.

    Raises ConfigError naming the file when it does not parse, has unknown sections, or its
    ``[curves]`` section has an unknown key or an ``eval_every_steps`` that is not an integer >= 1."""
    path = config_path(dataset)
    if not path.exists():
        return {section: {} for section in SECTIONS}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}")
    for section in SECTIONS:
        data.setdefault(section, {})
    bad = set(data["curves"]) - set(CURVES_KEYS)
    if bad:
        raise ConfigError(f"{path} [curves]: unknown key(s) {sorted(bad)}; known: {', '.join(CURVES_KEYS)}")
    every = data["curves"].get("eval_every_steps")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(f"{path} [curves]: eval_every_steps must be an integer >= 1 (optimiser steps "
                          f"between validations), got {every!r}")
    return data


#: ``--set`` keys that are data-protocol parameters (fields of bench.data.samples.ProtocolParams), with
#: their accepted range; written ``data.<key>`` (a bare ``<key>`` is accepted and rewritten so)
DATA_KEYS: dict[str, tuple[int, int]] = {"max_len": (1, 1000)}


def _data_key(key: str) -> str | None:
    """The ProtocolParams field a ``--set`` key names (``data.max_len`` or ``max_len``), else None."""
    name = key[5:] if key.startswith("data.") else key
    return name if name in DATA_KEYS else None


def data_params(overrides: dict[str, Any] | None):
    """The :class:`bench.data.samples.ProtocolParams` that ``overrides`` ask for (defaults elsewhere).

    Raises ConfigError for an unknown ``data.<key>`` or a value that is not an integer in the
    key's range (``max_len``: 1 to 1000 behaviour slots)."""
    from bench.data.samples import ProtocolParams

    values = {}
    for key, value in (overrides or {}).items():
        name = _data_key(key)
        if name is None:
            if key.startswith("data."):
                raise ConfigError(f"--set {key}: unknown data-protocol parameter {key[5:]!r}; known: "
                                  f"{', '.join('data.' + k for k in DATA_KEYS)}")
            continue
        lo, hi = DATA_KEYS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"--set {key}={value!r}: expected an integer from {lo} to {hi} "
                              f"(default {getattr(ProtocolParams(), name)})")
        values[name] = value
    return ProtocolParams(**values)


def without_data_keys(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` less its data-protocol keys (what the train/model config sees)."""
    return {k: v for k, v in (overrides or {}).items() if _data_key(k) is None and not k.startswith("data.")}


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists, quoted strings), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["train.lr=0.01", "n_heads=4"]`` -> {"train.lr": 0.01, "n_heads": 4}.

    Raises ConfigError for an item without ``=`` or with an empty key, and for a key given twice
    (``--set a=1 --set a=2``: which one was meant is not guessed). Two spellings of one key
    (``lr`` and ``train.lr``) are refused by :func:`check_overrides` / :func:`resolve_config`,
    which know the models."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: expected key=value, the key is empty")
        if _data_key(key) is not None:  # one spelling, so both name the same study folder
            key = "data." + _data_key(key)
        if key in given:
            raise ConfigError(f"--set {key}: given twice ({given[key]} and {item.strip()}); give each key once")
        given[key] = item.strip()
        out[key] = parse_value(value.strip())
    return out


def _route(key: str, train_keys: set[str], model_keys: set[str]) -> tuple[str, str] | None:
    """Where an override key goes for a model with ``model_keys``: ("train" | "model", name), or
    None when it names neither a train key nor one of the model's (the name is not checked for
    ``train.`` / ``model.`` keys: the callers report it)."""
    if key.startswith("train."):
        return "train", key[6:]
    if key.startswith("model."):
        return "model", key[6:]
    if key in train_keys and key not in model_keys:
        return "train", key
    if key in model_keys:
        return "model", key
    return None


def _check_same_key_once(overrides: dict[str, Any], train_keys: set[str], model_keys: set[str]) -> None:
    """ConfigError when two override keys (``lr`` and ``train.lr``) set the same config key."""
    seen: dict[tuple[str, str], str] = {}
    for key in overrides:
        target = _route(key, train_keys, model_keys)
        if target is None:
            continue
        if target in seen:
            raise ConfigError(f"--set {seen[target]} and --set {key} both set {target[0]}.{target[1]}; give it once")
        seen[target] = key


def resolve_config(
    dataset: str,
    model: str,
    variant_overrides: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    skip_foreign: bool = False,
    curves: bool = False,
) -> dict[str, dict[str, Any]]:
    """The full resolved config {"train": {...}, "model": {...}} of one run: every field of
    TrainConfig and of the model's Config, except a field declared
    :func:`bench.nn.config.omitted_at_default` that holds its default (left out, so that adding
    such a field to a model keeps the configs and run ids of its earlier records;
    :func:`bench.nn.config.recorded_fields`).

    ``curves``: the run draws convergence curves (:func:`bench.training.studies.draws_curves`), so
    ``train.eval_every_steps`` is the dataset's ``[curves] eval_every_steps`` (a ``--set
    train.eval_every_steps`` still wins); otherwise it is ``[train]``'s or TrainConfig's (0).

    ``overrides`` keys are ``train.<key>``, ``model.<key>`` or a bare key; data-protocol keys
    (``data.max_len``) are left out (see :func:`data_params`). Raises ConfigError
    naming any key that exists neither in the train config nor in this model's config, unless
    ``skip_foreign`` (studies over several models: a model key applies to the models that have it;
    :func:`check_overrides` has checked that at least one does).
    """
    data = load_dataset_config(dataset)
    model_cls = config_class(model)
    model_keys = {f.name for f in dataclasses.fields(model_cls)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}

    train = dict(data["train"])
    bad = set(train) - train_keys
    if bad:
        raise ConfigError(f"{config_path(dataset)} [train]: unknown key(s) {sorted(bad)}")
    if curves and "eval_every_steps" in data["curves"]:
        train["eval_every_steps"] = data["curves"]["eval_every_steps"]
    params = {k: v for k, v in data["model"].items() if k in model_keys}
    specific = dict(data["models"].get(model, {}))
    bad = set(specific) - model_keys
    if bad:
        raise ConfigError(f"{config_path(dataset)} [models.{model}]: unknown key(s) {sorted(bad)}")
    params.update(specific)
    for key, value in (variant_overrides or {}).items():
        if key not in model_keys:
            raise ConfigError(f"variant override {key!r} is not a parameter of model {model!r}")
        params[key] = value
    _check_same_key_once(without_data_keys(overrides), train_keys, model_keys)
    for key, value in without_data_keys(overrides).items():
        route = _route(key, train_keys, model_keys)
        if route is not None:
            name = route[1]
            target, known = (train, train_keys) if route[0] == "train" else (params, model_keys)
        elif skip_foreign:
            continue
        else:
            raise ConfigError(
                f"--set {key}: no such key in the train config or in the {model} config "
                f"(train keys: {', '.join(sorted(train_keys))}; model keys: {', '.join(sorted(model_keys))})"
            )
        if name not in known:
            if skip_foreign and known is model_keys:
                continue
            raise ConfigError(f"--set {key}: unknown key {name!r}; known: {', '.join(sorted(known))}")
        target[name] = value
    try:
        train_cfg = make_config(TrainConfig, train, where="train config")
        model_cfg = make_config(model_cls, params, where=f"{model} config")
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return {"train": _plain(recorded_fields(train_cfg)), "model": _plain(recorded_fields(model_cfg))}


def check_overrides(overrides: dict[str, Any], models: list[str] | tuple[str, ...]) -> None:
    """Refuse any ``--set`` key that is neither a train key nor a parameter of at least one of
    ``models`` nor a data-protocol key with a valid value (ConfigError naming it and the known keys),
    and two keys that set the same config key of one of the models (``lr`` and ``train.lr``)."""
    data_params(overrides)  # data.<key>: known key, value in range
    overrides = without_data_keys(overrides)
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    per_model = [{f.name for f in dataclasses.fields(config_class(m))} for m in models]
    model_keys = set().union(*per_model) if models else set()
    for keys in per_model or [set()]:
        _check_same_key_once(overrides, train_keys, keys)
    for key in overrides:
        if key.startswith("train."):
            ok, name = key[6:] in train_keys, key[6:]
        elif key.startswith("model."):
            ok, name = key[6:] in model_keys, key[6:]
        else:
            ok, name = key in train_keys or key in model_keys, key
        if not ok:
            raise ConfigError(
                f"--set {key}: {name!r} is not a train key nor a parameter of {', '.join(models)} "
                f"(train keys: {', '.join(sorted(train_keys))}; model keys: {', '.join(sorted(model_keys)) or '(none)'}; "
                f"data keys: {', '.join('data.' + k for k in DATA_KEYS)})"
            )


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Tuples -> lists so that the dict is canonical JSON."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
