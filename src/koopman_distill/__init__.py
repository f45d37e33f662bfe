"""koopman-distill: one-step generators from diffusion and flow-matching teachers (KDM).

The Python API lives in :mod:`koopman_distill.api`; the ``kdm`` command line in
:mod:`koopman_distill.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("koopman-distill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
