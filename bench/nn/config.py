"""Model hyper-parameters: the base of every model's ``Config``, whose construction checks each value.

Every model class has a nested ``Config``: a frozen dataclass of all its hyper-parameters with the
PROTOCOL section 3 defaults, derived from :class:`ModelConfig` (or from :class:`EmbeddingMLPConfig`,
which adds the four fields the embedding + DNN-tower baselines share). The range rules live here
once, for every model; the harness adds only where the value came from to the message.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from bench.nn.mlp import ACTIVATIONS


class ConfigError(ValueError):
    """A configuration key or value that does not exist, does not parse or is out of range."""


#: metadata key of a Config field that the resolved config, and so the run id, leaves out while the
#: field holds its default (:func:`recorded_fields`): a field added after run records were made
#: with its default behaviour, so that those records keep their configs and run ids
OMIT_AT_DEFAULT = "omit_at_default"


def choice(default: str, choices: Sequence[str], *, omit_at_default: bool = False) -> Any:
    """A string field of a Config that must be one of ``choices`` (checked by :class:`ModelConfig`);
    ``omit_at_default``: see :func:`omitted_at_default`."""
    meta: dict[str, Any] = {"choices": tuple(choices)}
    if omit_at_default:
        meta[OMIT_AT_DEFAULT] = True
    return field(default=default, metadata=meta)


def omitted_at_default(default: Any, **metadata: Any) -> Any:
    """A Config field that :func:`recorded_fields` leaves out while it equals ``default``: for a field
    added to a model after its runs were recorded, whose default is the behaviour those runs had.
    Their resolved configs (and run ids, a hash of them) stay what they were; a run that sets
    another value records the field. ``metadata``: further field metadata (e.g. ``choices``)."""
    return field(default=default, metadata={**metadata, OMIT_AT_DEFAULT: True})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def recorded_fields(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict(cfg)`` without the fields declared with :func:`omitted_at_default` (or
    ``choice(..., omit_at_default=True)``) that hold their default: what a run record's config
    stores and its run id hashes (:func:`bench.training.config.resolve_config`). A Config built
    from such a dict gets the left-out fields' defaults back."""
    out = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get(OMIT_AT_DEFAULT) and out[f.name] == _default(f):
            del out[f.name]
    return out


def check_ranges(cfg: Any) -> None:
    """The range rules of every model Config, field by field: a field declared with :func:`choice`
    is one of its choices; integers (sizes, counts) >= 1, each integer of a tuple (layer sizes)
    >= 1; floats finite and >= 0, and < 1 for a name containing "dropout"; bools, None and other
    strings pass.

    Raises ConfigError "<key> expects <what>, got <value>" for the first field that breaks a rule.
    """
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        bad = None
        if "choices" in f.metadata:
            if v not in f.metadata["choices"]:
                bad = "one of " + ", ".join(f.metadata["choices"])
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int) and v < 1:
            bad = "an integer >= 1"
        elif isinstance(v, tuple) and any(isinstance(x, int) and x < 1 for x in v):
            bad = "sizes >= 1"
        elif isinstance(v, float) and (not math.isfinite(v) or v < 0 or ("dropout" in f.name and v >= 1)):
            bad = "a number in [0, 1)" if "dropout" in f.name else "a finite number >= 0"
        if bad:
            raise ConfigError(f"{f.name} expects {bad}, got {v!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Base of every model's ``Config``: construction runs :func:`check_ranges` (ConfigError)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class EmbeddingMLPConfig(ModelConfig):
    """The fields shared by the baselines built of field embeddings and a DNN tower
    (Wide&Deep, DCN, DeepFM, xDeepFM, DIN, DIEN; PROTOCOL section 3 defaults).

    embed_dim: embedding size d per field. mlp: hidden sizes of the DNN tower.
    mlp_activation: "relu" | "prelu" | "dice". dropout: dropout after each hidden tower layer.
    """

    embed_dim: int = 16
    mlp: tuple[int, ...] = (200, 80)
    mlp_activation: str = choice("relu", ACTIVATIONS)
    dropout: float = 0.0
