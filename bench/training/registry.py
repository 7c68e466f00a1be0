"""Model registry: names the CLI accepts -> model classes and their config dataclasses.

Every model is an ``nn.Module`` built as ``cls(schema, cfg, item_table=None)`` where ``cfg`` is an
instance of ``cls.Config`` (a frozen dataclass holding every hyper-parameter of that model, with the
PROTOCOL section 3 defaults) and ``item_table`` is a LongTensor [V_item, F_i] giving the item
fields of each item-id index (used by DIEN to sample negative behaviours). ``forward(batch)``
returns a :class:`bench.contract.ModelOutput`.
"""
from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

import torch
from torch import nn

from bench.contract import FeatureSchema

# The paper's Table 2 order.
MODEL_NAMES: tuple[str, ...] = ("lr", "wide_deep", "dcn", "deepfm", "xdeepfm", "din", "dien", "mian")

_MODULES = {
    "lr": "baselines.lr",
    "wide_deep": "baselines.wide_deep",
    "dcn": "baselines.dcn",
    "deepfm": "baselines.deepfm",
    "xdeepfm": "baselines.xdeepfm",
    "din": "baselines.din",
    "dien": "baselines.dien",
    "mian": "mian.model",
}

_CLASSES = {
    "lr": "LR",
    "wide_deep": "WideDeep",
    "dcn": "DCN",
    "deepfm": "DeepFM",
    "xdeepfm": "XDeepFM",
    "din": "DIN",
    "dien": "DIEN",
    "mian": "MIAN",
}


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
    module = importlib.import_module(_MODULES[name])
    return getattr(module, _CLASSES[name])


def config_class(name: str) -> type:
    return model_class(name).Config


class ConfigError(ValueError):
    """A configuration key or value that does not exist, does not parse or is out of range."""


def check_model_ranges(cfg: Any, where: str = "model config") -> None:
    """Range rules shared by every model Config: integers (sizes, counts) >= 1, each entry of an
    integer tuple (layer sizes) >= 1, floats finite and >= 0, dropouts < 1. Raises ConfigError
    naming the key and the value."""
    import math

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        bad = None
        if isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        if isinstance(v, int) and v < 1:
            bad = "an integer >= 1"
        elif isinstance(v, tuple) and any(isinstance(x, int) and x < 1 for x in v):
            bad = "sizes >= 1"
        elif isinstance(v, float) and (not math.isfinite(v) or v < 0 or ("dropout" in f.name and v >= 1)):
            bad = "a number in [0, 1)" if "dropout" in f.name else "a finite number >= 0"
        if bad:
            raise ConfigError(f"{where}: {f.name} expects {bad}, got {v!r}")


def build_model(
    name: str,
    schema: FeatureSchema,
    params: dict[str, Any] | None = None,
    item_table: torch.Tensor | None = None,
) -> nn.Module:
    """Build model ``name`` with its Config defaults overridden by ``params``.

    Raises KeyError for an unknown model, ValueError for a parameter the Config lacks or of the
    wrong type, ConfigError (a ValueError) for a value out of range or one the model refuses
    (e.g. MIAN's n_heads not dividing its width)."""
    cls = model_class(name)
    cfg = make_config(cls.Config, params or {}, where=f"model {name!r}")
    check_model_ranges(cfg, where=f"model {name!r}")
    try:
        return cls(schema, cfg, item_table=item_table)
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise ConfigError(f"model {name!r} cannot be built with {params or {}}: {exc}") from None


def make_config(config_cls: type, params: dict[str, Any], where: str = "config") -> Any:
    """Instantiate a frozen config dataclass from ``params``, each value checked against the
    field's annotated type (bool, int, float, str, tuple of ints, Optional); lists become tuples.

    Raises ValueError naming any key the dataclass does not define and any value of the wrong
    type (e.g. ``use_gim='False'``: a string is not a bool)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(config_cls)
    clean = {k: coerce_value(hints[k], v, f"{where}: {k}") for k, v in params.items()}
    return config_cls(**clean)


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
