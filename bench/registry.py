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


def build_model(
    name: str,
    schema: FeatureSchema,
    params: dict[str, Any] | None = None,
    item_table: torch.Tensor | None = None,
) -> nn.Module:
    """Build model ``name`` with its Config defaults overridden by ``params``.

    Raises KeyError for an unknown model and ValueError for a parameter the Config lacks."""
    cls = model_class(name)
    cfg = make_config(cls.Config, params or {}, where=f"model {name!r}")
    return cls(schema, cfg, item_table=item_table)


def make_config(config_cls: type, params: dict[str, Any], where: str = "config") -> Any:
    """Instantiate a frozen config dataclass from ``params``; list/tuple values become tuples.

    Raises ValueError naming any key the dataclass does not define."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return config_cls(**clean)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
