"""Pair stores: teacher pairs (noise x_T -> clean x_0), sharded ``.npy`` files + manifest.

Writers are atomic and resumable (:func:`write_pairs`, :func:`write_arrays`), the reader
memory-maps shards (:class:`PairStore`), and importers read the KDM authors' data
(:func:`import_trajectory`, :func:`import_npz_folder`, :func:`detect_order`).
"""

from .importers import detect_order, import_npz_folder, import_trajectory
from .manifest import FORMAT_VERSION
from .store import PairStore, write_arrays, write_pairs

__all__ = ["FORMAT_VERSION", "PairStore", "detect_order", "import_npz_folder",
           "import_trajectory", "write_arrays", "write_pairs"]
