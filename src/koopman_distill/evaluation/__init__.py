"""One evaluation path for ``kdm eval``, ``kdm demo`` and ``kdm bench``.

Candidates are samplers ``(noise, labels) -> x_0`` (the teacher at k NFE, every student),
scored by :func:`~.core.evaluate` on the same noise, labels and reference with the metrics of
the example shape's domain (:mod:`..domains`) and timed by the one timer (:mod:`.timer`).
:mod:`.runs` builds the candidates of a run directory (``kdm eval``) or of several student
runs on one pair store (``kdm bench``). The names load on first use, so that the torch-free
:mod:`.table` imports without torch.
"""

import importlib
from typing import Any

_WHERE = {"Candidate": "core", "Reference": "core", "evaluate": "core",
          "evaluate_run": "runs", "evaluate_students": "runs", "throughput": "timer",
          "best_seconds": "timer", "dataset_extras": "extras"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
