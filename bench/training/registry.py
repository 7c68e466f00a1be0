"""Model registry: the model modules in the paper's Table 2 order -> names, labels, classes.

Every model module (one file in ``baselines/`` or ``mian/``) ends with its registry entry
``NAME, LABEL, MODEL = "wide_deep", "Wide&Deep", WideDeep``: the name the CLI and the run records
use, the label of the tables, and the class. The class is an ``nn.Module`` built as
``cls(schema, cfg, item_table=None)`` where ``cfg`` is an instance of ``cls.Config`` (a frozen
dataclass derived from :class:`bench.nn.config.ModelConfig`, holding every hyper-parameter of that
model with the PROTOCOL section 3 defaults and checking their ranges) and ``item_table`` is a
LongTensor [V_item, F_i] giving the item fields of each item-id index (used by DIEN to sample
negative behaviours). Exact speed paths that do not change the model (MIAN's ``trim_padding`` and
``length_buckets``, DIEN's ``gru_impl``) are keyword-only constructor arguments instead of Config
fields, so they are not in the resolved config nor the run id (:func:`speed_options`).
``forward(batch)`` returns a :class:`bench.nn.contract.ModelOutput`.

Adding a model: its module, and its path in :data:`MODEL_MODULES` (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

import torch
from torch import nn

from bench.nn.config import ConfigError
from bench.nn.contract import FeatureSchema

#: The model modules, in the paper's Table 2 order (the order of MODEL_NAMES and of the tables).
MODEL_MODULES: tuple[str, ...] = (
    "baselines.lr",
    "baselines.wide_deep",
    "baselines.dcn",
    "baselines.deepfm",
    "baselines.xdeepfm",
    "baselines.din",
    "baselines.dien",
    "mian.model",
)


def _entries() -> dict[str, types.ModuleType]:
    """name -> module of every entry of MODEL_MODULES; ValueError for a module without a complete
    entry or a name used twice."""
    out: dict[str, types.ModuleType] = {}
    for path in MODEL_MODULES:
        module = importlib.import_module(path)
        missing = [k for k in ("NAME", "LABEL", "MODEL") if not hasattr(module, k)]
        if missing:
            raise ValueError(f"model module {path} lacks its registry entry {', '.join(missing)} "
                             "(NAME, LABEL, MODEL = ...; see bench/training/registry.py)")
        if module.NAME in out:
            raise ValueError(f"model name {module.NAME!r} is declared by {out[module.NAME].__name__} and {path}")
        out[module.NAME] = module
    return out


_MODULES = _entries()

#: Registry names in the paper's Table 2 order.
MODEL_NAMES: tuple[str, ...] = tuple(_MODULES)

#: name -> display label of the tables ("Wide&Deep", "Deep&Cross", ...), in MODEL_NAMES order.
MODEL_LABELS: dict[str, str] = {name: m.LABEL for name, m in _MODULES.items()}

_EXTRA: dict[str, type[nn.Module]] = {}


def register(name: str, cls: type[nn.Module]) -> None:
    """Register an extra model class under ``name`` (plug-ins and tests); it must follow the
    contract above (nested ``Config`` dataclass, ``cls(schema, cfg, item_table=None)``)."""
    _EXTRA[name] = cls


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``. Raises KeyError naming the known models."""
    if name in _EXTRA:
        return _EXTRA[name]
    if name not in _MODULES:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return _MODULES[name].MODEL


def config_class(name: str) -> type:
    return model_class(name).Config


def speed_options(name: str) -> dict[str, Any]:
    """{option: default} of the keyword-only constructor arguments of model ``name``: its exact
    speed paths (e.g. MIAN's ``length_buckets``), outside its Config and the run id. Raises
    KeyError for an unknown model."""
    import inspect

    sig = inspect.signature(model_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(
    name: str,
    schema: FeatureSchema,
    params: dict[str, Any] | None = None,
    item_table: torch.Tensor | None = None,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model ``name`` with its Config defaults overridden by ``params`` and its speed
    options (:func:`speed_options`) set by ``options``.

    Raises KeyError for an unknown model, ValueError for a parameter the Config lacks or of the
    wrong type, ConfigError (a ValueError) for an option the constructor lacks (naming the known
    ones), a value out of range or one the model refuses (e.g. MIAN's n_heads not dividing its
    width)."""
    cls = model_class(name)
    cfg = make_config(cls.Config, params or {}, where=f"model {name!r}")
    options = dict(options or {})
    bad = sorted(set(options) - set(speed_options(name)))
    if bad:
        raise ConfigError(f"model {name!r} has no speed option(s) {bad}; known: "
                          f"{', '.join(speed_options(name)) or '(none)'}")
    try:
        return cls(schema, cfg, item_table=item_table, **options)
    except (ValueError, RuntimeError, AssertionError) as exc:
        shown = {**(params or {}), **options}
        raise ConfigError(f"model {name!r} cannot be built with {shown}: {exc}") from None


def make_config(config_cls: type, params: dict[str, Any], where: str = "config") -> Any:
    """Instantiate a frozen config dataclass from ``params``, each value checked against the
    field's annotated type (bool, int, float, str, tuple of ints, Optional); lists become tuples.

    Raises ValueError naming any key the dataclass does not define and any value of the wrong
    type (e.g. ``use_gim='False'``: a string is not a bool), ConfigError (a ValueError) prefixed
    with ``where`` for a value the dataclass refuses (a model Config's range check)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(config_cls)
    clean = {k: coerce_value(hints[k], v, f"{where}: {k}") for k, v in params.items()}
    try:
        return config_cls(**clean)
    except ConfigError as exc:  # a value out of range (bench.nn.config.check_ranges)
        raise ConfigError(f"{where}: {exc}") from None


def coerce_value(annotation: Any, value: Any, what: str) -> Any:
    """``value`` as the type ``annotation`` asks for; ValueError saying what was expected.

    bool: true/false (TOML), also the strings true/false/yes/no in any case. int: an integer
    (an integral float such as 2.0 is refused). float: any number. str: a string. tuple[int, ...]:
    a list of integers. ``X | None``: also None or the string "none"."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(inner[0], value, what)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "false", "no"):
            return value.lower() in ("true", "yes")
        raise ValueError(f"{what} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{what} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(value, int) else value
        raise ValueError(f"{what} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{what} expects a string, got {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ValueError(f"{what} expects a list of integers such as [200, 80], got {value!r}")
    return tuple(value) if isinstance(value, list) else value


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
