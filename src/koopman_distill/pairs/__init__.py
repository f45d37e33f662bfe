"""Pair stores: teacher pairs (noise x_T -> clean x_0), sharded ``.npy`` files + manifest.

Writers are atomic and resumable (:func:`write_pairs`, :func:`write_arrays`), the reader
memory-maps shards (:class:`PairStore`), and importers read the KDM authors' data
(:func:`import_trajectory`, :func:`import_npz_folder`, :func:`detect_order`), and
:func:`filter_pairs` makes a new store of the pairs of one that pass a filter. The names load on
first use, so that :mod:`.manifest` (layout and size estimates) imports without torch.
"""

import importlib
from typing import Any

_WHERE = {"FORMAT_VERSION": "manifest", "PairStore": "store", "write_arrays": "store",
          "write_pairs": "store", "detect_order": "importers", "import_npz_folder": "importers",
          "import_trajectory": "importers", "filter_pairs": "filter"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
