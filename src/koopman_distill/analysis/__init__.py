"""Analysis of trained generators: ``kdm analyze`` (:func:`.analyze.analyze_run`, on the
computations of :mod:`.latent`) and every figure (:mod:`.plots`). The names load on first
use, since they import torch and matplotlib."""

import importlib
from typing import Any

_WHERE = {"analyze_run": "analyze"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
