"""Networks as data. A spec ``{"cls": NAME, "args": {...}}`` names a network class and its
constructor arguments: JSON values, or the specs of the networks it wraps (lists are passed
as tuples). KDM builds its networks from specs and keeps them (``KDM.specs``), so an exported
generator rebuilds the same networks from its ``config.json`` (:mod:`..export`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .koopman import DenseKoopman, EigenKoopman
from .mlp import MLP, ConditionedMLP
from .unet import FlatDecoder, FlatEncoder, ProjectedDecoder, ProjectedEncoder, TimeScaledUNet, UNet

Spec = dict[str, Any]

# every class a spec may name, by name
NETWORKS: dict[str, Callable[..., nn.Module]] = {c.__name__: c for c in (
    MLP, ConditionedMLP, UNet, FlatEncoder, FlatDecoder, TimeScaledUNet, ProjectedEncoder,
    ProjectedDecoder, DenseKoopman, EigenKoopman, nn.Linear)}


def spec(cls: str, **args: Any) -> Spec:
    """The spec of ``NETWORKS[cls](**args)``."""
    return {"cls": cls, "args": args}


def build(spec: Spec, networks: Mapping[str, Callable[..., nn.Module]] = NETWORKS) -> nn.Module:
    """The network ``spec`` describes, its classes (and those of the networks it wraps) looked
    up by name in ``networks``."""
    def value(v: Any) -> Any:
        if isinstance(v, dict) and "cls" in v:
            return build(v, networks)
        return tuple(v) if isinstance(v, list) else v

    return networks[spec["cls"]](**{k: value(v) for k, v in spec["args"].items()})
